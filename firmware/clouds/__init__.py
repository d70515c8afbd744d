"""Cloud adapters, one module per platform (firmware.app.make_cloud imports only the one the
config names). What they share lives here and stays tiny: importing it costs no client.

The adapter contract: everything firmware/app.py and firmware/lowpower.py use of a cloud
adapter, written once. Every adapter in firmware/clouds/ subclasses `Adapter`; a new
platform implements `send` and `poll_catalog` and overrides what its cloud has (a token, a
broker session, a sensor catalog), and gets a row in firmware/platforms.py.

Construction: `Cls(cfg, <test injections>, on_desired=, on_link_up=, on_reached=, ota=)`. The
app passes its callbacks (the hooks) here, never by assigning them afterwards:
- on_desired(cmd)   a desired command state the cloud pushed (a subscription, a WebSocket
                    message): cmd is {"id", "desired_id", "value", "seq"?, "expires_at"?}
- on_link_up(first) a broker/WebSocket session opened; first is False after a reconnect
                    (the app then reports every actuator's state again)
- on_reached()      any documented success (a token, a catalog): the uplink ends its backoff
- ota               firmware.ota.updater.Updater, or None when updates are off; adapters
                    with an update command start one with ota.start(url, version, sha256)
A hook the app does not give is None: call it only when it is not.

What the app reads, attributes every adapter sets in its __init__ (the contract test,
host_tests/unit/test_platforms.py, checks each registered adapter has them):
- batch_max           int: the most records one send() gets
- enabled_sensors     None (report every sensor) or the ids of the sensors the cloud's
                      catalog enables; the sampler skips the rest
- renewals            int: tokens/registrations obtained (the status line)
- renew_at            clock.Deadline of the next token renewal (read when token_due() is
                      False), or None
- mode, credentials   optional: the status line's " mode=%s credentials=%d" when mode is set
                      and not None (an adapter that picks its transport at run time)
What it calls (the defaults below fit a cloud without that feature):
- token_due()         True while a token/registration must be obtained: the auth task then
                      calls `await authenticate()`, which returns the wait (ms) the cloud asked
                      for (0: none) or raises on a failure (the task backs off)
- await send(records) deliver outbox records (firmware/outbox.py); returns a
                      firmware.clouds.SendResult; raises on a network fault (all kept)
- await poll_catalog(on_desired)  read the catalogs (sensors enabled, desired states handed to
                      on_desired); returns the wait (ms) the server asked for, 0 for none
- background()        [(name, async factory)]: the adapter's own supervised tasks (a broker
                      or WebSocket session); they run until close() returned at shutdown
- await close()       an orderly goodbye (logout, an offline status), at most 10 s
Inside, by convention: `to_wire(rec)` (a module function, or a method when it needs the
adapter's state) turns one outbox record into the cloud's documented body; the shared
helpers are SendResult, answer_json and shape below, and firmware/statefile.py (what the
adapter keeps across resets); an MQTT adapter's background task is `mqtt_session` below.
Adapter and the session loop live here, not in modules of their own: a module costs about
0.25K of heap on the frozen image (bench/memory.md).
"""
from firmware import log


class Adapter:
    def __init__(self, on_desired=None, on_link_up=None, on_reached=None, ota=None):
        self.on_desired = on_desired
        self.on_link_up = on_link_up
        self.on_reached = on_reached
        self.ota = ota

    def background(self):
        return []

    def token_due(self):
        return False

    async def authenticate(self, force=False):
        return 0

    async def poll_catalog(self, on_desired):
        return 0

    async def send(self, records):
        raise NotImplementedError("%s.send" % type(self).__name__)

    async def close(self):
        pass


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


async def mqtt_session(adapter):
    """The broker session loop of the MQTT adapters (Realer MQTT, Xyte): their background
    task, one copy. The adapter gives the hooks, as methods:
    - `await session_open(ended)`  what a session needs first (Realer: a catalog that offers
                              MQTT; Xyte: a registration): the net.mqtt.Client to hold, or None
                              after the adapter's own pause (the round starts over). `ended`:
                              a session of this loop just ended (Realer falls back to HTTPS)
    - `await session_prepare(client)`  before every connect: the credential hooks (a new one
                              after a refusal or when due; the catalog read again); raises to
                              skip this connect
    - `await session_up(client)`  after every connect, the subscriptions made (the adapter's
                              first messages; the app's on_link_up)
    - `await session_tend(client)`  runs while the session is held (renewals, queued answers)
                              and returns when it must end (no MQTT offered, a new registration)
    While a session is held, `client.run` connects with backoff, subscribes
    `client.subscriptions`, pumps incoming messages to the client's on_message and reconnects
    when the connection drops. However the session ends (tend returned or raised, the task
    cancelled at shutdown) the runner is cancelled and the client stopped."""
    import asyncio  # here: every platform loads this module, a global would take its table
    # one size up (12 -> 17 slots)

    ended = False
    while True:
        client = await adapter.session_open(ended)
        ended = False
        if client is None:
            continue
        runner = asyncio.create_task(client.run(prepare=adapter.session_prepare,
                                                on_connect=adapter.session_up))
        try:
            await adapter.session_tend(client)
        finally:
            runner.cancel()
            # stop, not just disconnect: a cancel MicroPython's wait_for loses (tasks.within_ms
            # says when) reaches run() as a timeout, and a stopped run() does not retry it
            await client.stop()
        client = None  # not held while the adapter pauses
        ended = True
