"""DeviceHive over one WebSocket (its public WebSocket API; docs/devicehive.md): authenticate
with the JWT access token, device/save, command/subscribe, pushed command/insert handed to the
app, command/update for each report, readings as notification/insert.

The `ws` background task owns the socket: connect (firmware/net/ws.py, verified TLS), then
`authenticate {token}`, `device/save`, `command/subscribe {deviceId, timestamp?}`; it reads
every message, matches responses to requests by `requestId` and hands pushes to the app.
send() and the handshake write requests on the same socket and wait for their responses
(at most `ack_timeout_s`; a request left unanswered closes the socket, which the task opens
again with backoff). send() pipelines a batch: every request out, then the answers. An
error response is read by its `code`; 401 (e.g. "Token expired") means `token/refresh
{refreshToken}`, `authenticate` again on the same socket, and the request once more.

Choices where the spec is silent or contradicts itself (docs/devicehive.md has the table):
- Order: the text lists device/save before authentication but its table says device/save
  needs the access token, so authenticate goes first (as current servers expect).
- `command/subscrive` in the text is a typo: `command/subscribe` is sent.
- A command's name is the local command id as a string ("4"); `parameters.value` (or, when
  parameters is not an object, parameters itself) is the value. An unknown name is handed on
  too: the app reports it `rejected`.
- The command id is the desired_id, so firmware/desired.py applies each one once, across
  reboots. `timestamp + lifetime` is expires_at: past it the app reports `stale`.
- After every reconnect (and reboot) command/subscribe carries the timestamp of the last
  handled command, kept in `devicehive.json` under the data root, so commands inserted while
  offline arrive; the ones already handled are ignored by desired.py.
- A report record (kind "command" with desired_id) becomes `command/update {deviceId,
  commandId, command: {status, result}}`, status applied | rejected | expired (for stale),
  result {"value", "message_id"}. Every other record is `notification/insert` named after
  its kind ("sensor" / "command") with parameters {"id", "value", "message_id"}; DeviceHive
  has no idempotency key, so message_id rides in the parameters for a server (ours does) to
  de-duplicate: delivery is at-least-once.
- Timestamps are sent as DeviceHive writes them (`2026-04-24T10:15:00.000`, UTC, no zone);
  with or without `Z` is accepted on input.
- A record is delivered only on its own answer (same requestId, the action echoed when
  present) with `status` "success" (docs/devicehive.md "Acceptance"). An error answer with
  code 400/403/404/409/413/422 dead-letters the record; any other answer (no status, another
  action) keeps it; a message that is not a JSON object answers nothing, so the record waits
  out `ack_timeout_s` and stays pending.
"""
import asyncio
import json

from micropython import const

from firmware import clock, log, statefile
from firmware.backoff import Backoff
from firmware.clouds import Adapter, SendResult
from firmware.config_types import join
from firmware.net import conn, ws

_TAG = "devicehive"
_STATE_FILE = "devicehive.json"
_TIMEOUT_MS = const(15000)
_IDLE_MS = const(30000)  # no message for this long: ping; twice: the socket is dead
_RETRY_BASE_MS = const(1000)
_RETRY_CAP_MS = const(60000)
_REFUSED_WAIT_MS = const(300000)  # tokens refused: a person must provision new ones
_POLL_IDLE_MS = const(600000)  # commands are pushed: the app's catalog poll has nothing to do
_CHECK_MS = const(3600000)
_MAX_MESSAGE = const(16384)
_DEAD_CODES = (400, 403, 404, 409, 413, 422)
_STATUS = {"applied": "applied", "rejected": "rejected", "stale": "expired"}


class DeviceHiveError(Exception):
    """The server answered a request with status "error"; `code` is HTTP-like (0: none)."""

    def __init__(self, action, code, error):
        super().__init__("%s: error %s %s" % (action, code, error))
        self.action = action
        self.code = code
        self.error = error


class NotConnected(conn.NetError):
    """No authenticated DeviceHive session right now (the uplink keeps its records)."""


def dh_time(unix_seconds):
    """DeviceHive's timestamp form: `2026-04-24T10:15:00.000` (UTC, no zone)."""
    return clock.iso8601(unix_seconds)[:-1] + ".000"


def parse_time(value):
    """Unix seconds from a DeviceHive timestamp (with or without a zone); None if unreadable."""
    if not isinstance(value, str) or "T" not in value:
        return None
    tail = value.rsplit("T", 1)[1]
    if not (tail.endswith("Z") or "+" in tail or "-" in tail):
        value += "Z"
    return clock.parse_iso8601(value)


def command_value(params):
    """The value a command carries: parameters.value, or parameters itself if not an object."""
    if isinstance(params, dict):
        return params.get("value")
    return params


class DeviceHive(Adapter):
    def __init__(self, cfg, connect=None, **hooks):
        super().__init__(**hooks)  # on_desired, on_link_up(first) after every handshake
        cloud = cfg.get("cloud")
        self.url = cloud["api_url"].rstrip("/") + cloud.get("ws_path", "/api/websocket")
        self.device_id = str(cloud["device_id"])
        self.name = cloud.get("name") or self.device_id
        self.access_token = cloud["access_token"]
        self.refresh_token = cloud["refresh_token"]
        log.secret(self.access_token)
        log.secret(self.refresh_token)
        self.ca_file = cfg.ca_path
        self.batch_max = cloud.get("batch_max", 10)
        self.timeout_ms = int(cloud.get("ack_timeout_s", 0) * 1000) or _TIMEOUT_MS
        self.enabled_sensors = None  # DeviceHive has no sensor catalog: report every sensor
        self.renewals = 0  # token refreshes
        self.renew_at = clock.Deadline(_CHECK_MS)  # tokens are refreshed on 401, not ahead
        # command name -> the configured command id it stands for
        self.commands = {str(c["id"]): c["id"] for c in cfg.get("commands") or ()
                         if isinstance(c, dict) and "id" in c}
        self.state_path = join(getattr(cfg, "root", None), _STATE_FILE)
        self.last_ts = None  # timestamp (as the server wrote it) of the last handled command
        self.subscription = None
        self.connects = 0
        self.ready = False  # authenticated, saved and subscribed on the current socket
        self._connect = connect or ws.connect
        self._ws = None
        self._seq = 0
        self._responses: dict = {}  # requestId -> response (None while waiting)
        self._event = asyncio.Event()
        self._token_gen = 0  # bumped on every refresh: concurrent 401s refresh once
        self._refreshing = asyncio.Lock()
        self._load_state()

    # -- what the app uses ---------------------------------------------------------------

    def background(self):
        return [("ws", self.session)]

    def token_due(self):
        """True until the first session is up (the app then reports the physical state);
        afterwards tokens are refreshed inside the session when the server says 401."""
        return self.connects == 0

    async def authenticate(self, force=False):
        """The session task authenticates; this waits a little for it. Returns wait_ms."""
        deadline = clock.Deadline(self.timeout_ms)
        while not self.ready and not deadline.expired():
            await asyncio.sleep_ms(100)
        return 0 if self.ready else _RETRY_BASE_MS

    async def poll_catalog(self, on_desired):
        return _POLL_IDLE_MS

    # -- persisted subscribe timestamp ---------------------------------------------------

    def _load_state(self):
        try:
            with open(self.state_path) as f:
                data = json.load(f)
        except OSError:
            return  # first boot
        except ValueError:
            log.warn(_TAG, "%s unreadable: subscribing from now", self.state_path)
            return
        if isinstance(data, dict) and isinstance(data.get("last_command_ts"), str):
            self.last_ts = data["last_command_ts"]

    def _save_state(self):
        statefile.write_json(self.state_path, {"last_command_ts": self.last_ts})

    # -- requests ------------------------------------------------------------------------

    async def request(self, action, body=None):
        """Send one request and return its success response (a dict). Raises
        DeviceHiveError on an error answer, NetError when the socket is gone or the answer
        did not come within timeout_ms (the socket is then closed: it is not trusted)."""
        sock, rid = await self._post(action, body)
        return await self._answer(action, sock, rid, clock.Deadline(self.timeout_ms))

    async def _post(self, action, body):
        sock = self._ws
        if sock is None:
            raise NotConnected("no DeviceHive socket")
        self._seq += 1
        rid = "%d-%d" % (self.connects, self._seq)
        msg = dict(body) if body else {}
        msg["action"] = action
        msg["requestId"] = rid
        self._responses[rid] = None
        try:
            await sock.send_text(json.dumps(msg))
        except Exception:
            self._responses.pop(rid, None)
            raise
        return sock, rid

    async def _answer(self, action, sock, rid, deadline):
        try:
            while True:
                ev = self._event  # taken before the check: a wake after it is not lost
                if self._responses.get(rid) is not None:
                    break
                if self._ws is not sock:
                    raise conn.Closed("%s: the socket closed before the answer" % action)
                if deadline.expired():
                    log.warn(_TAG, "%s: no answer within %d ms; reconnecting", action,
                             self.timeout_ms)
                    await self._drop(sock)
                    raise conn.NetTimeout("%s: no answer" % action)
                try:
                    await asyncio.wait_for(ev.wait(),
                                           max(1, deadline.remaining_ms()) / 1000)
                except asyncio.TimeoutError:
                    pass
            resp = self._responses[rid]
        finally:
            self._responses.pop(rid, None)
        # acceptance is the documented answer only: this requestId, `status` "success", and
        # the request's action echoed (when echoed at all); anything else keeps the record
        if resp.get("status") != "success" or resp.get("action") not in (None, action):
            code = resp.get("code")
            if isinstance(code, bool) or not isinstance(code, int):
                code = 0
            raise DeviceHiveError(action, code, resp.get("error") or "answer with status %s"
                                  " for %s" % (str(resp.get("status"))[:20],
                                               str(resp.get("action"))[:40]))
        return resp

    async def call(self, action, body=None):
        """request(), and after a 401 a token refresh + authenticate, then once more."""
        gen = self._token_gen
        try:
            return await self.request(action, body)
        except DeviceHiveError as e:
            if e.code != 401:
                raise
            log.info(_TAG, "%s: 401 %s; refreshing the token", action, e.error)
        await self._refresh_or_drop(gen)
        return await self.request(action, body)

    async def _refresh_or_drop(self, gen):
        try:
            await self._refresh(gen)
        except DeviceHiveError:
            sock = self._ws  # refresh refused: the session opens a new socket and decides
            if sock is not None:
                await self._drop(sock)
            raise

    async def _refresh(self, gen):
        async with self._refreshing:
            if self._token_gen != gen:
                return  # another request refreshed meanwhile
            resp = await self.request("token/refresh", {"refreshToken": self.refresh_token})
            token = resp.get("accessToken")
            if not isinstance(token, str) or not token:
                raise DeviceHiveError("token/refresh", 0, "answer without accessToken")
            log.secret(token)
            old, self.access_token = self.access_token, token
            log.forget(old)
            await self.request("authenticate", {"token": token})
            self._token_gen += 1
            self.renewals += 1
            log.info(_TAG, "access token refreshed (%d)", self.renewals)

    # -- the session task ----------------------------------------------------------------

    async def session(self):
        """Background task: keep one authenticated, subscribed socket; reconnect with
        backoff; read every message."""
        backoff = Backoff(_RETRY_BASE_MS, _RETRY_CAP_MS)
        while True:
            try:
                sock = await self._connect(self.url, ca_file=self.ca_file,
                                           timeout_ms=self.timeout_ms,
                                           max_message=_MAX_MESSAGE)
            except Exception as e:  # refused, TLS, timeout: try again later
                log.warn(_TAG, "connect: %s", log.describe(e))
                await asyncio.sleep_ms(backoff.next_ms())
                continue
            self._ws = sock
            self._responses = {}
            reader = asyncio.create_task(self._read(sock))
            wait_ms = 0
            try:
                await self._handshake()
                backoff.reset()
                self.ready = True
                self.connects += 1
                log.info(_TAG, "session %d up, subscribed from %s", self.connects,
                         self.last_ts or "now")
                if self.on_link_up is not None:
                    self.on_link_up(self.connects == 1)
                while self._ws is sock:
                    await asyncio.sleep_ms(200)
            except DeviceHiveError as e:
                log.warn(_TAG, "session refused: %s", log.describe(e))
                if e.action in ("token/refresh", "authenticate") and e.code in (401, 403):
                    log.error(_TAG, "the tokens are refused: provision new ones")
                    wait_ms = _REFUSED_WAIT_MS
            except Exception as e:  # the socket went: reconnect
                log.warn(_TAG, "session: %s", log.describe(e))
            finally:
                self.ready = False
                reader.cancel()
                await self._drop(sock)
            await asyncio.sleep_ms(max(wait_ms, backoff.next_ms()))

    async def _handshake(self):
        gen = self._token_gen
        try:
            await self.request("authenticate", {"token": self.access_token})
        except DeviceHiveError as e:
            if e.code != 401:
                raise
            log.info(_TAG, "authenticate: 401 %s; refreshing the token", e.error)
            await self._refresh(gen)
        await self.call("device/save", {"deviceId": self.device_id, "device": {
            "name": self.name, "data": {"commands": sorted(self.commands)}}})
        body = {"deviceId": self.device_id}
        if self.last_ts:
            body["timestamp"] = self.last_ts
        resp = await self.call("command/subscribe", body)
        self.subscription = resp.get("subscriptionId")

    def _wake(self):
        # a fresh Event per wake-up: a waiter whose wait() has not started yet (wait_for
        # starts it later on CPython) still sees the old one set
        ev, self._event = self._event, asyncio.Event()
        ev.set()

    async def _drop(self, sock):
        if self._ws is sock:
            self._ws = None
        self._wake()  # waiters see the socket is gone
        await sock.close()

    async def _read(self, sock):
        idle = 0
        try:
            while True:
                try:
                    text = await sock.recv(_IDLE_MS)
                except conn.NetTimeout:
                    idle += 1
                    if idle > 1:
                        raise
                    await sock.ping()
                    continue
                idle = 0
                if isinstance(text, str):
                    self.dispatch(text)
                else:
                    log.warn(_TAG, "binary message ignored")
        except Exception as e:  # closed, reset, protocol error: the session reconnects
            log.warn(_TAG, "socket: %s", log.describe(e))
        finally:
            if self._ws is sock:
                self._ws = None
            self._wake()

    # -- incoming ------------------------------------------------------------------------

    def dispatch(self, text):
        """One text message from the server: a response or a push. Bad input is logged and
        dropped, never raised."""
        try:
            msg = json.loads(text)
        except ValueError:
            log.warn(_TAG, "message is not JSON; ignored")
            return
        if not isinstance(msg, dict):
            log.warn(_TAG, "message is not a JSON object; ignored")
            return
        rid = msg.get("requestId")
        if rid is not None:
            if isinstance(rid, str) and rid in self._responses:
                self._responses[rid] = msg
                self._wake()
            else:
                log.warn(_TAG, "answer to no pending request (%s); ignored",
                         str(msg.get("action"))[:40])
            return
        action = msg.get("action")
        if action == "command/insert":
            self._command(msg.get("command"))
        else:
            log.warn(_TAG, "unexpected push %s; ignored", str(action)[:40])

    def _command(self, cmd):
        if not isinstance(cmd, dict):
            log.warn(_TAG, "command/insert without a command object; ignored")
            return
        cid, name = cmd.get("id"), cmd.get("command")
        if isinstance(cid, bool) or not isinstance(cid, (int, str)) or cid == "" or \
                not isinstance(name, str):
            log.warn(_TAG, "command without a usable id or name; ignored")
            return
        dev = cmd.get("deviceId")
        if dev is not None and str(dev) != self.device_id:
            log.warn(_TAG, "command %s is for device %s; ignored", cid, str(dev)[:40])
            return
        ts = cmd.get("timestamp")
        at = parse_time(ts)
        lifetime = cmd.get("lifetime")
        expires = None
        if at is not None and isinstance(lifetime, int) and not isinstance(lifetime, bool) \
                and lifetime > 0:
            expires = at + lifetime
        desired = {"id": self.commands.get(name, name), "desired_id": cid,
                   "value": command_value(cmd.get("parameters")), "expires_at": expires}
        if self.on_desired is not None:
            try:
                self.on_desired(desired)
            except Exception as e:  # the app could not take it; it comes again after reconnect
                log.exc(_TAG, "command %s not handled" % (cid,), e)
                return
        if at is not None and (self.last_ts is None or at >= (parse_time(self.last_ts) or 0)):
            self.last_ts = ts
            try:
                self._save_state()
            except OSError as e:
                log.warn(_TAG, "cannot save %s: %s", self.state_path, log.describe(e))

    # -- outgoing ------------------------------------------------------------------------

    def to_wire(self, rec):
        """(action, body) for one outbox record."""
        if rec.kind == "command" and rec.desired_id is not None:
            status = _STATUS.get(rec.report_status or "applied", rec.report_status)
            return "command/update", {"deviceId": self.device_id, "commandId": rec.desired_id,
                                      "command": {"status": status, "result": {
                                          "value": rec.value, "message_id": rec.message_id}}}
        return "notification/insert", {"deviceId": self.device_id, "notification": {
            "notification": rec.kind, "timestamp": dh_time(rec.t),
            "parameters": {"id": rec.source, "value": rec.value,
                           "message_id": rec.message_id}}}

    async def send(self, records):
        """Deliver records, pipelined: every request goes out, then the answers are read
        (one round trip per batch, not per record). Returns a SendResult. Raises NetError
        when there is no session, or when the socket fails before any record got through
        (the uplink keeps the records and backs off)."""
        if not self.ready:
            raise NotConnected("no DeviceHive session yet")
        result = SendResult()
        todo = []
        for rec in records:
            try:
                todo.append((rec,) + self.to_wire(rec))
            except (clock.ClockUnset, ValueError, TypeError) as e:
                # a record that cannot be written (time before 2025) would block the queue
                result.dead.append((rec.message_id, "unsendable: %s" % log.describe(e)))
        gen = self._token_gen
        answers = await self._pipeline(todo, result)
        again = [item for item, err in answers
                 if isinstance(err, DeviceHiveError) and err.code == 401]
        if again:
            log.info(_TAG, "%d records got 401; refreshing the token", len(again))
            try:
                await self._refresh_or_drop(gen)
            except DeviceHiveError as e:
                log.warn(_TAG, "token refresh: %s", log.describe(e))
                again = []
            answers = [a for a in answers if a[0] not in again]
            if again:
                answers += await self._pipeline(again, result)
        for (rec, _, _), err in answers:
            if err is None:
                result.ok.append(rec.message_id)
            elif isinstance(err, DeviceHiveError) and err.code in _DEAD_CODES:
                log.warn(_TAG, "record %s refused for good: %s", rec.message_id,
                         log.describe(err))
                result.dead.append((rec.message_id, "%s %s" % (err.code, err.error)))
            else:
                log.info(_TAG, "record %s kept: %s", rec.message_id, log.describe(err))
                result.failed = True
                result.wait_ms = _RETRY_BASE_MS
        return result

    async def _pipeline(self, items, result):
        """[(item, None | error)] for the items answered; a socket failure ends the round
        (raised if nothing was answered yet, else the rest stays pending)."""
        posted = []
        out: list = []
        try:
            for item in items:
                posted.append((item, await self._post(item[1], item[2])))
            deadline = clock.Deadline(self.timeout_ms)
            for item, (sock, rid) in posted:
                try:
                    await self._answer(item[1], sock, rid, deadline)
                    out.append((item, None))
                except DeviceHiveError as e:
                    out.append((item, e))
        except conn.NetError:
            for _, (_, rid) in posted:
                self._responses.pop(rid, None)
            if not out and not result.ok and not result.dead:
                raise
            result.failed = True
            result.wait_ms = _RETRY_BASE_MS
        return out
