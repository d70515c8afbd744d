"""A local Realer cloud (HTTPS, and MQTT with `serve --mqtt`) for end-to-end tests and `make run`.

Implements, strictly, what the Realer HTTPS runtime guide describes: OAuth client credentials,
the command and sensor catalogs, feed-data (single and batches) with idempotency by message_id.
State is one SQLite file, so the operator CLI and tests can read and change it while the server
runs.

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

MQTT (the Realer MQTT guide; `serve --mqtt` starts a real mosquitto from tools/mosquitto.py in
DATA/mqtt with the same certificates, TLS listener on 127.0.0.1; cloud.json gets "mqtt_url"):
- catalog: GET /iot/v1/devices/{id}/mqtt (scope iot:catalog:read), exactly the spec's shape:
           route items {"source_type": "sensor"|"command", "mqtt": {"feed_data_topic",
           "feed_data_publish_scope", ["desired_topic", "desired_subscribe_scope"]}}, no ids:
           one sensor route for every sensor and one route per command; the payload names the
           source (sensor_id / command_id, required then). Topics:
           realer/iot/v1/devices/{client_id}/routes/rte_<26>/feed-data|desired and
           realer/iot/v1/devices/{client_id}/feed-data/acks. Without --mqtt: 404.
           EXTENSION, knob "route_ids" (set_knob(data, "route_ids", True)): every item also
           carries "source_id", one route per source, and the route gives the source (the
           payload may omit it; if present it must match). Knob "route_epoch" (int) renames
           every route, a catalog whose routes changed; publishes on the previous epoch's
           routes are still taken (in flight across the change).
- credential: POST /iot/v1/mqtt-credentials (scope iot:mqtt:connect), body {"device_id",
           "scopes"} as in the catalog. 200 {"mqtt": {"mqtt_client_id", "mqtt_username"
           (realer-cdv-...-cred-vN), "mqtt_credential", "expires_in", "renew_after" (3/4),
           "session_hard_expires_in" (= expires_in)}}. A device_id other than the token's ->
           404 resource_not_found; a scope not granted to the token -> 403 insufficient_scope;
           an unknown scope or a bad body -> 422 validation_failed. The credential is a dynsec
           client locked to the client id, allowed exactly what the scopes grant (publish the
           route feed-data topics; subscribe the ack topic; subscribe the desired topics). An
           expired credential is deleted from the broker, which disconnects its sessions.
- feed data on a route topic: the route gives the source (the payload may omit sensor_id /
           command_id; if present it must match), then the HTTPS validation and idempotency.
           Ack on feed_data_ack_topic, QoS 1: {"message_id", "status": "accepted" | "replayed"
           | "conflict" | "rejected" | "error", "error": {"type", "message", "details"} (not on
           accepted/replayed), "retryable": bool (error only)}. A payload that is not a JSON
           object gets a rejected ack if a message_id can be found in it, else it is dropped
           (logged in DATA/mqtt/bridge.log). Over 16384 bytes: rejected, payload_too_large.
- knob "broker_url" (set_knob(data, "broker_url", URL)): the catalog advertises URL instead
           of the broker's own address, so a test can put a fault proxy in front of it.
- desired: each new desired value is published on the command's desired_topic, QoS 1,
           retained: {"command_id", "desired_id", "value", "seq", "desired_at", "expires_at"}
           (the body is not documented: this shape is the cloud's choice).
- MQTT fault knobs (`fault KIND --count N`): drop-mqtt (kick the device's live sessions once),
           ack-error (next N publishes get error/retryable, not stored), mqtt-silent (next N
           publishes are processed but not acked), no-credential-endpoint (next N catalog
           reads omit credential_endpoint), broker-down (--seconds S: stop the broker, start
           it again on the same ports with the same credentials; retained desired states are
           published again; credential requests meanwhile get 503 service_unavailable),
           revoke-credential (delete the device's live credentials from the broker, which
           refuses them from then on; the next credential request answers 503).

    python -m tools.realer_cloud serve --data DIR [--port N] [--token-ttl S] [--mqtt]
                                       [--mqtt-cred-ttl S]
    python -m tools.realer_cloud set-desired --data DIR COMMAND VALUE [--ttl S]
    python -m tools.realer_cloud list-feed-data --data DIR
    python -m tools.realer_cloud show-device --data DIR
    python -m tools.realer_cloud fault --data DIR KIND [--count N] [--retry-after S]
                                       [--seconds S]
      KIND: 401 429 503 slow | drop-mqtt ack-error mqtt-silent no-credential-endpoint
            broker-down revoke-credential
"""
import asyncio
import base64
import hashlib
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

from tools import cloudkit, operator_cli
from tools.cloudkit import now_iso

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
MQTT_SCOPES = ("iot:mqtt:connect", "iot:mqtt:ack:read", "iot:mqtt:feed-data:write",
               "iot:mqtt:desired:read")
MQTT_FAULTS = ("drop-mqtt", "ack-error", "mqtt-silent", "no-credential-endpoint",
               "broker-down", "revoke-credential")
MID_RE = re.compile(rb'"message_id"\s*:\s*"([^"\\]{1,128})"')
ACK_STATUS = {201: "accepted", 200: "replayed", 409: "conflict", 422: "rejected"}


def device_topic(client_id):
    return "realer/iot/v1/devices/%s" % client_id


def route_id(kind, source_id, epoch=0):
    key = "%s:%s" % (kind, source_id) + ("@%s" % epoch if epoch else "")
    return "rte_" + hashlib.sha256(key.encode()).hexdigest()[:26]


_ROUTES: dict = {}


def routes(client_id, ids=False, epoch=0):
    """The device's routes (see _routes), computed once per shape: every feed-data publish
    asks."""
    key = (client_id, ids, epoch)
    if key not in _ROUTES:
        _ROUTES[key] = _routes(client_id, ids, epoch)
    return _ROUTES[key]


def _routes(client_id, ids=False, epoch=0):
    """{route_id: (kind, source_id or None)} for the demo device. Documented shape (default):
    one sensor route for every sensor, one route per command, and the payload names the
    source (None here). With ids (knob "route_ids"): one route per source, which it gives."""
    if ids:
        out = {route_id("sensor", s["id"], epoch): ("sensor", s["id"]) for s in SENSORS}
    else:
        out = {route_id("sensor", "*", epoch): ("sensor", None)}
    out.update({command_route(c["id"], ids, epoch): ("command", c["id"] if ids else None)
                for c in COMMANDS})
    return out


def command_route(command_id, ids=False, epoch=0):
    # the shapes name their command routes apart: a route of one never means the other's
    return route_id("command", command_id if ids else "doc-%s" % command_id, epoch)


def desired_topic(client_id, command_id, ids=False, epoch=0):
    return "%s/routes/%s/desired" % (device_topic(client_id), command_route(command_id, ids,
                                                                           epoch))


def ack_topic(client_id):
    return device_topic(client_id) + "/feed-data/acks"

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
create table if not exists mqtt_cred (username text primary key, device integer,
    version integer, expires real, removed integer default 0);
"""


def db(data):
    # fast: an fsync per stored record was the bulk of the cloud's time per MQTT ack
    conn = cloudkit.open_db(data, "cloud.db", SCHEMA, fast=True)
    if "transport" not in [r[1] for r in conn.execute("pragma table_info(feed)")]:
        try:
            conn.execute("alter table feed add column transport text default 'https'")
        except sqlite3.OperationalError:  # another process added it just now
            pass
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
    cols = ("message_id", "source", "value", "desired_id", "report_status", "created",
            "transport")
    return [dict(zip(cols, r)) for r in conn.execute(
        "select %s from feed order by created" % ",".join(cols))]


def device_state(data, device=DEVICE_ID):
    """What the operator sees for one device: each command's desired value and the state the
    device last reported, each sensor's latest value, delivery counts, live credentials."""
    conn = db(data)
    now = time.time()

    def last(source):
        row = conn.execute("select value, desired_id, report_status, created, transport from "
                           "feed where device=? and source=? order by created desc limit 1",
                           (device, source)).fetchone()
        return None if row is None else dict(zip(("value", "desired_id", "report_status",
                                                  "at", "transport"), row))

    commands = []
    for cid, name, value, desired_id, expires_at in conn.execute(
            "select id, name, value, desired_id, expires_at from command where device=? "
            "order by id", (device,)):
        commands.append({"id": cid, "name": name, "desired_value": value,
                         "desired_id": desired_id, "expires_at": expires_at,
                         "reported": last("command:%d" % cid)})
    sensors = [{"id": s["id"], "name": s["name"], "latest": last("sensor:%d" % s["id"])}
               for s in SENSORS]
    counts = dict(conn.execute("select transport, count(*) from feed where device=? "
                               "group by transport", (device,)).fetchall())
    creds = [dict(zip(("username", "version", "expires_in_s"), (u, v, round(e - now))))
             for u, v, e in conn.execute("select username, version, expires from mqtt_cred "
                                         "where device=? and removed=0", (device,))]
    tokens = conn.execute("select count(*) from token where device=? and expires>?",
                          (device, now)).fetchone()[0]
    return {"device_id": device, "commands": commands, "sensors": sensors,
            "feed_data": counts, "live_tokens": tokens, "mqtt_credentials": creds}


def set_knob(data, name, value):
    cloudkit.Knobs(db(data)).set(name, value)


def set_fault(data, body):
    """Store a fault knob: MQTT kinds under their own name (they combine), the HTTPS kinds
    under "fault"."""
    if body.get("kind") in MQTT_FAULTS:
        set_knob(data, "mqtt:" + body["kind"], {"count": int(body.get("count", 1)),
                                                "seconds": float(body.get("seconds", 5))})
    else:
        set_knob(data, "fault", body)


class Cloud:
    def __init__(self, data, token_ttl, broker=None, cred_ttl=600):
        self.data = data
        self.token_ttl = token_ttl
        self.conn = db(data)
        self.knobs = cloudkit.Knobs(self.conn)
        self.counter = 0
        self.broker = broker
        self.cred_ttl = cred_ttl
        self.bridge = None

    def err(self, http_status, code, etype, message, details=None, headers=None):
        self.counter += 1
        body = {"code": code, "error": {"type": etype, "message": message,
                                        "details": details or {}},
                "request_id": "req_%d" % self.counter}
        return web.json_response(body, status=http_status, headers=headers)

    async def faults(self, request):
        """Apply the pending fault knob to this /iot or /oauth request: a response or
        None."""
        fault = self.knobs.take("fault")
        if fault:
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
        device, scopes, resp = self._bearer(request, scope)
        if resp is not None:
            return None, resp
        if str(device) != request.match_info["device_id"]:
            return None, self.err(404, 4004, "resource_not_found", "no such device")
        return device, None

    def _bearer(self, request, scope):
        """(device, token scopes, None) for a live token holding scope, else an error."""
        auth = request.headers.get("Authorization", "")
        row = self.conn.execute("select device, expires, scope from token where token=?",
                                (auth[7:] if auth.startswith("Bearer ") else "",)).fetchone()
        if row is None or row[1] < time.time():
            return None, None, self.err(401, 4001, "invalid_token", "token unknown or expired")
        if scope not in row[2].split():
            return None, None, self.err(403, 4003, "insufficient_scope", "needs " + scope)
        return row[0], row[2].split(), None

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

    def validate(self, device, item, transport="https"):
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
        self.conn.execute("insert into feed (message_id, device, body, source, desired_id, "
                          "report_status, value, created, transport) values (?,?,?,?,?,?,?,?,?)",
                          (mid, device, body, "%s:%s" % ("command" if has_cmd else "sensor",
                                                         source),
                           item.get("desired_id"), status, item["value"], time.time(),
                           transport))
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
            desired_id = set_desired(self.data, body["command"], body["value"], body.get("ttl"))
            if self.bridge:
                self.bridge.wake.set()
            return web.json_response({"desired_id": desired_id})
        if what == "fault":
            set_fault(self.data, body)
            if self.bridge:
                self.bridge.wake.set()
            return web.json_response({"ok": True})
        return web.Response(status=404)

    # -- MQTT (HTTPS side) ----------------------------------------------------------------

    def _client_id(self, device):
        return self.conn.execute("select client_id from device where id=?",
                                 (device,)).fetchone()[0]

    async def mqtt_catalog(self, request):
        device, resp = await self.authorize(request, "iot:catalog:read")
        if resp is not None:
            return resp
        if self.broker is None:
            return self.err(404, 4004, "resource_not_found", "MQTT is not enabled")
        cid = self._client_id(device)
        # knob "broker_url": advertise another address (tests put a fault proxy in front)
        url = self.knobs.get("broker_url") or self.broker.tls_url
        mqtt = {"broker_url": url, "protocol": "mqtt-5.0", "client_id": cid,
                "feed_data_ack_topic": ack_topic(cid)}
        if not self.knobs.take("mqtt:no-credential-endpoint"):
            mqtt["credential_endpoint"] = {"endpoint": "/iot/v1/mqtt-credentials",
                                           "http_method": "POST",
                                           "body": {"device_id": device,
                                                    "scopes": list(MQTT_SCOPES)}}
        ids, epoch = self.route_mode()
        out = []
        for rte, (kind, source) in routes(cid, ids, epoch).items():
            leaf = "%s/routes/%s/" % (device_topic(cid), rte)
            m = {"feed_data_topic": leaf + "feed-data",
                 "feed_data_publish_scope": "iot:mqtt:feed-data:write"}
            if kind == "command":
                m["desired_topic"] = leaf + "desired"
                m["desired_subscribe_scope"] = "iot:mqtt:desired:read"
            item = {"source_type": kind, "mqtt": m}
            if ids:  # the extension: the source the route is for
                item["source_id"] = source
            out.append(item)
        return web.json_response({"code": 2000, "mqtt": mqtt, "mqtt_routes": out})

    def route_mode(self):
        """(ids, epoch): knob "route_ids" adds source_id to every route (one per source);
        knob "route_epoch" renames every route (a catalog whose routes changed)."""
        return bool(self.knobs.get("route_ids")), int(self.knobs.get("route_epoch") or 0)

    def known_routes(self, cid):
        """Every route a device may use now: both shapes, this epoch and the one before (a
        publish in flight across a change still lands)."""
        epoch = self.route_mode()[1]
        out = {}
        for e in {max(0, epoch - 1), epoch}:
            out.update(routes(cid, False, e))
            out.update(routes(cid, True, e))
        return out

    async def mqtt_credentials(self, request):
        device, token_scopes, resp = self._bearer(request, "iot:mqtt:connect")
        if resp is not None:
            return resp
        body, resp = await self._json_body(request)
        if resp is not None:
            return resp
        if self.broker is None:
            return self.err(404, 4004, "resource_not_found", "MQTT is not enabled")
        if self.knobs.take("mqtt:cred-503"):
            return self.err(503, 5003, "service_unavailable", "try again (fault knob)")
        if not isinstance(body, dict):
            return self.err(422, 4022, "validation_failed", "body must be an object")
        dev = body.get("device_id")
        if isinstance(dev, bool) or dev != device:
            return self.err(404, 4004, "resource_not_found", "no such device for this token")
        scopes = body.get("scopes")
        if not isinstance(scopes, list) or not scopes or \
                not all(isinstance(x, str) for x in scopes):
            return self.err(422, 4022, "validation_failed", "scopes[] required",
                            {"scopes": ["must be a non-empty list of strings"]})
        unknown = [x for x in scopes if x not in MQTT_SCOPES]
        if unknown or "iot:mqtt:connect" not in scopes:
            return self.err(422, 4022, "validation_failed", "bad scopes",
                            {"scopes": ["unknown: %s" % unknown] if unknown else
                             ["must include iot:mqtt:connect"]})
        missing = [x for x in scopes if x not in token_scopes]
        if missing:
            return self.err(403, 4003, "insufficient_scope",
                            "token lacks " + " ".join(missing))
        cid = self._client_id(device)
        version = (self.conn.execute("select max(version) from mqtt_cred where device=?",
                                     (device,)).fetchone()[0] or 0) + 1
        username = "realer-%s-cred-v%d" % (cid.replace("_", "-"), version)
        password = "mqp_" + secrets.token_urlsafe(24)
        publish, subscribe = [], []
        known = self.known_routes(cid)
        if "iot:mqtt:feed-data:write" in scopes:
            publish = ["%s/routes/%s/feed-data" % (device_topic(cid), r) for r in known]
        if "iot:mqtt:ack:read" in scopes:
            subscribe.append(ack_topic(cid))
        if "iot:mqtt:desired:read" in scopes:
            subscribe += ["%s/routes/%s/desired" % (device_topic(cid), r)
                          for r, (k, _) in known.items() if k == "command"]
        self.conn.execute("insert into mqtt_cred (username, device, version, expires) "
                          "values (?,?,?,?)", (username, device, version,
                                               time.time() + self.cred_ttl))
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: self.broker.add_client(username, password, cid, publish,
                                                     subscribe))
        except Exception as e:  # broker down (fault knob) or dynsec refused
            self.conn.execute("update mqtt_cred set removed=1 where username=?", (username,))
            return self.err(503, 5003, "service_unavailable", "MQTT broker unavailable",
                            {"broker": [type(e).__name__]})
        return web.json_response({"mqtt": {
            "mqtt_client_id": cid, "mqtt_username": username, "mqtt_credential": password,
            "expires_in": self.cred_ttl, "renew_after": max(1, self.cred_ttl * 3 // 4),
            "session_hard_expires_in": self.cred_ttl}})

    def app(self):
        app = web.Application(client_max_size=MAX_BODY * 4, middlewares=[
            cloudkit.fault_middleware(("/iot", "/oauth"), self.faults)])
        base = "/iot/v1/devices/{device_id}"
        app.router.add_post("/oauth/token", self.token)
        app.router.add_get(base + "/commands", self.commands)
        app.router.add_get(base + "/sensors", self.sensors)
        app.router.add_post(base + "/feed-data", self.feed_data)
        app.router.add_post(base + "/feed-data/batches", self.batches)
        app.router.add_get(base + "/mqtt", self.mqtt_catalog)
        app.router.add_post("/iot/v1/mqtt-credentials", self.mqtt_credentials)
        app.router.add_post("/_admin/{what}", self.admin)
        return app


class MqttBridge:
    """The cloud's own admin session on its broker: feed data in, acks and desired states out,
    credential expiry and the MQTT fault knobs. paho runs its network thread; every message
    is handed to the asyncio loop, where all database work happens."""

    FEED_FILTER = "realer/iot/v1/devices/+/routes/+/feed-data"

    def __init__(self, cloud, broker, loop):
        self.cloud, self.broker, self.loop = cloud, broker, loop
        self.wake = asyncio.Event()
        self.published = {}
        self.log_file = open(os.path.join(broker.workdir, "bridge.log"), "a")
        self.session = cloudkit.BrokerSession(
            broker, "realer-cloud-bridge", loop, [self.FEED_FILTER],
            lambda m: self.handle(m.topic, m.payload), self._connected, log=self.log)
        self.start, self.stop = self.session.start, self.session.stop

    def log(self, fmt, *args):
        self.log_file.write("%s %s\n" % (now_iso(), fmt % args))
        self.log_file.flush()

    def _connected(self, up):
        self.published = {}  # republish the retained desired states after a reconnect
        self.wake.set()
        self.log("bridge %s", "connected" if up else "disconnected")

    def ack(self, cid, mid, status, etype=None, message=None, details=None, retryable=None):
        body = {"message_id": mid, "status": status}
        if etype:
            body["error"] = {"type": etype, "message": message, "details": details or {}}
        if retryable is not None:
            body["retryable"] = retryable
        self.session.publish(ack_topic(cid), body)
        self.log("ack %s %s %s%s", cid, mid, status, " %s %s" % (etype, details) if etype else "")

    def handle(self, topic, payload):
        """One publish on a route feed-data topic: validate, store, ack."""
        parts = topic.split("/")
        cid, rte = parts[4], parts[6]
        row = self.cloud.conn.execute("select id from device where client_id=?",
                                      (cid,)).fetchone()
        if row is None:
            self.log("drop: unknown device %s", cid)
            return
        device = row[0]
        if len(payload) > MAX_BODY:
            m = MID_RE.search(payload[:4096])
            if m is None:
                self.log("drop: %d bytes without a message_id on %s", len(payload), topic)
            else:
                self.ack(cid, m.group(1).decode(errors="replace"), "rejected",
                         "payload_too_large", "payload over %d bytes" % MAX_BODY)
            return
        try:
            item = json.loads(payload)
        except ValueError:
            item = None
        if not isinstance(item, dict) or not isinstance(item.get("message_id"), str):
            m = MID_RE.search(payload)
            if m is None:
                self.log("drop: no message_id in %d bytes on %s", len(payload), topic)
                return
            self.ack(cid, m.group(1).decode(errors="replace"), "rejected",
                     "validation_failed", "payload is not a JSON object")
            return
        mid = item["message_id"]
        if self.cloud.knobs.take("mqtt:ack-error"):
            self.ack(cid, mid, "error", "internal_error", "try again (fault knob)",
                     retryable=True)
            return
        route = self.cloud.known_routes(cid).get(rte)
        if route is None:
            self.ack(cid, mid, "rejected", "resource_not_found", "no such route")
            return
        kind, source = route
        key, other = ("sensor_id", "command_id") if kind == "sensor" else \
            ("command_id", "sensor_id")
        if source is None:  # a route of the documented shape: the payload names the source
            source = item.get(key)
        if other in item or source is None or item.get(key, source) != source:
            self.ack(cid, mid, "rejected", "validation_failed", "source does not match route",
                     {key: ["must be %s on this route" % source if source is not None else
                            "is required on a %s route" % kind]})
            return
        item[key] = source
        status, body = self.cloud.validate(device, item, transport="mqtt")
        if self.cloud.knobs.take("mqtt:mqtt-silent"):
            self.log("silent: no ack for %s (%s)", mid, ACK_STATUS[status])
            return
        if status in (200, 201):
            self.ack(cid, mid, ACK_STATUS[status])
        else:
            e = body["error"]
            self.ack(cid, mid, ACK_STATUS[status], e["type"], e["message"], e.get("details"))

    async def _control(self, fn, *args):
        try:
            await self.loop.run_in_executor(None, fn, *args)
        except Exception as e:  # a broker hiccup must not stop the loop
            self.log("dynsec %s failed: %s", fn.__name__, e)

    def run(self):
        return cloudkit.ticking(self.tick, 0.25, lambda e: self.log("tick failed: %r", e),
                                self.wake)

    async def tick(self):
        conn = self.cloud.conn
        if self.session.connected:
            for cmd_id, dev, value, did, dat, exp, seq in conn.execute(
                    "select id, device, value, desired_id, desired_at, expires_at, seq from "
                    "command where desired_id is not null").fetchall():
                mode = self.cloud.route_mode()
                if self.published.get((dev, cmd_id) + mode) != seq:
                    cid = self.cloud._client_id(dev)
                    self.session.publish(desired_topic(cid, cmd_id, *mode),
                                         {"command_id": cmd_id, "desired_id": did,
                                          "value": value, "seq": seq, "desired_at": dat,
                                          "expires_at": exp}, retain=True)
                    self.published[(dev, cmd_id) + mode] = seq
                    self.log("desired %s seq %s -> %s", cmd_id, seq, did)
        for (username,) in conn.execute("select username from mqtt_cred where removed=0 and "
                                        "expires < ?", (time.time(),)).fetchall():
            conn.execute("update mqtt_cred set removed=1 where username=?", (username,))
            self.log("credential %s expired: removed", username)
            await self._control(self.broker.remove_client, username)
        down = self.cloud.knobs.take("mqtt:broker-down")
        if down:
            # in this (the main) thread: the broker is bound to the thread that starts it
            self.log("broker-down: stopping the broker for %s s", down["seconds"])
            self.broker.stop()
            await asyncio.sleep(down["seconds"])
            self.broker.restart()
            self.log("broker-down: broker back on port %s", self.broker.tls_port)
        revoke = self.cloud.knobs.take("mqtt:revoke-credential")
        if revoke:
            self.cloud.knobs.set("mqtt:cred-503", {"count": 1})
            for (username,) in conn.execute("select username from mqtt_cred where removed=0"
                                            ).fetchall():
                conn.execute("update mqtt_cred set removed=1 where username=?", (username,))
                self.log("revoke-credential: deleting %s", username)
                await self._control(self.broker.remove_client, username)
        if self.cloud.knobs.take("mqtt:drop-mqtt"):
            for (username,) in conn.execute("select username from mqtt_cred where removed=0"
                                            ).fetchall():
                self.log("drop-mqtt: kicking %s", username)
                await self._control(self.broker.kick_client, username)


async def serve(data, port, token_ttl, broker=None, cred_ttl=600):
    pki = cloudkit.pki(data)
    secret = provision(data)
    cloud = Cloud(data, token_ttl, broker, cred_ttl)
    loops, on_stop = [], []
    if broker is not None:
        cloud.conn.execute("update mqtt_cred set removed=1")  # a new broker knows none of them
        cloud.bridge = MqttBridge(cloud, broker, asyncio.get_running_loop())
        cloud.bridge.start()
        loops, on_stop = [cloud.bridge.run()], [cloud.bridge.stop]

    def describe(port):
        info = {"api_url": "https://127.0.0.1:%d" % port, "ca_file": pki["ca"],
                "device_id": DEVICE_ID, "client_id": CLIENT_ID, "client_secret": secret}
        if broker is not None:
            info["mqtt_url"] = broker.tls_url
        return info, "realer cloud on https://127.0.0.1:%d (data %s)" % (port, data)

    await cloudkit.serve(data, pki, cloud.app(), port, describe, loops, on_stop)


def admin_call(data, what, body):
    with open(os.path.join(data, "cloud.json")) as f:
        info = json.load(f)
    ctx = ssl.create_default_context(cafile=info["ca_file"])
    req = urllib.request.Request(info["api_url"] + "/_admin/" + what, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        return json.load(r)


def _fault(a):
    admin_call(a.data, "fault", {"kind": a.kind, "count": a.count,
                                 "retry_after": a.retry_after, "seconds": a.seconds})


def main(argv=None):
    def run(a):
        return cloudkit.run(a.data, lambda broker: serve(a.data, a.port, a.token_ttl, broker,
                                                         a.mqtt_cred_ttl), broker=a.mqtt)

    me = sys.modules[__name__]
    ap, sub, s = cloudkit.cli("realer_cloud", "local Realer cloud (HTTPS)", 120, run)
    s.add_argument("--mqtt", action="store_true", help="also run a mosquitto broker (TLS)")
    s.add_argument("--mqtt-cred-ttl", type=int, default=600,
                   help="lifetime of an MQTT credential, seconds")
    d = cloudkit.command(sub, "set-desired", lambda a: operator_cli.realer_set_desired(
        me, a.data, a.command, a.value, a.ttl, a.wait))
    d.add_argument("command", type=int)
    d.add_argument("value")
    d.add_argument("--ttl", type=int)
    cloudkit.wait_option(d)
    cloudkit.rows_command(sub, "list-feed-data", feed_rows)
    cloudkit.show_command(sub, "show-device", device_state, operator_cli.realer_show)
    cloudkit.fault_command(sub, ("401", "429", "503", "slow") + MQTT_FAULTS, _fault, timing=True)
    return cloudkit.main(ap, argv)


if __name__ == "__main__":
    sys.exit(main())
