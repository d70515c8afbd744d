"""A local DeviceHive server (WebSocket API over TLS) for end-to-end tests and `make run`.

Speaks the envelope of DeviceHive's WebSocket API (docs/devicehive.md): requests `{action,
requestId, ...}`, answers echo both with `status` "success" | "error" (+ `code`, `error`),
pushes carry `subscriptionId` and no requestId. Endpoints `/api/websocket`, `/device` and
`/client` are the same socket API. State is one SQLite file, DATA/devicehive.db (`make run`
gives every platform's cloud the same DATA), so the operator CLI and tests can read and
change it while the server runs; a ticker (every 0.1 s) pushes what appeared in it to the
subscribed sockets.

Actions: server/info, authenticate {token}, token/refresh {refreshToken}, device/save,
device/get, device/list, command/insert, command/subscribe {deviceId?, timestamp?,
returnUpdatedCommands?, names?}, command/unsubscribe, command/update, command/get,
command/list, notification/insert, notification/subscribe, notification/unsubscribe,
notification/get, notification/list. Unknown action -> 400; bad JSON -> an error answer
without requestId; a request before authenticate -> 401 "Unauthorized".

Shapes chosen where the spec is silent:
- Tokens are HS256 JWTs ({"payload": {"u": user, "d": [device ids] | ["*"], "e": expiry ms,
  "t": 1 access | 0 refresh}}), access lifetime `--token-ttl` s, refresh 30 days. A session
  whose access token has expired answers every request 401 "Token expired" until it
  authenticates again (token/refresh needs no session). A device token acts only on its own
  device (403 otherwise); the operator token on every device.
- Timestamps are written `2026-04-24T10:15:00.123` (UTC, no zone); read with or without Z.
- command/subscribe with `timestamp`: the commands of that device stamped at or after it
  are pushed first (inclusive: the device ignores ids it handled), then every new one.
- command/insert answers the complete command object; the client may set `timestamp`
  (an operator helper uses that to send an already expired command).
- command/update pushes `command/update` to the connection that inserted the command and
  to subscriptions made with returnUpdatedCommands.
- EXTENSION (not in the document): notification/insert is de-duplicated by
  `parameters.message_id`: a replay answers success
  with the first notification's id and stores nothing.

Fault knobs (CLI `fault`, or set_knob()): expire-tokens (every live session's token counts
as expired now), drop (close every device socket), garbage (send each device socket a
burst of malformed messages: bad JSON, unknown action, wrong types), error (--action A
--code C --count N: the next N requests of A answer that error), silent (--count N: the
next N requests get no answer).
Test knob (set_knob() only): clock (seconds added to the cloud's clock for token lifetimes:
tests expire a token by advancing it instead of sleeping).

    python -m tools.devicehive_cloud serve --data DIR [--port N] [--token-ttl S]
    python -m tools.devicehive_cloud send-command --data DIR NAME VALUE [--lifetime S]
                                                  [--age S]
    python -m tools.devicehive_cloud list-commands --data DIR
    python -m tools.devicehive_cloud list-notifications --data DIR
    python -m tools.devicehive_cloud show-device --data DIR
    python -m tools.devicehive_cloud fault --data DIR KIND [--count N] [--action A]
                                          [--code C]
"""
import base64
import datetime
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import sys
import time

from aiohttp import WSMsgType, web

from tools import cloudkit, operator_cli

DEVICE_ID = "esp32-sim-1"
OPERATOR = 1
DEVICE_USER = 2
API_VERSION = "3.5.0"
REFRESH_TTL = 30 * 86400
WS_PATH = "/api/websocket"
FAULTS = ("expire-tokens", "drop", "garbage", "error", "silent")
GARBAGE = [
    "{not json",
    "[1, 2, 3]",
    json.dumps({"action": "no/such/action", "subscriptionId": 1}),
    json.dumps({"action": "command/insert", "subscriptionId": 1, "command": "not an object"}),
    json.dumps({"action": "command/insert", "subscriptionId": 1,
                "command": {"id": [1], "command": 4, "parameters": "x", "lifetime": "long"}}),
    json.dumps({"action": "command/insert", "subscriptionId": 1,
                "command": {"id": True, "command": None}}),
    json.dumps({"requestId": {"no": 1}, "status": 7}),
    json.dumps({"requestId": "nobody-asked", "action": "device/save", "status": "success"}),
]

SCHEMA = """
create table if not exists secret (k text primary key, v text);
create table if not exists device (id text primary key, name text, data text,
    network_id integer, device_type_id integer, is_blocked integer default 0, saved real);
create table if not exists command (id integer primary key autoincrement, device text,
    command text, parameters text, lifetime integer, timestamp text, ts real, user integer,
    status text, result text, last_updated text, update_seq integer default 0);
create table if not exists notification (id integer primary key autoincrement, device text,
    notification text, parameters text, timestamp text, message_id text, created real);
create unique index if not exists notification_mid on notification (device, message_id);
create table if not exists knob (name text primary key, value text);
create table if not exists log (id integer primary key autoincrement, t real, conn integer,
    user integer, action text, code integer, detail text);
"""


def dh_time(t=None):
    t = time.time() if t is None else t
    d = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + "%03d" % (d.microsecond // 1000)


def parse_time(text):
    """Unix seconds (float) from a DeviceHive timestamp, None when unreadable."""
    if not isinstance(text, str):
        return None
    t = text[:-1] if text.endswith("Z") else text
    for fmt in ("%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S"):
        try:
            d = datetime.datetime.strptime(t, fmt)
        except ValueError:
            continue
        return d.replace(tzinfo=datetime.timezone.utc).timestamp()
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def db(data):
    return cloudkit.open_db(data, "devicehive.db", SCHEMA)


def _b64(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwt_key(data):
    conn = db(data)
    row = conn.execute("select v from secret where k='jwt'").fetchone()
    if row:
        return row[0].encode()
    key = secrets.token_hex(32)
    conn.execute("insert or ignore into secret values ('jwt', ?)", (key,))
    return conn.execute("select v from secret where k='jwt'").fetchone()[0].encode()


def now(conn):
    """The clock token lifetimes run on: time.time() plus the `clock` knob (0 unless a test
    moves it forward to expire tokens without waiting)."""
    return time.time() + cloudkit.Knobs(conn).get("clock", 0)


def make_token(data, user, devices, ttl, kind):
    payload = {"payload": {"u": user, "a": [0], "n": ["*"], "d": devices,
                           "e": int((now(db(data)) + ttl) * 1000), "t": kind,
                           "j": secrets.token_hex(4)}}
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(payload, separators=(",", ":")).encode())
    sig = hmac.new(jwt_key(data), (head + "." + body).encode(), hashlib.sha256).digest()
    return head + "." + body + "." + _b64(sig)


def read_token(data, token):
    """(payload dict, None) for a well-signed token, or (None, error text)."""
    if not isinstance(token, str) or token.count(".") != 2:
        return None, "Invalid token"
    head, body, sig = token.split(".")
    good = hmac.new(jwt_key(data), (head + "." + body).encode(), hashlib.sha256).digest()
    try:
        if not hmac.compare_digest(_unb64(sig), good):
            return None, "Invalid token"
        return json.loads(_unb64(body))["payload"], None
    except (ValueError, KeyError, TypeError):
        return None, "Invalid token"


def provision(data):
    """The demo device and long-lived refresh tokens (device and operator), idempotent."""
    conn = db(data)
    out = {}
    for name, user, devices in (("device", DEVICE_USER, [DEVICE_ID]),
                                ("operator", OPERATOR, ["*"])):
        row = conn.execute("select v from secret where k=?", ("refresh:" + name,)).fetchone()
        if row is None or read_token(data, row[0])[0]["e"] < (time.time() + 86400) * 1000:
            tok = make_token(data, user, devices, REFRESH_TTL, 0)
            conn.execute("insert or replace into secret values (?,?)", ("refresh:" + name, tok))
            row = (tok,)
        out[name] = row[0]
    return out


def set_knob(data, name, value):
    cloudkit.Knobs(db(data)).set(name, value)


def send_command(data, name, value, lifetime=None, age=0, device=DEVICE_ID):
    """Operator helper: insert a command for the device (pushed by the ticker); returns id."""
    ts = time.time() - age
    cur = db(data).execute(
        "insert into command (device, command, parameters, lifetime, timestamp, ts, user) "
        "values (?,?,?,?,?,?,?)", (device, str(name), json.dumps({"value": value}), lifetime,
                                   dh_time(ts), ts, OPERATOR))
    return cur.lastrowid


def command_obj(row):
    (cid, device, name, params, lifetime, timestamp, _ts, user, status, result,
     last_updated) = row[:11]
    return {"id": cid, "deviceId": device, "command": name,
            "parameters": json.loads(params) if params else None, "lifetime": lifetime,
            "timestamp": timestamp, "userId": user, "status": status,
            "result": json.loads(result) if result else None,
            "lastUpdated": last_updated or timestamp, "networkId": None, "deviceTypeId": None}


_CMD_COLS = ("id, device, command, parameters, lifetime, timestamp, ts, user, status, result, "
             "last_updated, update_seq")


def commands(data, device=DEVICE_ID):
    return [command_obj(r) for r in db(data).execute(
        "select %s from command where device=? order by id" % _CMD_COLS, (device,))]


def notification_obj(row):
    nid, device, name, params, timestamp = row[:5]
    return {"id": nid, "deviceId": device, "notification": name,
            "parameters": json.loads(params) if params else None, "timestamp": timestamp}


def notifications(data, device=DEVICE_ID):
    return [notification_obj(r) for r in db(data).execute(
        "select id, device, notification, parameters, timestamp from notification "
        "where device=? order by id", (device,))]


def request_log(data, action=None):
    conn = db(data)
    cols = ("t", "conn", "user", "action", "code", "detail")
    q = "select %s from log" % ",".join(cols)
    args: tuple = ()
    if action:
        q += " where action=?"
        args = (action,)
    return [dict(zip(cols, r)) for r in conn.execute(q + " order by id", args)]


def device_state(data, device=DEVICE_ID):
    conn = db(data)
    row = conn.execute("select id, name, data, saved from device where id=?",
                       (device,)).fetchone()
    counts = dict(conn.execute("select action, count(*) from log where user=? group by action",
                               (DEVICE_USER,)).fetchall())
    return {"device": None if row is None else {"id": row[0], "name": row[1],
                                                 "data": json.loads(row[2] or "null")},
            "commands": commands(data, device)[-10:],
            "notifications": len(notifications(data, device)),
            "device_requests": counts}


class Session:
    """One WebSocket connection: who it is, its subscriptions, the commands it inserted."""

    counter = 0

    def __init__(self, ws, path):
        Session.counter += 1
        self.id = Session.counter
        self.ws = ws
        self.path = path
        self.user = None
        self.devices = None
        self.expires = 0.0
        self.authed_at = 0.0
        self.subs: dict = {}  # subscriptionId -> dict
        self.created: dict = {}  # command id -> update_seq pushed

    def may(self, device):
        return self.devices is not None and ("*" in self.devices or device in self.devices)


class Cloud:
    def __init__(self, data, token_ttl, url):
        self.data = data
        self.token_ttl = token_ttl
        self.url = url
        self.conn = db(data)
        self.knobs = cloudkit.Knobs(self.conn)
        self.sessions: set = set()
        self.next_sub = 0

    def log(self, s, action, code, detail=""):
        self.conn.execute("insert into log (t, conn, user, action, code, detail) values "
                          "(?,?,?,?,?,?)", (time.time(), s.id, s.user, action, code,
                                            str(detail)[:200]))

    # -- the socket ----------------------------------------------------------------------

    async def websocket(self, request):
        ws = web.WebSocketResponse(heartbeat=None, max_msg_size=1 << 20)
        await ws.prepare(request)
        s = Session(ws, request.path)
        self.sessions.add(s)
        self.log(s, "connect", 101, request.path)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    answer = self.handle(s, msg.data)
                    if answer is not None:
                        await ws.send_str(json.dumps(answer))
                elif msg.type == WSMsgType.BINARY:
                    await ws.send_str(json.dumps({"status": "error", "code": 400,
                                                  "error": "text messages only"}))
        finally:
            self.sessions.discard(s)
            self.log(s, "disconnect", 0)
        return ws

    def handle(self, s, text):
        try:
            req = json.loads(text)
        except ValueError:
            self.log(s, "(bad json)", 400)
            return {"status": "error", "code": 400, "error": "Invalid JSON"}
        if not isinstance(req, dict):
            return {"status": "error", "code": 400, "error": "Request must be an object"}
        action, rid = req.get("action"), req.get("requestId")
        base = {"action": action, "requestId": rid}
        if self.knobs.take("silent"):
            self.log(s, action, 0, "silent (fault knob)")
            return None
        if (self.knobs.get("error") or {}).get("action") == action:
            knob = self.knobs.take("error")
            if knob:
                return self.error(s, base, knob.get("code", 500), "fault knob")
        try:
            code, body = self.dispatch(s, action, req)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            code, body = 400, "Bad request: %s" % type(e).__name__
        except sqlite3.Error as e:  # answered, not a dropped connection
            code, body = 500, "Internal error: %s" % e
        if code != 200:
            return self.error(s, base, code, body)
        detail = ""
        if action == "command/update":
            result = (req.get("command") or {}).get("result")
            detail = "%s %s" % (req.get("commandId"), result.get("message_id")
                                if isinstance(result, dict) else "-")
        elif action == "notification/insert":
            detail = body.pop("_detail", "")
        self.log(s, action, 200, detail)
        out = dict(base, status="success")
        out.update(body)
        return out

    def error(self, s, base, code, text):
        self.log(s, base["action"], code, text)
        return dict(base, status="error", code=code, error=text)

    def dispatch(self, s, action, req):
        """(200, answer fields) or (error code, error text)."""
        if action == "server/info":
            return 200, {"info": {"apiVersion": API_VERSION, "serverTimestamp": dh_time(),
                                  "restServerUrl": None, "webSocketServerUrl": self.url}}
        if action == "authenticate":
            return self.authenticate(s, req.get("token"))
        if action == "token/refresh":
            claims, err = read_token(self.data, req.get("refreshToken"))
            if claims is None or claims.get("t") != 0:
                return 401, err or "Invalid refresh token"
            if claims["e"] < now(self.conn) * 1000:
                return 401, "Token expired"
            return 200, {"accessToken": make_token(self.data, claims["u"], claims["d"],
                                                   self.token_ttl, 1)}
        if s.user is None:
            return 401, "Unauthorized"
        expired = self.knobs.get("expire-tokens")
        if s.expires < now(self.conn) or (expired and expired > s.authed_at):
            return 401, "Token expired"
        handler = getattr(self, "do_" + action.replace("/", "_"), None) \
            if isinstance(action, str) else None
        if handler is None:
            return 400, "Unknown action requested: %s" % (action,)
        return handler(s, req)

    def authenticate(self, s, token):
        claims, err = read_token(self.data, token)
        if claims is None or claims.get("t") != 1:
            return 401, err or "Invalid token"
        if claims["e"] < now(self.conn) * 1000:
            return 401, "Token expired"
        s.user, s.devices, s.expires = claims["u"], claims["d"], claims["e"] / 1000
        s.authed_at = time.time()
        return 200, {}

    def _device_arg(self, s, req, required=True):
        dev = req.get("deviceId")
        if dev is None and not required:
            return None, None
        if not isinstance(dev, str) or not dev:
            return None, (400, "deviceId must be a non-empty string")
        if not s.may(dev):
            return None, (403, "Access is denied")
        return dev, None

    def _known(self, dev):
        return self.conn.execute("select 1 from device where id=?", (dev,)).fetchone()

    def do_device_save(self, s, req):
        dev, err = self._device_arg(s, req)
        if err:
            return err
        d = req.get("device")
        if not isinstance(d, dict) or not isinstance(d.get("name"), str) or not d["name"]:
            return 400, "device.name is required"
        self.conn.execute("insert or replace into device (id, name, data, network_id, "
                          "device_type_id, is_blocked, saved) values (?,?,?,?,?,?,?)",
                          (dev, d["name"], json.dumps(d.get("data")), d.get("networkId"),
                           d.get("deviceTypeId"), int(bool(d.get("isBlocked"))), time.time()))
        return 200, {}

    def _device_obj(self, row):
        return {"id": row[0], "name": row[1], "data": json.loads(row[2] or "null"),
                "networkId": row[3], "deviceTypeId": row[4], "isBlocked": bool(row[5])}

    def do_device_get(self, s, req):
        dev, err = self._device_arg(s, req)
        if err:
            return err
        row = self.conn.execute("select id, name, data, network_id, device_type_id, "
                                "is_blocked from device where id=?", (dev,)).fetchone()
        if row is None:
            return 404, "Device with such deviceId = %s not found" % dev
        return 200, {"device": self._device_obj(row)}

    def do_device_list(self, s, req):
        rows = self.conn.execute("select id, name, data, network_id, device_type_id, "
                                 "is_blocked from device order by id").fetchall()
        return 200, {"devices": [self._device_obj(r) for r in rows if s.may(r[0])]}

    def do_command_insert(self, s, req):
        dev, err = self._device_arg(s, req)
        if err:
            return err
        c = req.get("command")
        if not isinstance(c, dict) or not isinstance(c.get("command"), str) or \
                not c["command"]:
            return 400, "command.command is required"
        if not self._known(dev):
            return 404, "Device with such deviceId = %s not found" % dev
        lifetime = c.get("lifetime")
        if lifetime is not None and (isinstance(lifetime, bool) or
                                     not isinstance(lifetime, int)):
            return 400, "command.lifetime must be an integer"
        ts = parse_time(c.get("timestamp")) if c.get("timestamp") else time.time()
        if ts is None:
            return 400, "command.timestamp is unreadable"
        cur = self.conn.execute(
            "insert into command (device, command, parameters, lifetime, timestamp, ts, user, "
            "status, result) values (?,?,?,?,?,?,?,?,?)",
            (dev, c["command"], json.dumps(c.get("parameters")), lifetime, dh_time(ts), ts,
             s.user, c.get("status"), json.dumps(c.get("result"))
             if c.get("result") is not None else None))
        s.created[cur.lastrowid] = 0
        return 200, {"command": self._command(cur.lastrowid)}

    def _command(self, cid):
        row = self.conn.execute("select %s from command where id=?" % _CMD_COLS,
                                (cid,)).fetchone()
        return None if row is None else command_obj(row)

    def do_command_update(self, s, req):
        dev, err = self._device_arg(s, req)
        if err:
            return err
        cid, c = req.get("commandId"), req.get("command")
        if isinstance(cid, str) and cid.isdigit():
            cid = int(cid)
        if isinstance(cid, bool) or not isinstance(cid, int) or not isinstance(c, dict):
            return 400, "commandId (integer) and command (object) are required"
        row = self.conn.execute("select device from command where id=?", (cid,)).fetchone()
        if row is None or row[0] != dev:
            return 404, "Command with id = %s not found" % cid
        seq = self.conn.execute("select coalesce(max(update_seq), 0) + 1 from command"
                                ).fetchone()[0]
        self.conn.execute("update command set status=?, result=?, last_updated=?, "
                          "update_seq=? where id=?",
                          (c.get("status"), json.dumps(c.get("result")), dh_time(), seq, cid))
        return 200, {}

    def do_command_get(self, s, req):
        dev, err = self._device_arg(s, req)
        if err:
            return err
        cmd = self._command(req.get("commandId"))
        if cmd is None or cmd["deviceId"] != dev:
            return 404, "Command not found"
        return 200, {"command": cmd}

    def do_command_list(self, s, req):
        dev, err = self._device_arg(s, req)
        if err:
            return err
        return 200, {"commands": commands(self.data, dev)}

    def do_notification_get(self, s, req):
        dev, err = self._device_arg(s, req)
        if err:
            return err
        for n in notifications(self.data, dev):
            if n["id"] == req.get("notificationId"):
                return 200, {"notification": n}
        return 404, "Notification not found"

    def do_notification_list(self, s, req):
        dev, err = self._device_arg(s, req)
        if err:
            return err
        return 200, {"notifications": notifications(self.data, dev)}

    def do_notification_insert(self, s, req):
        dev, err = self._device_arg(s, req)
        if err:
            return err
        n = req.get("notification")
        if not isinstance(n, dict) or not isinstance(n.get("notification"), str) or \
                not n["notification"]:
            return 400, "notification.notification is required"
        params = n.get("parameters")
        mid = params.get("message_id") if isinstance(params, dict) else None
        if mid is not None:
            row = self.conn.execute("select id, timestamp from notification where device=? "
                                    "and message_id=?", (dev, str(mid))).fetchone()
            if row:
                return 200, {"notification": {"id": row[0], "timestamp": row[1]},
                             "_detail": "%s replay" % mid}
        ts = parse_time(n.get("timestamp")) if n.get("timestamp") else time.time()
        if ts is None:
            return 400, "notification.timestamp is unreadable"
        cur = self.conn.execute(
            "insert into notification (device, notification, parameters, timestamp, "
            "message_id, created) values (?,?,?,?,?,?)",
            (dev, n["notification"], json.dumps(params), dh_time(ts),
             None if mid is None else str(mid), time.time()))
        return 200, {"notification": {"id": cur.lastrowid, "timestamp": dh_time(ts)},
                     "_detail": "" if mid is None else str(mid)}

    def _subscribe(self, s, req, kind):
        dev, err = self._device_arg(s, req, required=False)
        if err:
            return err
        table = "command" if kind == "command" else "notification"
        since = req.get("timestamp")
        since_t = parse_time(since) if since else None
        if since and since_t is None:
            return 400, "timestamp is unreadable"
        names = req.get("names") or []
        if isinstance(names, str):
            names = names.split(",")
        self.next_sub += 1
        snap = self.conn.execute("select coalesce(max(id), 0) from %s" % table).fetchone()[0]
        s.subs[self.next_sub] = {
            "kind": kind, "device": dev, "names": [str(x) for x in names],
            "since": since_t, "snap": snap, "last": 0 if since_t is not None else snap,
            "updates": bool(req.get("returnUpdatedCommands")) and kind == "command",
            "seq": self.conn.execute("select coalesce(max(update_seq), 0) from command"
                                     ).fetchone()[0]}
        self.log(s, table + "/subscribe-from", 0, since or "now")
        return 200, {"subscriptionId": self.next_sub}

    def do_command_subscribe(self, s, req):
        return self._subscribe(s, req, "command")

    def do_notification_subscribe(self, s, req):
        return self._subscribe(s, req, "notification")

    def _unsubscribe(self, s, req):
        if s.subs.pop(req.get("subscriptionId"), None) is None:
            return 404, "Subscription was not found"
        return 200, {}

    do_command_unsubscribe = _unsubscribe
    do_notification_unsubscribe = _unsubscribe

    # -- pushes ----------------------------------------------------------------------------

    def ticker(self):
        return cloudkit.ticking(self.tick, 0.1, lambda e: print(
            "devicehive cloud: tick failed: %r" % e, file=sys.stderr, flush=True))

    def _devices(self):
        return [s for s in list(self.sessions) if s.user == DEVICE_USER]

    async def tick(self):
        if self.knobs.take("drop"):
            for s in self._devices():
                self.log(s, "drop (fault knob)", 0)
                await s.ws.close(code=1001, message=b"dropped")
        if self.knobs.take("garbage"):
            for s in self._devices():
                self.log(s, "garbage (fault knob)", 0)
                for g in GARBAGE:
                    await s.ws.send_str(g)
        for s in list(self.sessions):
            for sid, sub in list(s.subs.items()):
                for msg in self._due(sub):
                    msg["subscriptionId"] = sid
                    await self._push(s, msg)
            for cid, seen in list(s.created.items()):
                cmd = self._command(cid)
                row = self.conn.execute("select update_seq from command where id=?",
                                        (cid,)).fetchone()
                if cmd is not None and row[0] > seen:
                    s.created[cid] = row[0]
                    if not any(sub["updates"] for sub in s.subs.values()):
                        await self._push(s, {"action": "command/update", "subscriptionId": None,
                                             "command": cmd})

    async def _push(self, s, msg):
        try:
            await s.ws.send_str(json.dumps(msg))
        except (ConnectionError, RuntimeError):
            self.sessions.discard(s)

    def _due(self, sub):
        if sub["updates"]:
            rows = self.conn.execute("select %s from command where update_seq > ? order by "
                                     "update_seq" % _CMD_COLS, (sub["seq"],)).fetchall()
            out = []
            for r in rows:
                sub["seq"] = max(sub["seq"], r[11])
                if self._wanted(sub, r[1], r[2]):
                    out.append({"action": "command/update", "command": command_obj(r)})
            return out
        if sub["kind"] == "command":
            rows = self.conn.execute("select %s from command where id > ? order by id" %
                                     _CMD_COLS, (sub["last"],)).fetchall()
            action, key, make = "command/insert", "command", command_obj
        else:
            rows = self.conn.execute("select id, device, notification, parameters, timestamp, "
                                     "created from notification where id > ? order by id",
                                     (sub["last"],)).fetchall()
            action, key, make = "notification/insert", "notification", notification_obj
        out = []
        for r in rows:
            sub["last"] = max(sub["last"], r[0])
            # catching up (ids from before the subscription): only those since the timestamp
            if r[0] <= sub["snap"] and (sub["since"] is None or
                                        (r[6] if key == "command" else r[5]) <
                                        sub["since"] - 0.0005):
                continue
            if self._wanted(sub, r[1], r[2]):
                out.append({"action": action, key: make(r)})
        return out

    def _wanted(self, sub, device, name):
        if sub["device"] is not None and device != sub["device"]:
            return False
        return not sub["names"] or name in sub["names"]

    def app(self):
        app = web.Application()
        for path in (WS_PATH, "/device", "/client"):
            app.router.add_get(path, self.websocket)
        return app


async def serve(data, port, token_ttl):
    pki = cloudkit.pki(data)
    refresh = provision(data)
    cloud = Cloud(data, token_ttl, None)

    def describe(port):
        base = "wss://127.0.0.1:%d" % port
        cloud.url = base + WS_PATH
        return cloud_json(data, pki, refresh, token_ttl, base), \
            "devicehive cloud on %s (data %s)" % (cloud.url, data)

    await cloudkit.serve(data, pki, cloud.app(), port, describe, [cloud.ticker()])


def cloud_json(data, pki, refresh, token_ttl, base):
    """What run_local and the tests read: the server, the device's cloud section, the
    operator's tokens."""
    return {"api_url": base, "ws_url": base + WS_PATH, "ca_file": pki["ca"],
            "device_id": DEVICE_ID,
            "device_cloud": {"platform": "devicehive", "api_url": base, "ws_path": WS_PATH,
                             "device_id": DEVICE_ID, "name": "sim board",
                             "access_token": make_token(data, DEVICE_USER, [DEVICE_ID],
                                                        token_ttl, 1),
                             "refresh_token": refresh["device"], "ca_file": "ca.pem"},
            "operator": {"access_token": make_token(data, OPERATOR, ["*"], token_ttl, 1),
                         "refresh_token": refresh["operator"]},
            "hint": "try: .venv/bin/python -m tools.devicehive_cloud send-command "
                    "--data %s 4 42" % os.path.relpath(data)}


def _send(a):
    try:
        value = json.loads(a.value)
    except ValueError:
        value = a.value
    return operator_cli.devicehive_send(sys.modules[__name__], a.data, a.name, value,
                                        a.lifetime, a.age, a.wait)


def _fault(a):
    if a.kind == "expire-tokens":
        set_knob(a.data, "expire-tokens", time.time())
    else:
        set_knob(a.data, a.kind, {"count": a.count, "action": a.action, "code": a.code})


def main(argv=None):
    ap, sub, _ = cloudkit.cli("devicehive_cloud", "local DeviceHive server (WebSocket over TLS)",
                              300, lambda a: cloudkit.run(a.data, lambda _broker: serve(
                                  a.data, a.port, a.token_ttl)))
    c = cloudkit.command(sub, "send-command", _send)
    c.add_argument("name")
    c.add_argument("value")
    c.add_argument("--lifetime", type=int)
    c.add_argument("--age", type=float, default=0, help="stamp it this many seconds ago")
    cloudkit.wait_option(c)
    cloudkit.rows_command(sub, "list-commands", commands)
    cloudkit.rows_command(sub, "list-notifications", notifications)
    cloudkit.show_command(sub, "show-device", device_state, operator_cli.devicehive_show)
    k = cloudkit.fault_command(sub, FAULTS, _fault)
    k.add_argument("--action", default="notification/insert")
    k.add_argument("--code", type=int, default=500)
    return cloudkit.main(ap, argv)


if __name__ == "__main__":
    sys.exit(main())
