"""Cloud adapters, one module per platform (firmware.app.make_cloud imports only the one the
config names). What they share lives here and stays tiny: importing it costs no client."""
from firmware import log


class SendResult:
    """What one delivery attempt decided: message ids to drop (`ok`), (id, reason) pairs to
    dead-letter (`dead`), whether something stayed pending (`failed`) and how long the uplink
    must wait before the next attempt (`wait_ms`, 0: go on)."""

    def __init__(self):
        self.ok: list = []
        self.dead: list = []
        self.wait_ms = 0
        self.failed = False


def answer_json(resp):
    """The answer's body as JSON, or None when it is not JSON (the caller's shape check then
    keeps the record and says what came instead: shape())."""
    try:
        return resp.json()
    except ValueError:
        return None


def shape(raw, parsed):
    """A short, secret-free description of an answer that is not the documented one, for
    the warning that keeps its record: JSON by shape only (key names, never values), anything
    else by size and a printable 40-character excerpt (a captive portal's HTML says who
    answered), cut from the redacted text."""
    if isinstance(parsed, dict):
        keys = sorted(k for k in parsed if isinstance(k, str))
        return "JSON object {%s%s}" % (", ".join(keys[:5]), ", ..." if len(keys) > 5 else "")
    if isinstance(parsed, list):
        return "JSON list of %d" % len(parsed)
    if parsed is not None:
        return "JSON %s" % type(parsed).__name__
    if isinstance(raw, str):
        raw = raw.encode()
    if not isinstance(raw, (bytes, bytearray)) or not raw:
        return "empty body"
    # redacted before it is cut: a secret the page echoes cannot leave a stub at the cut
    head = "".join(chr(b) if 32 <= b < 127 else "." for b in bytes(raw[:512]))
    return "not JSON, %d bytes: %r" % (len(raw), log.redact(head)[:40])
