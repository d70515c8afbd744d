"""Cloud adapters, one module per platform (firmware.app.make_cloud imports only the one the
config names). What they share lives here and stays tiny: importing it costs no client."""


class SendResult:
    """What one delivery attempt decided: message ids to drop (`ok`), (id, reason) pairs to
    dead-letter (`dead`), whether something stayed pending (`failed`) and how long the uplink
    must wait before the next attempt (`wait_ms`, 0: go on)."""

    def __init__(self):
        self.ok: list = []
        self.dead: list = []
        self.wait_ms = 0
        self.failed = False
