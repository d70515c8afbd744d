"""A local NUBISON IoT cloud (HTTP over TLS) for end-to-end tests and `make run PLATFORM=nubison`.

Implements NUBISON's public HTTP protocol page strictly: POST /devices/login (HTTP Basic
client_id:client_secret, form `deviceKey`), POST /devices (register), POST /devices/data, POST
/devices/logout, with the spec's error codes and messages. State is one SQLite file,
DATA/nubison.db (its own name: `make run` gives every platform's cloud the same DATA), so the
tests and the CLI read and change it while the server runs. Every call is written to a
timeline, as the spec says the real cloud does.

Where the spec is silent or contradicts itself (docs/nubison.md lists the same choices):
- login body: form-encoded as the request says, or JSON, which its 415 text asks for; any
  other content type -> 415. Answer 200 {"AccessToken": "..."} and nothing else; the token
  lives --token-ttl seconds and the device is not told so (it finds out by a 401).
- login checks, in the spec's order: no Basic header -> 400 ERROR401; no deviceKey -> 400
  ERROR402; unknown client id / secret (or Basic of anything but "id:secret") -> 400
  ERROR403; a deviceKey not `<product_code>_<id>` of that client's product -> 405.
- other calls take JSON only (else 415). Checks: deviceKey -> ERROR402, accessToken ->
  ERROR404, token unknown, expired, logged out or issued to another deviceKey -> 401 with
  {"message": "accessToken is not valid."}. Register: deviceName / modelName missing ->
  ERROR406 (the spec lists it there), a modelName the server does not know -> ERROR406;
  registering again -> 201 (counted, nothing else changes). Data from a device that is not
  registered -> 405 (the spec's logout wording: "device is not registered").
- data: anything but null, "", {} or [] is data (else ERROR406). EXTENSION (the document
  shows no idempotency): a JSON object carrying a
  string `message_id` is stored once per (deviceKey, message_id); a replay is answered 201
  like the first (the spec has no other success) and counted, and a replay whose data
  differs is counted as a conflict. Data without message_id is stored as it comes.
- success bodies: 201 and logout's 200 have no body, as the spec's tables show none.

Fault knobs (`fault KIND [--count N]`, or set_fault() from tests), each for the next N calls
to /devices/*: 401 (the device's tokens expire now; the call then answers 401 by itself),
503 and 429 (with Retry-After; NUBISON documents neither: generic HTTP), slow (--seconds),
garbage (the call is handled, its answer body replaced by broken JSON), wrong-types (login
answers {"AccessToken": 12345}; other calls answer 500 {"code": 500, "message": [..]}
without handling), login-json (form logins answer 415), lost-answer (a data call is stored,
then its connection is reset before the answer: a network cut after the cloud accepted it,
timed exactly, which a proxy switched from a test cannot be). Admin: `unregister` drops the
device's registration (the next data call gets 405), `expire-tokens`.

    python -m tools.nubison_cloud serve --data DIR [--port N] [--token-ttl S]
    python -m tools.nubison_cloud list-data --data DIR
    python -m tools.nubison_cloud show-device --data DIR
    python -m tools.nubison_cloud timeline --data DIR
    python -m tools.nubison_cloud fault --data DIR KIND [--count N] [--retry-after S]
                                        [--seconds S]
    python -m tools.nubison_cloud unregister|expire-tokens --data DIR
"""
import asyncio
import base64
import binascii
import json
import os
import secrets
import socket
import struct
import sys
import time

from aiohttp import web

from tools import cloudkit, operator_cli

PRODUCT_CODE = "NBPRD01"
DEVICE_ID = "sim-0001"
DEVICE_KEY = PRODUCT_CODE + "_" + DEVICE_ID
CLIENT_ID = "nbc-" + "4f1e2d3c5b6a7988"
MODELS = ("ESP32-SIM", "ESP32-DEVKITC")
FAULTS = ("401", "503", "429", "slow", "garbage", "wrong-types", "login-json", "lost-answer")
MAX_BODY = 16384
MSG = {
    "ERROR401": "authorization header does not exist.",
    "ERROR402": "deviceKey is missing.",
    "ERROR403": "client is not valid.",
    "ERROR404": "accessToken is missing.",
    "ERROR406": "data is missing.",
}

SCHEMA = """
create table if not exists client (client_id text primary key, secret text, product text);
create table if not exists device (device_key text primary key, name text, model text,
    registered real, registrations integer);
create table if not exists token (token text primary key, device_key text, expires real);
create table if not exists data (device_key text, message_id text, body text, created real,
    replays integer default 0, conflicts integer default 0,
    primary key (device_key, message_id));
create table if not exists timeline (id integer primary key autoincrement, at real,
    device_key text, event text, detail text);
create table if not exists knob (name text primary key, value text);
"""


def db(data):
    return cloudkit.open_db(data, "nubison.db", SCHEMA)


def provision(data):
    """The demo client (one product) with its secret (idempotent)."""
    conn = db(data)
    row = conn.execute("select secret from client where client_id=?", (CLIENT_ID,)).fetchone()
    if row:
        return row[0]
    secret = "nbs_" + secrets.token_urlsafe(24)
    conn.execute("insert into client values (?,?,?)", (CLIENT_ID, secret, PRODUCT_CODE))
    return secret


# -- helpers for tests and the operator CLI (they read the same SQLite file) -----------------
def data_rows(data):
    """Every stored data item, oldest first: device_key, message_id, data (parsed), created,
    replays, conflicts."""
    cols = ("device_key", "message_id", "body", "created", "replays", "conflicts")
    out = []
    for r in db(data).execute("select %s from data order by created" % ",".join(cols)):
        row = dict(zip(cols, r))
        row["data"] = json.loads(row.pop("body"))
        out.append(row)
    return out


def registrations(data):
    cols = ("device_key", "name", "model", "registered", "registrations")
    return [dict(zip(cols, r)) for r in db(data).execute(
        "select %s from device" % ",".join(cols))]


def timeline(data, event=None):
    cols = ("at", "device_key", "event", "detail")
    q = "select %s from timeline" % ",".join(cols)
    args: tuple = ()
    if event:
        q += " where event=?"
        args = (event,)
    return [dict(zip(cols, r)) for r in db(data).execute(q + " order by id", args)]


def count(data, event):
    return db(data).execute("select count(*) from timeline where event=?",
                            (event,)).fetchone()[0]


def tokens(data):
    """Every token ever issued (live or not): for secret-leak checks."""
    return [t for (t,) in db(data).execute("select token from token")]


def device_state(data):
    conn = db(data)
    now = time.time()
    counts = dict(conn.execute("select event, count(*) from timeline group by event"))
    return {"registrations": registrations(data), "events": counts,
            "stored": conn.execute("select count(*) from data").fetchone()[0],
            "replays": conn.execute("select coalesce(sum(replays),0) from data").fetchone()[0],
            "live_tokens": conn.execute("select count(*) from token where expires>?",
                                        (now,)).fetchone()[0]}


def set_knob(data, name, value):
    cloudkit.Knobs(db(data)).set(name, value)


def _reset(transport):
    """Drop a connection with RST, as a middlebox cutting it would; aiohttp then finds the
    transport closing and writes nothing."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if transport is not None:
        transport.abort()


def set_fault(data, kind, count=1, retry_after=2, seconds=5.0):
    if kind not in FAULTS:
        raise ValueError("unknown fault %r; one of %s" % (kind, ", ".join(FAULTS)))
    set_knob(data, "fault:" + kind, {"count": int(count), "retry_after": int(retry_after),
                                     "seconds": float(seconds)})


def expire_tokens(data, device_key=None):
    db(data).execute("update token set expires=0 where device_key=coalesce(?, device_key)",
                     (device_key,))


def unregister(data, device_key=DEVICE_KEY):
    db(data).execute("delete from device where device_key=?", (device_key,))


# -- the server ----------------------------------------------------------------------------
def _err(status, code=None, message=None):
    body = {"code": code, "message": MSG[code]} if code else {"message": message}
    return web.json_response(body, status=status)


def _not_valid():
    return _err(401, message="accessToken is not valid.")


def _not_found():
    return _err(405, message="service is not found. or device is not registered.")


def _bad_type():
    return _err(415, message="content-type must be application/json")


class Cloud:
    def __init__(self, data, token_ttl):
        self.data = data
        self.token_ttl = token_ttl
        self.conn = db(data)
        self.knobs = cloudkit.Knobs(self.conn)
        self.counter = 0

    def event(self, device_key, event, detail=""):
        self.conn.execute("insert into timeline (at, device_key, event, detail) values "
                          "(?,?,?,?)", (time.time(), device_key, event, detail))

    def take(self, kind):
        """The fault knob `kind` with one use consumed, or None."""
        return self.knobs.take("fault:" + kind)

    async def faults(self, request):
        """The fault knobs that answer a /devices call in its place (or delay it)."""
        knob = self.take("slow")
        if knob is not None:
            await asyncio.sleep(knob["seconds"])
        knob = self.take("503")
        if knob is not None:
            return web.Response(status=503, text="<html>service unavailable</html>",
                                headers={"Retry-After": str(knob["retry_after"])})
        knob = self.take("429")
        if knob is not None:
            return web.Response(status=429, text="too many requests",
                                headers={"Retry-After": str(knob["retry_after"])})
        if request.path != "/devices/login" and self.take("401") is not None:
            expire_tokens(self.data)  # the token expires now; the handler answers 401
        if self.take("wrong-types") is not None:
            self.event(None, "fault", "wrong-types " + request.path)
            if request.path == "/devices/login":
                return web.json_response({"AccessToken": 12345, "expires": "soon"})
            return web.json_response({"code": 500, "message": ["not", "a", "string"]},
                                     status=500)
        return None

    def garbage(self, request, resp):
        """Fault knobs garbage (the call was handled, its answer is replaced) and lost-answer
        (a stored data call's connection is reset instead of answered)."""
        if request.path == "/devices/data" and resp.status == 201 and \
                self.take("lost-answer") is not None:
            self.event(None, "lost-answer", request.path)
            _reset(request.transport)
            return resp
        if self.take("garbage") is not None:
            self.event(None, "fault", "garbage " + request.path)
            return web.Response(status=resp.status, body=b'{"AccessToken": "tru',
                                content_type="application/json")
        return resp

    async def _body(self, request, form_ok=False):
        """(dict body, None) or (None, error response); a body that is not a JSON object
        reads as empty, so the missing-field errors name what is wrong."""
        ctype = request.content_type
        if (request.content_length or 0) > MAX_BODY:
            return None, web.json_response({"message": "body too large"}, status=413)
        if form_ok and ctype == "application/x-www-form-urlencoded":
            return dict(await request.post()), None
        if ctype != "application/json":
            return None, _bad_type()
        try:
            body = json.loads(await request.read())
        except ValueError:
            body = None
        return body if isinstance(body, dict) else {}, None

    def _client(self, auth):
        """(product, None) for a valid Basic header, else (None, error response)."""
        if not auth.startswith("Basic "):
            return None, _err(400, "ERROR401")
        try:
            cid, secret = base64.b64decode(auth[6:].strip(), validate=True).decode() \
                .split(":", 1)
        except (ValueError, binascii.Error, UnicodeError):
            cid = secret = None
        row = self.conn.execute("select product from client where client_id=? and secret=?",
                                (cid, secret)).fetchone()
        return (row[0], None) if row else (None, None)

    async def login(self, request):
        if self.take("login-json") is not None and \
                request.content_type == "application/x-www-form-urlencoded":
            return _bad_type()
        body, resp = await self._body(request, form_ok=True)
        if resp is not None:
            return resp
        auth = request.headers.get("Authorization")
        if auth is None:
            return _err(400, "ERROR401")
        key = body.get("deviceKey")
        if not isinstance(key, str) or not key:
            return _err(400, "ERROR402")
        product, resp = self._client(auth)
        if resp is not None:
            return resp
        if product is None:
            self.event(key, "login_refused", "client")
            return _err(400, "ERROR403")
        prefix, _, ident = key.partition("_")
        if prefix != product or not ident:
            self.event(key, "login_refused", "service")
            return _not_found()
        tok = secrets.token_urlsafe(18)
        self.conn.execute("insert into token values (?,?,?)",
                          (tok, key, time.time() + self.token_ttl))
        self.event(key, "login", request.content_type)
        return web.json_response({"AccessToken": tok})

    async def _authorized(self, request):
        """(body, None) when deviceKey and a live token of that device are present."""
        body, resp = await self._body(request)
        if resp is not None:
            return None, resp
        key, tok = body.get("deviceKey"), body.get("accessToken")
        if not isinstance(key, str) or not key:
            return None, _err(400, "ERROR402")
        if not isinstance(tok, str) or not tok:
            return None, _err(400, "ERROR404")
        row = self.conn.execute("select device_key, expires from token where token=?",
                                (tok,)).fetchone()
        if row is None or row[0] != key or row[1] < time.time():
            self.event(key, "unauthorized", request.path)
            return None, _not_valid()
        return body, None

    def _registered(self, key):
        return self.conn.execute("select 1 from device where device_key=?",
                                 (key,)).fetchone() is not None

    async def register(self, request):
        body, resp = await self._authorized(request)
        if resp is not None:
            return resp
        key, name, model = body["deviceKey"], body.get("deviceName"), body.get("modelName")
        if not isinstance(name, str) or not name or model not in MODELS:
            return _err(400, "ERROR406")
        if self._registered(key):
            self.conn.execute("update device set registrations=registrations+1 where "
                              "device_key=?", (key,))
        else:
            self.conn.execute("insert into device values (?,?,?,?,1)",
                              (key, name, model, time.time()))
        self.event(key, "register", model)
        return web.Response(status=201)

    async def device_data(self, request):
        body, resp = await self._authorized(request)
        if resp is not None:
            return resp
        key = body["deviceKey"]
        if not self._registered(key):
            self.event(key, "data_refused", "not registered")
            return _not_found()
        item = body.get("data")
        if item is None or item in ("", {}, []):
            return _err(400, "ERROR406")
        text = json.dumps(item, sort_keys=True)
        mid = item.get("message_id") if isinstance(item, dict) else None
        if not isinstance(mid, str) or not mid:
            self.counter += 1
            mid = "srv-%d-%d" % (os.getpid(), self.counter)
        old = self.conn.execute("select body from data where device_key=? and message_id=?",
                                (key, mid)).fetchone()
        if old is None:
            self.conn.execute("insert into data (device_key, message_id, body, created) "
                              "values (?,?,?,?)", (key, mid, text, time.time()))
            self.event(key, "data", mid)
        else:
            self.conn.execute("update data set replays=replays+1, conflicts=conflicts+? "
                              "where device_key=? and message_id=?",
                              (int(old[0] != text), key, mid))
            self.event(key, "replay", mid)
        return web.Response(status=201)

    async def logout(self, request):
        body, resp = await self._authorized(request)
        if resp is not None:
            return resp
        key = body["deviceKey"]
        if not self._registered(key):
            return _not_found()
        # revoked, not deleted: tokens() keeps every token ever issued for leak checks
        self.conn.execute("update token set expires=0 where token=?", (body["accessToken"],))
        self.event(key, "logout")
        return web.Response(status=200)

    def app(self):
        app = web.Application(client_max_size=MAX_BODY * 2, middlewares=[
            cloudkit.fault_middleware(("/devices",), self.faults, self.garbage)])
        app.router.add_post("/devices/login", self.login)
        app.router.add_post("/devices/logout", self.logout)
        app.router.add_post("/devices/data", self.device_data)
        app.router.add_post("/devices", self.register)
        return app


async def serve(data, port, token_ttl):
    pki = cloudkit.pki(data)
    secret = provision(data)

    def describe(port):
        url = "https://127.0.0.1:%d" % port
        return cloud_json(data, pki, secret, url), "nubison cloud on %s (data %s)" % (url, data)

    await cloudkit.serve(data, pki, Cloud(data, token_ttl).app(), port, describe)


def cloud_json(data, pki, secret, url):
    """What run_local and the tests read: the server, the device's cloud section."""
    return {"api_url": url, "ca_file": pki["ca"], "client_id": CLIENT_ID,
            "client_secret": secret, "device_key": DEVICE_KEY,
            "device_cloud": {"platform": "nubison", "api_url": url, "client_id": CLIENT_ID,
                             "client_secret": secret, "product_code": PRODUCT_CODE,
                             "device_id": DEVICE_ID, "model_name": MODELS[0],
                             "device_name": "greenhouse-sim"},
            "hint": "try: .venv/bin/python -m tools.nubison_cloud show-device --data %s" % data}


def main(argv=None):
    ap, sub, _ = cloudkit.cli("nubison_cloud", "local NUBISON IoT cloud (HTTPS)", 300,
                              lambda a: cloudkit.run(a.data, lambda _broker: serve(
                                  a.data, a.port, a.token_ttl)))
    cloudkit.rows_command(sub, "list-data", data_rows)
    cloudkit.show_command(sub, "show-device", device_state, operator_cli.nubison_show)
    cloudkit.rows_command(sub, "timeline", timeline)
    cloudkit.command(sub, "unregister", lambda a: unregister(a.data))
    cloudkit.command(sub, "expire-tokens", lambda a: expire_tokens(a.data))
    cloudkit.fault_command(sub, FAULTS, lambda a: set_fault(a.data, a.kind, a.count,
                                                            a.retry_after, a.seconds),
                           timing=True)
    return cloudkit.main(ap, argv)


if __name__ == "__main__":
    sys.exit(main())
