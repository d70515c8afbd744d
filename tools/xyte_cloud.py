"""A local Xyte cloud (HTTPS registration and hub, a real mosquitto, the server side on the
broker) for end-to-end tests and `make run PLATFORM=xyte`.

Implements what Xyte's device API describes (docs/xyte.md). State is one SQLite file
(DATA/cloud.db), so the operator CLI and tests can read and change it while the server runs.

HTTPS (aiohttp, TLS from tools/pki.py; one server plays both entry.xyte.io and the hub):
- POST /v1/devices {hardware_key, sn, firmware_version, mac | cloud_id, name?}: 200 {id,
  access_key, hub_url, hub_url_static_cert, mqtt_hub_url}. Unknown hardware_key: 403; a
  missing field: 422. A new registration for the same sn deletes the older device (its
  broker client too). The device becomes a mosquitto dynsec client: user name = client id =
  id, password = access_key, allowed to publish its own request topics and subscribe its own
  event topics (v1/device/ID/...).
- Hub calls need `Authorization: <access_key>` (no Bearer); a deleted device or a wrong key
  gets 401. GET .../config, POST .../dumps/:mime/:filename (stored), GET .../files/:file_id
  (the record set_file() stored, else a placeholder; each read is a `file` event). GET
  /bundles/NAME is recorded as a `bundle` event and answers 404 (OTA hand-off tests).
Chosen where the spec is silent: the `:mime` segment arrives URL-encoded (text%2Fplain).

Server side on the broker (paho, admin user, persistent session, no-local subscriptions):
every device publish must carry user properties device_id (= the topic's id) and access_key
(= the device's current key); otherwise it is logged as a violation and ignored.
- telemetry: stored once per telemetries.message_id (repeats counted as duplicates);
  EXTENSION: the document shows no message_id, the firmware adds one to each telemetry.
- commands/update (and command/update): the status history per command; done/error/failed
  are final (a later in_progress is logged, not applied). Each report's message_id is kept.
- config/update, license/update, update, cloud_settings/update: stored as reported.
- get: publishes space_info, config (Response Topic config/update), the oldest open command
  (Response Topic commands/update), every license (Response Topic license/update), and
  firmware when the device's version differs from the latest.
Operator changes (send-command, set-config, license, space, firmware) are published at once.

Fault knobs (`fault KIND [--count N]`): drop (kick the device's session), revoke (delete the
device: broker client gone, hub 401), garbage (publish malformed messages on every device
topic), register-fail (next N registrations answer 503). `--token-ttl S` (0: never): an
access key older than S seconds is revoked the same way (the device registers again).

    python -m tools.xyte_cloud serve --data DIR [--port N] [--token-ttl S]
    python -m tools.xyte_cloud send-command --data DIR NAME [--params JSON]
    python -m tools.xyte_cloud set-config --data DIR JSON
    python -m tools.xyte_cloud show --data DIR
    python -m tools.xyte_cloud fault --data DIR KIND [--count N]
"""
import asyncio
import json
import secrets
import sys
import time
import uuid

from aiohttp import web

from tools import cloudkit, operator_cli
from tools.cloudkit import now_iso

SCHEMA = """
create table if not exists device (id text primary key, access_key text, sn text, mac text,
    firmware_version text, name text, created real, deleted integer default 0);
create table if not exists telemetry (message_id text primary key, device text, status text,
    ts text, telemetries text, created real, dups integer default 0);
create table if not exists command (id text primary key, name text, parameters text,
    status text, message text, created real, history text, reports text,
    published integer default 0);
create table if not exists license (id text primary key, body text, state text,
    published integer default 0);
create table if not exists event (kind text, device text, body text, created real);
create table if not exists dump (device text, mime text, filename text, body blob,
    created real);
create table if not exists kv (name text primary key, value text);
"""
FINAL = ("done", "error", "failed")
SN = "SN-LOCAL-0001"
FAULTS = ("drop", "revoke", "garbage", "register-fail")
DEVICE_PUB = ("telemetry", "get", "update", "config/update", "commands/update",
              "command/update", "license/update", "cloud_settings/update")
DEVICE_SUB = ("config", "commands", "command", "license", "space_info", "firmware")


def db(data):
    return cloudkit.open_db(data, "cloud.db", SCHEMA)


def kv(data_or_conn):
    """The cloud's knobs and operator state (table kv), from DATA or a connection."""
    return cloudkit.Knobs(db(data_or_conn) if isinstance(data_or_conn, str) else data_or_conn,
                          "kv")


def kv_get(data_or_conn, name, default=None):
    return kv(data_or_conn).get(name, default)


def kv_set(data_or_conn, name, value):
    kv(data_or_conn).set(name, value)


# -- operator helpers (usable while the server runs) --------------------------------------

def send_command(data, name, parameters=None):
    cid = str(uuid.uuid4())
    db(data).execute("insert into command values (?,?,?,?,?,?,?,?,0)",
                     (cid, name, json.dumps(parameters or {}), "pending", None, time.time(),
                      "[]", "[]"))
    return cid


def set_config(data, fields):
    version = "v%d" % (int(time.time() * 1000))
    kv_set(data, "config", dict(fields, version=version, last_updated=now_iso()))
    kv_set(data, "config_published", False)
    return version


def put_license(data, lid, text, op="add"):
    body = {"id": lid, "data": text, "signature": "sig-" + lid, "add": op == "add",
            "update": op == "update", "remove": op == "remove"}
    db(data).execute("insert or replace into license values (?,?,?,0)",
                     (lid, json.dumps(body), None))


def set_space(data, info):
    kv_set(data, "space", info)
    kv_set(data, "space_published", False)


def set_firmware(data, version, file_id):
    kv_set(data, "firmware", {"latest_fw_version": version, "latest_fw_file_id": file_id})
    kv_set(data, "firmware_published", False)


def set_file(data, file_id, url, checksum):
    """The record GET .../files/FILE_ID answers (the firmware bundle's URL and SHA-256)."""
    kv_set(data, "file:" + file_id, {"url": url, "checksum": checksum})


def set_fault(data, kind, count=1):
    if kind not in FAULTS:
        raise ValueError("unknown fault %s" % kind)
    kv_set(data, "fault:" + kind, {"count": count})


def set_knob(data, name, value):
    kv_set(data, name, value)


def telemetry_rows(data):
    c = db(data)
    return [{"message_id": m, "device": d, "status": s, "timestamp": ts,
             "telemetries": json.loads(t), "dups": n}
            for m, d, s, ts, t, n in c.execute(
                "select message_id, device, status, ts, telemetries, dups from telemetry "
                "order by created")]


def commands(data):
    return [{"id": i, "name": n, "parameters": json.loads(p), "status": s, "message": m,
             "history": json.loads(h), "reports": json.loads(r)}
            for i, n, p, s, m, h, r in db(data).execute(
                "select id, name, parameters, status, message, history, reports from command "
                "order by created")]


def events(data, kind=None):
    q = "select kind, device, body from event" + (" where kind=?" if kind else "") + \
        " order by rowid"
    return [{"kind": k, "device": d, "body": json.loads(b)}
            for k, d, b in db(data).execute(q, (kind,) if kind else ())]


def devices(data):
    return [{"id": i, "sn": s, "firmware_version": f, "name": n, "deleted": bool(x)}
            for i, s, f, n, x in db(data).execute(
                "select id, sn, firmware_version, name, deleted from device order by created")]


def dumps(data):
    return [{"device": d, "mime": m, "filename": f, "body": b.decode(errors="replace")}
            for d, m, f, b in db(data).execute("select device, mime, filename, body from dump")]


def show(data):
    return {"devices": devices(data), "telemetry": len(telemetry_rows(data)),
            "duplicates": sum(r["dups"] for r in telemetry_rows(data)),
            "commands": commands(data), "licenses": licenses(data),
            "config": kv_get(data, "config"), "reported_config": kv_get(data, "reported_config"),
            "violations": len(events(data, "violation")), "dumps": len(dumps(data))}


def licenses(data):
    return [{"id": i, "body": json.loads(b), "state": s}
            for i, b, s in db(data).execute("select id, body, state from license")]


# -- the cloud -----------------------------------------------------------------------------

class Cloud:
    def __init__(self, data, token_ttl, broker, port_info):
        self.data = data
        self.conn = db(data)
        self.token_ttl = token_ttl
        self.broker = broker
        self.info = port_info  # filled once the HTTPS port is known
        self.bridge = None

    def event(self, kind, device, body):
        self.conn.execute("insert into event values (?,?,?,?)",
                          (kind, device, json.dumps(body), time.time()))

    def take(self, name):
        return kv(self.conn).take("fault:" + name)

    def live(self):
        row = self.conn.execute("select id, access_key, firmware_version from device where "
                                "deleted=0 order by created desc").fetchone()
        return row

    async def register(self, request):
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "body is not JSON"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "body is not an object"}, status=400)
        if self.take("register-fail"):
            return web.json_response({"error": "try later (fault knob)"}, status=503)
        if body.get("hardware_key") != kv_get(self.conn, "hardware_key"):
            return web.json_response({"error": "unknown hardware_key"}, status=403)
        missing = [k for k in ("sn", "firmware_version") if not body.get(k)]
        if not body.get("mac") and not body.get("cloud_id"):
            missing.append("mac")
        if missing:
            return web.json_response({"error": "missing " + ", ".join(missing)}, status=422)
        for (old,) in self.conn.execute("select id from device where sn=? and deleted=0",
                                        (body["sn"],)).fetchall():
            await self.delete(old, "registered again")
        dev = str(uuid.uuid4())
        key = "xak_" + secrets.token_urlsafe(24)
        p = "v1/device/%s/" % dev
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.broker.add_client(dev, key, client_id=dev,
                                                 publish=[p + t for t in DEVICE_PUB],
                                                 subscribe=[p + t for t in DEVICE_SUB]))
        self.conn.execute("insert into device values (?,?,?,?,?,?,?,0)",
                          (dev, key, body["sn"], body.get("mac") or body.get("cloud_id"),
                           body["firmware_version"], body.get("name"), time.time()))
        self.event("register", dev, {k: v for k, v in body.items() if k != "hardware_key"})
        hub = kv_get(self.conn, "hub_url", self.info["api_url"])
        return web.json_response({"id": dev, "access_key": key, "hub_url": hub,
                                  "hub_url_static_cert": hub,
                                  "mqtt_hub_url": kv_get(self.conn, "mqtt_hub_url",
                                                         self.info["mqtt_url"])})

    async def delete(self, dev, why):
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.broker.remove_client,
                                                             dev)
        except Exception as e:  # already gone from the broker
            self.event("delete-failed", dev, {"error": str(e)})
        self.conn.execute("update device set deleted=1 where id=?", (dev,))
        self.event("delete", dev, {"why": why})

    def _auth(self, request):
        dev = request.match_info["id"]
        row = self.conn.execute("select access_key from device where id=? and deleted=0",
                                (dev,)).fetchone()
        if row is None or request.headers.get("Authorization") != row[0]:
            raise web.HTTPUnauthorized(text=json.dumps({"error": "unauthorized"}),
                                       content_type="application/json")
        return dev

    async def get_config(self, request):
        self._auth(request)
        return web.json_response(kv_get(self.conn, "config", {}))

    async def get_file(self, request):
        dev = self._auth(request)
        file_id = request.match_info["file_id"]
        self.event("file", dev, file_id)
        fw = kv_get(self.conn, "firmware", {})
        rec = kv_get(self.conn, "file:" + file_id) or {"url": "https://127.0.0.1/none",
                                                       "checksum": "0" * 64}
        return web.json_response(dict(rec, signature="none",
                                      version=fw.get("latest_fw_version")))

    async def get_bundle(self, request):
        # a bundle URL a test put in a file record: the download is recorded, nothing served
        self.event("bundle", None, request.match_info["name"])
        return web.Response(status=404)

    async def post_dump(self, request):
        dev = self._auth(request)
        mime, _, filename = request.match_info["tail"].rpartition("/")
        body = await request.read()
        self.conn.execute("insert into dump values (?,?,?,?,?)",
                          (dev, mime, filename, body, time.time()))
        return web.json_response({"ok": True}, status=201)

    def app(self):
        app = web.Application(client_max_size=1 << 20)
        app.router.add_post("/v1/devices", self.register)
        app.router.add_get("/v1/devices/{id}/config", self.get_config)
        app.router.add_get("/v1/devices/{id}/files/{file_id}", self.get_file)
        app.router.add_post("/v1/devices/{id}/dumps/{tail:.+}", self.post_dump)
        app.router.add_get("/bundles/{name}", self.get_bundle)
        return app


class ServerSide:
    """The Xyte server on the broker: a paho admin session; every message is handed to the
    asyncio loop, where all database work happens."""

    def __init__(self, cloud, broker, loop):
        self.cloud, self.broker = cloud, broker
        self.session = cloudkit.BrokerSession(
            broker, "xyte-server", loop, ["v1/device/+/+", "v1/device/+/+/update"],
            self.handle, session_expiry=3600)
        self.start, self.stop = self.session.start, self.session.stop

    def publish(self, dev, leaf, body, response=None):
        self.session.publish("v1/device/%s/%s" % (dev, leaf), body, response_topic=response
                             and "v1/device/%s/%s" % (dev, response))

    def handle(self, m):
        parts = m.topic.split("/")
        dev, leaf = parts[2], "/".join(parts[3:])
        c = self.cloud
        if leaf not in DEVICE_PUB:
            return  # our own events (no-local should already keep them away)
        users = dict(getattr(m.properties, "UserProperty", None) or [])
        # deleted devices too: the broker enforces revocation, and a message it accepted
        # just before the device was deleted is still that device's
        row = c.conn.execute("select access_key from device where id=?", (dev,)).fetchone()
        if row is None or users.get("device_id") != dev or users.get("access_key") != row[0]:
            c.event("violation", dev, {"topic": m.topic, "why": "user properties missing or "
                                       "wrong" if row else "unknown device"})
            return
        try:
            body = json.loads(m.payload) if m.payload else {}
        except ValueError:
            c.event("violation", dev, {"topic": m.topic, "why": "not JSON"})
            return
        if not isinstance(body, dict):
            c.event("violation", dev, {"topic": m.topic, "why": "not an object"})
            return
        getattr(self, "on_" + leaf.replace("/", "_"))(dev, body)

    def on_telemetry(self, dev, body):
        tel = body.get("telemetries")
        mid = tel.get("message_id") if isinstance(tel, dict) else None
        if not isinstance(mid, str) or body.get("status") not in ("online", "offline", "error"):
            self.cloud.event("violation", dev, {"topic": "telemetry", "body": body})
            return
        cur = self.cloud.conn.execute("insert or ignore into telemetry values (?,?,?,?,?,?,0)",
                                      (mid, dev, body["status"], body.get("timestamp"),
                                       json.dumps(tel), time.time()))
        if cur.rowcount == 0:
            self.cloud.conn.execute("update telemetry set dups=dups+1 where message_id=?",
                                    (mid,))

    def on_commands_update(self, dev, body):
        c = self.cloud.conn
        row = c.execute("select status, history, reports from command where id=?",
                        (body.get("id"),)).fetchone()
        status = body.get("status")
        if row is None or status not in ("in_progress", "done", "error", "failed"):
            self.cloud.event("violation", dev, {"topic": "commands/update", "body": body})
            return
        history, reports = json.loads(row[1]), json.loads(row[2])
        mid = body.get("message_id")
        if mid is not None:
            if mid in reports:
                return  # a repeated report
            reports.append(mid)
        history.append(status)
        new = row[0] if row[0] in FINAL else status
        c.execute("update command set status=?, message=?, history=?, reports=? where id=?",
                  (new, body.get("message"), json.dumps(history), json.dumps(reports),
                   body["id"]))

    on_command_update = on_commands_update

    def on_config_update(self, dev, body):
        kv_set(self.cloud.conn, "reported_config", body)

    def on_license_update(self, dev, body):
        self.cloud.conn.execute("update license set state=? where id=?",
                                (body.get("state"), body.get("id")))

    def on_update(self, dev, body):
        self.cloud.conn.execute("update device set firmware_version=?, name=? where id=?",
                                (body.get("firmware_version"), body.get("name"), dev))
        self.cloud.event("update", dev, body)

    def on_cloud_settings_update(self, dev, body):
        self.cloud.event("cloud_settings", dev, body)

    def on_get(self, dev, body):
        c = self.cloud
        self.cloud.event("get", dev, body)
        self.publish(dev, "space_info", kv_get(c.conn, "space", {}))
        cfg = kv_get(c.conn, "config")
        if cfg:
            self.publish(dev, "config", cfg, "config/update")
        row = c.conn.execute("select id, name, parameters, status from command where status "
                             "in ('pending','in_progress') order by created").fetchone()
        if row:
            self.publish_command(dev, row)
        for (body_text,) in c.conn.execute("select body from license").fetchall():
            self.publish(dev, "license", body_text, "license/update")
        fw = kv_get(c.conn, "firmware")
        fwv = c.conn.execute("select firmware_version from device where id=?",
                             (dev,)).fetchone()
        if fw and fwv and fw["latest_fw_version"] != fwv[0]:
            self.publish(dev, "firmware", fw)

    def publish_command(self, dev, row):
        topic = kv_get(self.cloud.conn, "command_topic", "commands")
        self.publish(dev, topic, {"id": row[0], "name": row[1], "parameters": json.loads(row[2]),
                                  "status": "pending" if row[3] == "pending" else row[3]},
                     topic + "/update")

    def garbage(self, dev):
        for leaf in ("config", "commands", "license", "space_info", "firmware"):
            self.publish(dev, leaf, b"\xff{not json")
            self.publish(dev, leaf, "[1, 2, 3]" if leaf != "license" else "[7]")
            self.publish(dev, leaf, {"unexpected": True})
        self.publish(dev, "commands", {"id": 17, "status": "pending"})
        self.publish(dev, "config", {"enabled_sensors": "all"})

    async def tick(self):
        c = self.cloud
        live = c.live()
        if live and self.session.connected:
            dev = live[0]
            for row in c.conn.execute("select id, name, parameters, status from command where "
                                      "published=0").fetchall():
                self.publish_command(dev, row)
                c.conn.execute("update command set published=1 where id=?", (row[0],))
            for name, leaf, resp in (("config", "config", "config/update"),
                                     ("space", "space_info", None),
                                     ("firmware", "firmware", None)):
                if kv_get(c.conn, name) is not None and not kv_get(c.conn, name + "_published",
                                                                     True):
                    kv_set(c.conn, name + "_published", True)
                    self.publish(dev, leaf, kv_get(c.conn, name), resp)
            for lid, body in c.conn.execute("select id, body from license where "
                                            "published=0").fetchall():
                self.publish(dev, "license", body, "license/update")
                c.conn.execute("update license set published=1 where id=?", (lid,))
            if c.take("garbage"):
                self.garbage(dev)
        if live and c.take("drop"):
            await asyncio.get_running_loop().run_in_executor(None, self.broker.kick_client,
                                                             live[0])
        if live and c.take("revoke"):
            await c.delete(live[0], "revoked (fault knob)")
        if c.token_ttl:
            for (dev,) in c.conn.execute("select id from device where deleted=0 and "
                                         "created < ?", (time.time() - c.token_ttl,)
                                         ).fetchall():
                await c.delete(dev, "access key expired")

    def run(self):
        return cloudkit.ticking(self.tick, 0.2, lambda e: self.cloud.event(
            "tick-failed", None, {"error": repr(e)}))


def provision(data):
    c = db(data)
    if kv_get(c, "hardware_key") is None:
        kv_set(c, "hardware_key", "xhk_" + secrets.token_urlsafe(18))
        kv_set(c, "space", {"name": "Local lab", "temperature_units": "celsius",
                            "maintenance": False, "location": {"name": "Loopback",
                                                               "utc_offset": 0}})
    # the broker starts with a fresh dynsec state: devices registered before are gone
    c.execute("update device set deleted=1")
    return kv_get(c, "hardware_key")


async def serve(data, port, token_ttl, broker):
    pki = cloudkit.pki(data)
    hardware_key = provision(data)
    info = {"mqtt_url": broker.tls_url}
    cloud = Cloud(data, token_ttl, broker, info)
    side = cloud.bridge = ServerSide(cloud, broker, asyncio.get_running_loop())
    side.start()

    def describe(port):
        info["api_url"] = "https://127.0.0.1:%d" % port
        return cloud_json(info, pki, hardware_key), "xyte cloud on %s, broker %s (data %s)" % (
            info["api_url"], broker.tls_url, data)

    await cloudkit.serve(data, pki, cloud.app(), port, describe, [side.run()], [side.stop])


def cloud_json(info, pki, hardware_key):
    """What run_local and the tests read (info: the Cloud's, holding api_url and
    mqtt_url)."""
    info.update({"ca_file": pki["ca"], "hardware_key": hardware_key, "device_cloud": {
        "platform": "xyte", "registration_url": info["api_url"], "hardware_key": hardware_key,
        "serial_number": SN, "firmware_version": "1.0.0", "name": "local-xyte-demo",
        "command_topic": "commands", "ca_file": "ca.pem"},
        "hint": "try: .venv/bin/python -m tools.xyte_cloud send-command --data run/cloud "
                "set_4 --params '{\"value\": 42}'"})
    return info


def main(argv=None):
    me = sys.modules[__name__]
    ap, sub, _ = cloudkit.cli(
        "xyte_cloud", "local Xyte cloud (HTTPS + MQTT 5)", 0,
        lambda a: cloudkit.run(a.data, lambda broker: serve(a.data, a.port, a.token_ttl,
                                                            broker), broker=True),
        ttl_help="revoke access keys older than this many seconds (0: never)")
    sc = cloudkit.command(sub, "send-command", lambda a: operator_cli.xyte_send(
        me, a.data, a.name, json.loads(a.params), a.wait))
    sc.add_argument("name")
    sc.add_argument("--params", default="{}")
    cloudkit.wait_option(sc)
    cf = cloudkit.command(sub, "set-config", lambda a: operator_cli.xyte_set_config(
        me, a.data, json.loads(a.fields), a.wait))
    cf.add_argument("fields")
    cloudkit.wait_option(cf)
    cloudkit.show_command(sub, "show", show, operator_cli.xyte_show)
    cloudkit.fault_command(sub, FAULTS, lambda a: set_fault(a.data, a.kind, a.count))
    return cloudkit.main(ap, argv)


if __name__ == "__main__":
    sys.exit(main())
