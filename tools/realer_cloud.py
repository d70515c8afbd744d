"""A local Realer cloud (HTTPS part) for end-to-end tests and `make run`.

Implements, strictly, what realer-https.txt describes: OAuth client credentials, the command
and sensor catalogs, feed-data (single and batches) with idempotency by message_id. State is
one SQLite file, so the operator CLI and tests can read and change it while the server runs.

Shapes chosen where the spec is silent (the firmware reads all of them tolerantly):
- token:   {"access_token", "token_type": "Bearer", "expires_in", "renew_after", "scope"};
           renew_after = 3/4 of expires_in.
- command: {"id", "name", "kind", "value", "desired_id", "desired_at", "expires_at", "seq"};
           desired_id is null until the operator sets a value; expires_at ISO 8601 or null.
- batch:   request {"items": [...]} (at most 50); answer 200
           {"code": 2000, "results": [{"message_id", "http_status", "status" | "code"+"error"}]}
           where each result is what the single endpoint would have answered.
- errors:  {"code": 40xx, "error": {"type", "message", "details"}, "request_id"}.

Fault knobs (admin endpoint on the same server, under /_admin, or the CLI `fault`): the next
N /iot or /oauth requests answer 401, 429 (+ Retry-After), or 503; or are delayed by S seconds.

    python -m tools.realer_cloud serve --data DIR [--port N] [--token-ttl S]
    python -m tools.realer_cloud set-desired --data DIR COMMAND VALUE [--ttl S]
    python -m tools.realer_cloud list-feed-data --data DIR
    python -m tools.realer_cloud fault --data DIR KIND [--count N] [--retry-after S]
"""
import argparse
import asyncio
import base64
import datetime
import json
import os
import re
import secrets
import sqlite3
import ssl
import sys
import time
import urllib.request

from aiohttp import web

from tools.pki import make_certs

DEVICE_ID = 12345
CLIENT_ID = "cdv_" + "a1b2c3d4e5f6g7h8i9j0k1l2m3"
SENSORS = [{"id": 7, "name": "air temperature", "unit": "C"},
           {"id": 8, "name": "humidity", "unit": "%"}]
COMMANDS = [{"id": 3, "name": "fan", "kind": "switch"},
            {"id": 4, "name": "vent", "kind": "dimmer"}]
BATCH_MAX = 50
MAX_BODY = 16384
ISO_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$")
DEFAULT_SCOPES = "iot:catalog:read iot:feed-data:write"

SCHEMA = """
create table if not exists device (id integer primary key, client_id text, secret text);
create table if not exists token (token text primary key, device integer, expires real,
                                  scope text);
create table if not exists command (id integer, device integer, name text, kind text,
    value text, desired_id text, desired_at text, expires_at text, seq integer,
    primary key (device, id));
create table if not exists feed (message_id text, device integer, body text, source text,
    desired_id text, report_status text, value text, created real,
    primary key (device, message_id));
create table if not exists knob (name text primary key, value text);
"""


def now_iso(t=None):
    return datetime.datetime.fromtimestamp(t or time.time(), datetime.timezone.utc) \
        .strftime("%Y-%m-%dT%H:%M:%SZ")


def db(data):
    conn = sqlite3.connect(os.path.join(data, "cloud.db"), isolation_level=None, timeout=10)
    conn.executescript(SCHEMA)
    return conn


def provision(data):
    """Create the one demo device with its sensors and commands (idempotent)."""
    conn = db(data)
    row = conn.execute("select secret from device where id=?", (DEVICE_ID,)).fetchone()
    if row:
        return row[0]
    secret = "rs_" + secrets.token_urlsafe(24)
    conn.execute("insert into device values (?,?,?)", (DEVICE_ID, CLIENT_ID, secret))
    for c in COMMANDS:
        conn.execute("insert into command values (?,?,?,?,?,?,?,?,?)",
                     (c["id"], DEVICE_ID, c["name"], c["kind"], "0", None, None, None, 0))
    return secret


def set_desired(data, command_id, value, ttl=None):
    conn = db(data)
    row = conn.execute("select seq from command where device=? and id=?",
                       (DEVICE_ID, command_id)).fetchone()
    if row is None:
        raise SystemExit("no command %s" % command_id)
    desired_id = "des_" + secrets.token_hex(6)
    expires = now_iso(time.time() + ttl) if ttl is not None else None  # ttl < 0: already stale
    conn.execute("update command set value=?, desired_id=?, desired_at=?, expires_at=?, "
                 "seq=? where device=? and id=?", (str(value), desired_id, now_iso(), expires,
                                                   row[0] + 1, DEVICE_ID, command_id))
    return desired_id


def feed_rows(data):
    conn = db(data)
    cols = ("message_id", "source", "value", "desired_id", "report_status", "created")
    return [dict(zip(cols, r)) for r in conn.execute(
        "select %s from feed order by created" % ",".join(cols))]


def set_knob(data, name, value):
    db(data).execute("insert or replace into knob values (?,?)", (name, json.dumps(value)))


class Cloud:
    def __init__(self, data, token_ttl):
        self.data = data
        self.token_ttl = token_ttl
        self.conn = db(data)
        self.counter = 0

    def err(self, http_status, code, etype, message, details=None, headers=None):
        self.counter += 1
        body = {"code": code, "error": {"type": etype, "message": message,
                                        "details": details or {}},
                "request_id": "req_%d" % self.counter}
        return web.json_response(body, status=http_status, headers=headers)

    def _knob(self, name):
        row = self.conn.execute("select value from knob where name=?", (name,)).fetchone()
        return json.loads(row[0]) if row else None

    async def faults(self, request):
        """Apply a pending fault knob to this request; returns a response or None."""
        fault = self._knob("fault")
        if fault and fault.get("count", 0) > 0:
            fault["count"] -= 1
            set_knob(self.data, "fault", fault)
            kind = fault["kind"]
            if kind == "401":
                return self.err(401, 4001, "invalid_token", "token expired (fault knob)")
            if kind == "429":
                return self.err(429, 4029, "rate_limited", "slow down",
                                headers={"Retry-After": str(fault.get("retry_after", 2))})
            if kind == "503":
                return web.json_response({"code": 5003, "error": "unavailable"}, status=503)
            if kind == "slow":
                await asyncio.sleep(fault.get("seconds", 5))
        return None

    async def token(self, request):
        resp = await self.faults(request)
        if resp is not None:
            return resp
        if request.content_type != "application/x-www-form-urlencoded":
            return self.err(400, 4000, "invalid_request", "form-encoded body required")
        auth = request.headers.get("Authorization", "")
        try:
            cid, secret = base64.b64decode(auth[6:]).decode().split(":", 1) \
                if auth.startswith("Basic ") else (None, None)
        except ValueError:
            cid = secret = None
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return self.err(400, 4000, "unsupported_grant_type", "client_credentials only")
        row = self.conn.execute("select id from device where client_id=? and secret=?",
                                (cid, secret)).fetchone()
        if row is None:
            return self.err(401, 4001, "unauthorized", "bad client credentials")
        scope = form.get("scope") or DEFAULT_SCOPES
        tok = secrets.token_hex(16)
        self.conn.execute("insert into token values (?,?,?,?)",
                          (tok, row[0], time.time() + self.token_ttl, scope))
        return web.json_response({"access_token": tok, "token_type": "Bearer",
                                  "expires_in": self.token_ttl,
                                  "renew_after": max(1, self.token_ttl * 3 // 4),
                                  "scope": scope})

    async def authorize(self, request, scope):
        resp = await self.faults(request)
        if resp is not None:
            return None, resp
        auth = request.headers.get("Authorization", "")
        row = self.conn.execute("select device, expires, scope from token where token=?",
                                (auth[7:] if auth.startswith("Bearer ") else "",)).fetchone()
        if row is None or row[1] < time.time():
            return None, self.err(401, 4001, "invalid_token", "token unknown or expired")
        if scope not in row[2].split():
            return None, self.err(403, 4003, "insufficient_scope", "needs " + scope)
        if str(row[0]) != request.match_info["device_id"]:
            return None, self.err(404, 4004, "resource_not_found", "no such device")
        return row[0], None

    async def commands(self, request):
        device, resp = await self.authorize(request, "iot:catalog:read")
        if resp is not None:
            return resp
        cols = ("id", "name", "kind", "value", "desired_id", "desired_at", "expires_at", "seq")
        rows = self.conn.execute("select %s from command where device=? order by id" %
                                 ",".join(cols), (device,))
        return web.json_response({"code": 2000, "commands": [dict(zip(cols, r)) for r in rows]})

    async def sensors(self, request):
        device, resp = await self.authorize(request, "iot:catalog:read")
        if resp is not None:
            return resp
        return web.json_response({"code": 2000, "sensors": SENSORS})

    def validate(self, device, item):
        """(http_status, body) for one feed-data item, storing it when new."""
        if not isinstance(item, dict):
            return 422, self._verr({"body": ["must be an object"]})
        details = {}
        has_cmd, has_sensor = "command_id" in item, "sensor_id" in item
        if has_cmd == has_sensor:
            details["source"] = ["exactly one of command_id or sensor_id is required"]
        ids = [c["id"] for c in COMMANDS] if has_cmd else [s["id"] for s in SENSORS]
        source = item.get("command_id" if has_cmd else "sensor_id")
        if has_cmd != has_sensor and source not in ids:
            details["command_id" if has_cmd else "sensor_id"] = ["is invalid for this device"]
        if not isinstance(item.get("value"), str):
            details["value"] = ["is required and must be a string"]
        if not isinstance(item.get("value_received_at"), str) or \
                not ISO_RE.match(item["value_received_at"]):
            details["value_received_at"] = ["must be ISO 8601 UTC"]
        mid = item.get("message_id")
        if not isinstance(mid, str) or not mid or len(mid) > 128:
            details["message_id"] = ["is required"]
        status = item.get("report_status")
        if "desired_id" in item:
            if status not in (None, "applied", "rejected", "stale"):
                details["report_status"] = ["must be applied, rejected or stale"]
            if not has_cmd:
                details["desired_id"] = ["only command reports answer a desired state"]
        elif status not in (None, "reported"):
            details["report_status"] = ["only reported is valid without desired_id"]
        if details:
            return 422, self._verr(details)
        body = json.dumps(item, sort_keys=True)
        old = self.conn.execute("select body from feed where device=? and message_id=?",
                                (device, mid)).fetchone()
        if old is not None:
            if old[0] != body:
                return 409, {"code": 4009, "error": {"type": "message_conflict",
                                                     "message": "message_id reused with "
                                                                "another payload"}}
            return 200, {"code": 2000, "status": "idempotent", "message_id": mid}
        self.conn.execute("insert into feed values (?,?,?,?,?,?,?,?)",
                          (mid, device, body, "%s:%s" % ("command" if has_cmd else "sensor",
                                                         source),
                           item.get("desired_id"), status, item["value"], time.time()))
        self.counter += 1
        return 201, {"code": 2000, "status": "created", "feed_data_id": self.counter,
                     "message_id": mid, "warnings": []}

    def _verr(self, details):
        return {"code": 4022, "error": {"type": "validation_failed",
                                        "message": "feed data ingestion failed",
                                        "details": details}}

    async def _json_body(self, request):
        if request.content_type != "application/json":
            return None, self.err(415, 4015, "unsupported_media_type",
                                  "Content-Type must be application/json")
        if (request.content_length or 0) > MAX_BODY:
            return None, self.err(413, 4013, "payload_too_large", "body over %d" % MAX_BODY)
        try:
            return await request.json(), None
        except ValueError:
            return None, self.err(422, 4022, "validation_failed", "body is not JSON")

    async def feed_data(self, request):
        device, resp = await self.authorize(request, "iot:feed-data:write")
        if resp is not None:
            return resp
        item, resp = await self._json_body(request)
        if resp is not None:
            return resp
        status, body = self.validate(device, item)
        self.counter += 1
        body["request_id"] = "req_%d" % self.counter
        return web.json_response(body, status=status)

    async def batches(self, request):
        device, resp = await self.authorize(request, "iot:feed-data:write")
        if resp is not None:
            return resp
        body, resp = await self._json_body(request)
        if resp is not None:
            return resp
        items = body.get("items") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            return self.err(422, 4022, "validation_failed", "items[] required")
        if len(items) > BATCH_MAX:
            return self.err(413, 4013, "payload_too_large", "at most %d items" % BATCH_MAX)
        results = []
        for item in items:
            status, res = self.validate(device, item)
            res["http_status"] = status
            res.setdefault("message_id", item.get("message_id") if isinstance(item, dict)
                           else None)
            results.append(res)
        return web.json_response({"code": 2000, "results": results})

    async def admin(self, request):
        if request.remote not in ("127.0.0.1", "::1"):
            return web.Response(status=403)
        body = await request.json()
        what = request.match_info["what"]
        if what == "desired":
            return web.json_response({"desired_id": set_desired(
                self.data, body["command"], body["value"], body.get("ttl"))})
        if what == "fault":
            set_knob(self.data, "fault", body)
            return web.json_response({"ok": True})
        return web.Response(status=404)

    def app(self):
        app = web.Application(client_max_size=MAX_BODY * 4)
        base = "/iot/v1/devices/{device_id}"
        app.router.add_post("/oauth/token", self.token)
        app.router.add_get(base + "/commands", self.commands)
        app.router.add_get(base + "/sensors", self.sensors)
        app.router.add_post(base + "/feed-data", self.feed_data)
        app.router.add_post(base + "/feed-data/batches", self.batches)
        app.router.add_post("/_admin/{what}", self.admin)
        return app


async def serve(data, port, token_ttl):
    os.makedirs(data, exist_ok=True)
    pki = make_certs(os.path.join(data, "pki")) if not os.path.exists(
        os.path.join(data, "pki", "ca.pem")) else {
        k: os.path.join(data, "pki", f) for k, f in (("ca", "ca.pem"),
                                                      ("server_cert", "server.pem"),
                                                      ("server_key", "server.key"))}
    secret = provision(data)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki["server_cert"], pki["server_key"])
    runner = web.AppRunner(Cloud(data, token_ttl).app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    info = {"api_url": "https://127.0.0.1:%d" % port, "ca_file": pki["ca"],
            "device_id": DEVICE_ID, "client_id": CLIENT_ID, "client_secret": secret}
    tmp = os.path.join(data, "cloud.json.tmp")
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, os.path.join(data, "cloud.json"))
    print("realer cloud on https://127.0.0.1:%d (data %s)" % (port, data), flush=True)
    await asyncio.Event().wait()


def admin_call(data, what, body):
    with open(os.path.join(data, "cloud.json")) as f:
        info = json.load(f)
    ctx = ssl.create_default_context(cafile=info["ca_file"])
    req = urllib.request.Request(info["api_url"] + "/_admin/" + what, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        return json.load(r)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.realer_cloud",
                                 description="local Realer cloud (HTTPS)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--data", required=True)
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--token-ttl", type=int, default=120)
    d = sub.add_parser("set-desired")
    d.add_argument("--data", required=True)
    d.add_argument("command", type=int)
    d.add_argument("value")
    d.add_argument("--ttl", type=int)
    f = sub.add_parser("list-feed-data")
    f.add_argument("--data", required=True)
    k = sub.add_parser("fault")
    k.add_argument("--data", required=True)
    k.add_argument("kind", choices=("401", "429", "503", "slow"))
    k.add_argument("--count", type=int, default=1)
    k.add_argument("--retry-after", type=int, default=2)
    k.add_argument("--seconds", type=float, default=5)
    a = ap.parse_args(argv)
    if a.cmd == "serve":
        try:
            asyncio.run(serve(a.data, a.port, a.token_ttl))
        except KeyboardInterrupt:
            pass
    elif a.cmd == "set-desired":
        print(admin_call(a.data, "desired", {"command": a.command, "value": a.value,
                                             "ttl": a.ttl})["desired_id"])
    elif a.cmd == "list-feed-data":
        for row in feed_rows(a.data):
            print(json.dumps(row))
    elif a.cmd == "fault":
        admin_call(a.data, "fault", {"kind": a.kind, "count": a.count,
                                     "retry_after": a.retry_after, "seconds": a.seconds})


if __name__ == "__main__":
    sys.exit(main())
