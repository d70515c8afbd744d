"""Xyte over MQTT 5 with HTTPS registration and dumps (Xyte's device API; docs/xyte.md).

Owns the device's Xyte identity and every Xyte message:

- Registration, once: `POST {registration_url}/v1/devices` with hardware_key, sn,
  firmware_version, mac (and name). `authenticate()` is the one registrar (the app's auth
  task and the session both ask it): one POST at a time, and after a refusal none before
  its deadline: `register_retry_s` (default 60), doubling per refusal in a row up to 15 min
  (the spec: retry slowly, minutes); a 429 waits at least its Retry-After and the plan's
  30 s rate window; a network error 5 s. Only a 200/201 JSON object with string `id` and
  `access_key` is a registration. `id`, `access_key` and the hub URLs are kept in
  `xyte.json` in the data root (write-temp-then-rename), with a digest of registration_url,
hardware_key and serial number (a config naming another cloud or device registers again);
access_key is a log secret. A 401 from
  the hub over HTTPS means the device was deleted: the registration is dropped and made again.
  When the broker refuses the credentials, an HTTPS probe (`GET .../config`) tells a deleted
  device (401: register again) from a broker hiccup (keep reconnecting).
- MQTT 5 session: client id = user name = device id, password = access key; every publish
  carries user properties `device_id` and `access_key`. Subscribed: config, commands (the
  topic name is `cloud.command_topic`, default the seed's "commands"), license, space_info,
  firmware. After every connect: `update` (firmware version, name), then `get` (snapshot).
- Answers (config/update, commands/update, license/update) go to the message's Response
  Topic when it names one of this device's topics, else to the topic the spec names.

Delivery (docs/xyte.md): Xyte has no application-level ack for telemetry. A record counts as
delivered when the broker's PUBACK for its QoS 1 PUBLISH arrived (the Xyte server side holds a
persistent session, so the broker keeps it for the server). Every record carries its outbox
message_id (telemetry: in `telemetries.message_id`; command reports: in the message), and a
record without a PUBACK is published again with the same id: at-least-once, the server
de-duplicates by message_id.

Commands: a pending command is answered `in_progress` at once; a command for an actuator
(`parameters.command` = command id, or name `set_<id>` / `<id>`, value in `parameters.value`)
goes to the app's desired-state path (applied once, persisted), whose report record becomes
`done` (applied) or `error` (rejected / stale) with a message. `send_dump` uploads the recent
log over HTTPS; `update_firmware` {url, version} starts the OTA updater (`error` without one
or without an https url). Other names: `error`.

Config: known keys are applied (`enabled_sensors`: list of sensor ids the sampler reads,
`log_level`: debug|info|warn|error), every field is kept, and the config is echoed on
config/update with its version. Licenses: add/update -> `inuse`, remove -> `removed`, bad ->
`error`; one object or a list. Space info is kept (`space`, `temperature_units`).
"""
import asyncio
import json
from time import ticks_add, ticks_diff, ticks_ms

from micropython import const

from firmware import clock, log, statefile
from firmware.clouds import SendResult, answer_json, shape
from firmware.clouds.base import Adapter
from firmware.config_types import join
from firmware.net import conn, mqtt

_TAG = "xyte"
_FILE = "xyte.json"
_RING = const(24)  # recent log lines kept for a dump (~3 KB of strings)
_RENEW_CHECK_MS = const(60000)  # the app's auth task looks again this often
_RECHECK_MS = const(1000)
_MAX_DONE = const(8)
_DEAD_CODES = (0x90, 0x95, 0x99)  # topic, size, payload format: never accepted
_REG_RATE_MS = const(30000)  # a 429 means the plan's rate per 30 s was exceeded
_REG_NET_MS = const(5000)  # registration did not reach the cloud: try again soon
_REG_CAP_MS = const(900000)  # refusals in a row double the pause up to 15 min
MQTT = "mqtt"
_ring: list = [None]


class XyteError(conn.NetError):
    """Registration or an HTTPS call to the hub failed."""


class Reregister(XyteError):
    """The hub answered 401: this device was deleted; it registers again."""


class Ring:
    """The last `n` log lines (already redacted) for Send Dump; wraps the log sink."""

    def __init__(self, n=_RING):
        self.lines: list = [None] * n
        self.pos = 0
        self.prev = None

    def install(self):
        self.prev = log._sink[0]  # log.py has no getter; see docs/xyte.md
        log.set_sink(self.add)

    def add(self, line):
        self.lines[self.pos] = line
        self.pos = (self.pos + 1) % len(self.lines)
        if self.prev is None:
            print(line)
        else:
            self.prev(line)

    def text(self):
        n = len(self.lines)
        return "\n".join(x for x in (self.lines[(self.pos + i) % n] for i in range(n))
                         if x is not None) + "\n"


def _number(text):
    """A reading's text as a JSON number when it is one (telemetry fields are typed)."""
    for conv in (int, float):
        try:
            n = conv(text)
        except (TypeError, ValueError):
            continue
        if n - n == 0:  # nan and inf are not JSON: they stay text
            return n
    if text in ("true", "false"):
        return text == "true"
    return text


def mqtt_url(url):
    """mqtt_hub_url may come with or without a scheme (then mqtts on 8883)."""
    if "://" not in url:
        return "mqtts://" + url + ("" if ":" in url else ":8883")
    return url


def command_target(cmd):
    """(actuator command id, value) for an actuator command, else (None, None)."""
    params = cmd.get("parameters")
    params = params if isinstance(params, dict) else {}
    name = cmd.get("name")
    target = params.get("command")
    if target is None and isinstance(name, str):
        digits = name[4:] if name.startswith("set_") else name
        if digits.isdigit():
            target = int(digits)
    if isinstance(target, str) and target.isdigit():
        target = int(target)
    if not isinstance(target, int) or isinstance(target, bool):
        return None, None
    return target, params.get("value")


class Xyte(Adapter):
    def __init__(self, cfg, http_client=None, ticks=None, **hooks):
        super().__init__(**hooks)  # on_desired, on_link_up, ota (the update command)
        cloud = cfg.get("cloud", {})
        self.root = cfg.root if hasattr(cfg, "root") else ""
        self.ca_file = cfg.ca_path
        self.reg_url = cloud.get("registration_url", "https://entry.xyte.io").rstrip("/")
        self.hardware_key = cloud.get("hardware_key", "")
        log.secret(self.hardware_key)
        self.sn = cloud.get("serial_number", "")
        self.fw_version = cloud.get("firmware_version", "")
        self.name = cloud.get("name")
        self.mac = cloud.get("mac")
        self.cmd_topic = cloud.get("command_topic", "commands")
        self.batch_max = int(cloud.get("batch_max", 10))
        self.retry_ms = int(cloud.get("register_retry_s", 60) * 1000)
        self.http = http_client
        self.mode = MQTT
        self.credentials = 0  # broker sessions opened (the status line's count)
        self.renewals = 0  # registrations made
        self.renew_at = None
        self.status = "online"  # telemetry status; the app may set "error"
        self.reg: dict = {}  # {id, access_key, hub_url, hub_url_static_cert, mqtt_hub_url}
        self.config: dict = {}
        self.licenses: dict = {}
        self.space: dict = {}
        self.done: list = []  # handled non-actuator command ids (send_dump, ...)
        self.latest_fw = None
        self.enabled_sensors = None
        self.client = None
        self.generation = 0  # bumped by every (re)registration: the session starts over
        self._out: list = []  # (topic, body, props) answers waiting for the session
        self._out_lock = asyncio.Lock()
        self._reg_lock = asyncio.Lock()
        self._ticks = ticks or ticks_ms  # injectable monotonic clock (tests)
        self._reg_at = None  # ticks before which no registration is attempted
        self._refusals = 0  # registration refusals in a row
        self._jobs: list = []  # coroutines run by the session task (dumps)
        self._wake = asyncio.Event()
        if _ring[0] is None:  # one per process: every adapter object shares it
            ring = Ring()
            ring.install()
            _ring[0] = ring
        self.ring = _ring[0]
        self._load()

    # -- persisted state ----------------------------------------------------------------

    def _path(self):
        return join(self.root, _FILE)

    def _load(self):
        try:
            with open(self._path()) as f:
                data = json.load(f)
        except OSError:
            return
        except ValueError as e:
            log.warn(_TAG, "%s unreadable (%s): registering again", _FILE, log.describe(e))
            return
        if not isinstance(data, dict):
            return
        reg = data.get("reg")
        if isinstance(reg, dict) and isinstance(reg.get("id"), str) and \
                isinstance(reg.get("access_key"), str):
            if reg.get("for") == self._identity():
                self._use(reg)
            else:  # the config now names another cloud or device: a new identity
                log.info(_TAG, "registration_url, hardware key or serial number changed: "
                               "registering again")
        for name in ("config", "licenses", "space"):
            if isinstance(data.get(name), dict):
                setattr(self, name, data[name])
        if isinstance(data.get("done"), list):
            self.done = data["done"]
        self._apply_config(self.config)

    def _identity(self):
        # what the registration was made for; kept as a digest, the hardware key is secret
        import hashlib

        raw = "%s|%s|%s" % (self.reg_url, self.hardware_key, self.sn)
        return "".join("%02x" % b for b in hashlib.sha256(raw.encode()).digest()[:8])

    def _save(self):
        statefile.write_json(self._path(), {"reg": self.reg, "config": self.config,
                                            "licenses": self.licenses, "space": self.space,
                                            "done": self.done})

    def _use(self, reg):
        log.secret(reg["access_key"])
        self.reg = reg
        self.renew_at = clock.Deadline(_RENEW_CHECK_MS)
        self.generation += 1

    # -- what the app uses --------------------------------------------------------------

    def token_due(self):
        return not self.reg

    def _http(self):
        if self.http is None:
            from firmware.net import http

            self.http = http.Client(ca_file=self.ca_file)
        return self.http

    async def authenticate(self, force=False):
        """The one registrar (only when no registration is kept). Returns the wait before
        the next try: 0 after success, else what is left of the pause a refusal set. At
        most one POST is in flight, and none goes out before that pause ends, whichever
        task asks."""
        async with self._reg_lock:  # the auth and session tasks may both ask
            if self.reg and not force:
                return 0
            left = self._reg_wait_ms()
            if left:
                return left
            try:
                wait = await self._register()
            except Exception:  # no answer: the caller logs it; a short pause all the same
                self._reg_at = ticks_add(self._ticks(), _REG_NET_MS)
                raise
            self._reg_at = ticks_add(self._ticks(), wait) if wait else None
            return wait

    def _reg_wait_ms(self):
        if self._reg_at is None:
            return 0
        left = ticks_diff(self._reg_at, self._ticks())
        if left <= 0:
            self._reg_at = None
            return 0
        return left

    async def _register(self):
        body = {"hardware_key": self.hardware_key, "sn": self.sn,
                "firmware_version": self.fw_version, "mac": self.mac or _mac()}
        if self.name:
            body["name"] = self.name
        resp = await self._http().request("POST", self.reg_url + "/v1/devices", json=body)
        data = answer_json(resp)
        if resp.status not in (200, 201) or not isinstance(data, dict) or \
                not isinstance(data.get("id"), str) or not isinstance(data.get("access_key"),
                                                                       str):
            self._refusals += 1
            wait = min(_REG_CAP_MS, self.retry_ms << min(self._refusals - 1, 4))
            if resp.status == 429:
                wait = max(wait, _REG_RATE_MS, resp.retry_after_ms() or 0)
            log.warn(_TAG, "registration answered %d with %s; again in %d s", resp.status,
                     shape(resp.body, data), wait // 1000)
            return wait
        self._refusals = 0
        reg = {k: data.get(k) for k in ("id", "access_key", "hub_url", "hub_url_static_cert",
                                        "mqtt_hub_url")}
        reg["for"] = self._identity()
        log.secret(reg["access_key"])
        old, self.reg = self.reg, {}
        self._use(reg)
        self._save()
        if old:
            log.forget(old["access_key"])
        self.renewals += 1
        log.info(_TAG, "registered as %s (hub %s, broker %s)", reg["id"], reg["hub_url"],
                 reg["mqtt_hub_url"])
        return 0

    def forget_registration(self, why):
        log.warn(_TAG, "%s: the device registers again", why)
        self.reg = {}
        self._out = []  # answers addressed to the deleted id
        self.generation += 1
        try:
            self._save()
        except OSError as e:
            log.warn(_TAG, "%s not written: %s", _FILE, log.describe(e))

    async def poll_catalog(self, on_desired):
        return 60000  # everything arrives by subscription

    def background(self):
        return [("xyte", self.session)]

    # -- topics and publishing ----------------------------------------------------------

    def topic(self, leaf):
        return "v1/device/%s/%s" % (self.reg["id"], leaf)

    def props(self):
        return {mqtt.USER_PROPERTY: [("device_id", self.reg["id"]),
                                     ("access_key", self.reg["access_key"])]}

    def answer(self, leaf, body, msg=None):
        """Queue an answer for the session task (never published from the reader: a full
        window would wait for PUBACKs the reader itself must read)."""
        topic = self.topic(leaf)
        if msg is not None:
            rt = msg.props.get(mqtt.RESPONSE_TOPIC)
            if isinstance(rt, str) and rt.startswith(self.topic("")) and \
                    "+" not in rt and "#" not in rt:
                topic = rt
        props = self.props()
        if msg is not None and mqtt.CORRELATION_DATA in msg.props:
            props[mqtt.CORRELATION_DATA] = msg.props[mqtt.CORRELATION_DATA]
        self._out.append((topic, json.dumps(body), props))
        self._wake.set()

    async def _flush_out(self):
        async with self._out_lock:
            while self._out and self.client is not None and self.client.connected:
                topic, payload, props = self._out[0]
                await self.client.publish(topic, payload, 1, props=props, wait=False)
                self._out.pop(0)

    def set_cloud_setting(self, prop, value):
        """Set Cloud Settings (cloud_settings/update); sent when the session is up."""
        if self.reg:
            self.answer("cloud_settings/update", {"property": prop, "value": value})

    def firmware_available(self, version, file_id):
        """Hand-off point for OTA: Xyte says `version` (file `file_id`) is the latest. With an
        updater (`self.ota`, given by the app when config `ota` has a public key) the file's
        record is read from the hub and its bundle URL and SHA-256 go to the updater, which
        verifies the Ed25519-signed bundle itself; without one it is only logged."""
        self.latest_fw = (version, file_id)
        if version == self.fw_version:
            log.info(_TAG, "firmware %s is the latest", version)
            return
        log.info(_TAG, "firmware %s available (file %s); running %s", version, file_id,
                 self.fw_version)
        if self.ota is not None and file_id:
            asyncio.create_task(self._fetch_firmware(version, file_id))

    async def _fetch_firmware(self, version, file_id):
        updater = self.ota
        if updater is None:
            return
        try:
            resp = await self._hub("GET", "files/%s" % file_id)
            info = resp.json() if resp.status == 200 else None
            if not isinstance(info, dict):
                info = {}
            url = info.get("url")
            if not isinstance(url, str) or not url.startswith("https://"):
                log.warn(_TAG, "firmware %s: file %s answered %d without an https url",
                         version, file_id, resp.status)
                return
            checksum = info.get("checksum")
            updater.start(url, version, checksum if isinstance(checksum, str) and
                          len(checksum) == 64 else None)
        except Exception as e:  # the next firmware message tries again
            log.warn(_TAG, "firmware %s: %s", version, log.describe(e))

    async def close(self, status="offline"):
        """Say `status` (offline before deep sleep or a planned stop) in a telemetry message
        without readings, then end the broker session. Best effort: never raises."""
        client = self.client
        if not self.reg or client is None or not client.connected:
            return
        try:
            body = {"status": status, "timestamp": clock.iso8601(),
                    "telemetries": {"message_id": "status-%d" % clock.unix_time()}}
            await client.publish(self.topic("telemetry"), json.dumps(body), 1,
                                 props=self.props())
            await client.disconnect()
        except Exception as e:  # the broker learns it from the closed session anyway
            log.info(_TAG, "close: %s", log.describe(e))

    # -- the session ---------------------------------------------------------------------

    async def session(self):
        """Background task: one broker session per registration, answers and jobs sent."""
        while True:
            if not self.reg:  # deleted while running: the auth task may sleep for long
                try:
                    wait = await self.authenticate()
                except Exception as e:  # tried again after the registrar's pause
                    log.warn(_TAG, "registration: %s", log.describe(e))
                    wait = self._reg_wait_ms()
                await asyncio.sleep_ms(wait or _RECHECK_MS)
                continue
            gen = self.generation
            self.client = mqtt.Client(mqtt_url(self.reg.get("mqtt_hub_url") or ""),
                                      self.reg["id"], ca_file=self.ca_file, keepalive_s=60,
                                      on_message=self._on_message)
            for leaf in ("config", self.cmd_topic, "license", "space_info", "firmware"):
                self.client.subscriptions[self.topic(leaf)] = 1
            runner = asyncio.create_task(self.client.run(prepare=self._prepare,
                                                         on_connect=self._connected))
            try:
                while gen == self.generation:
                    await self._work()
            finally:
                runner.cancel()
                await self.client.disconnect()
                self.client = None

    async def _work(self):
        try:
            await asyncio.wait_for(self._wake.wait(), _RECHECK_MS / 1000)
        except asyncio.TimeoutError:
            pass
        self._wake.clear()
        try:
            await self._flush_out()
            while self._jobs:
                await self._jobs.pop(0)
        except Exception as e:  # kept for the next round; the session reports its end
            log.warn(_TAG, "answers: %s", log.describe(e))

    async def _prepare(self, client):
        if not self.reg:
            raise XyteError("not registered")
        if isinstance(client.error, mqtt.CredentialsRefused):
            await self.probe()
        client.client_id = client.username = self.reg["id"]
        client.password = self.reg["access_key"]

    async def probe(self):
        """After the broker refused the access key: a 401 from the hub means the device is
        gone (register again), anything else is the broker's problem (keep trying)."""
        resp = await self._hub("GET", "config")
        log.info(_TAG, "access key refused by the broker; hub answers %d", resp.status)

    async def _hub(self, method, path, body=None, headers=None):
        h = {"Authorization": self.reg["access_key"]}
        h.update(headers or {})
        url = "%s/v1/devices/%s/%s" % ((self.reg.get("hub_url") or "").rstrip("/"),
                                       self.reg["id"], path)
        resp = await self._http().request(method, url, headers=h, body=body)
        if resp.status == 401:
            self.forget_registration("hub answered 401 to %s %s" % (method, path))
            raise Reregister("device deleted")
        return resp

    async def _connected(self, client):
        self.credentials += 1
        self.answer("update", {"firmware_version": self.fw_version,
                               "name": self.name or self.sn})
        self.answer("get", {})
        await self._flush_out()
        if self.on_link_up is not None:
            self.on_link_up(client.connects == 1)

    # -- incoming ------------------------------------------------------------------------

    def _on_message(self, msg):
        if not self.reg:
            return
        leaf = msg.topic[len(self.topic("")):] if msg.topic.startswith(self.topic("")) \
            else None
        try:
            body = json.loads(msg.payload)
        except ValueError:
            log.warn(_TAG, "not JSON on %s; ignored", msg.topic)
            return
        if leaf == "license" and isinstance(body, list):
            for item in body:
                self._license(item, msg)
            return
        if not isinstance(body, dict):
            log.warn(_TAG, "not a JSON object on %s; ignored", msg.topic)
        elif leaf == "config":
            self._config(body, msg)
        elif leaf == self.cmd_topic:
            self._command(body, msg)
        elif leaf == "license":
            self._license(body, msg)
        elif leaf == "space_info":
            self.space = body
            log.info(_TAG, "space %s, temperature in %s", body.get("name"),
                     self.temperature_units)
            self._save_quietly()
        elif leaf == "firmware":
            version, file_id = body.get("latest_fw_version"), body.get("latest_fw_file_id")
            if not isinstance(version, str):
                log.warn(_TAG, "firmware message without latest_fw_version; ignored")
            else:
                self.firmware_available(version, file_id)
        else:
            log.warn(_TAG, "message on unexpected topic %s ignored", msg.topic)

    @property
    def temperature_units(self):
        return self.space.get("temperature_units", "celsius")

    def _save_quietly(self):
        try:
            self._save()
        except OSError as e:
            log.warn(_TAG, "%s not written: %s", _FILE, log.describe(e))

    def _apply_config(self, body):
        sensors = body.get("enabled_sensors")
        if isinstance(sensors, list) and all(isinstance(s, int) for s in sensors):
            self.enabled_sensors = set(sensors)
        elif sensors is None:
            self.enabled_sensors = None
        else:
            log.warn(_TAG, "config enabled_sensors must be a list of sensor ids; ignored")
        level = {"debug": log.DEBUG, "info": log.INFO, "warn": log.WARN,
                 "error": log.ERROR}.get(body.get("log_level"))
        if level is not None:
            log.set_level(level)

    def _config(self, body, msg):
        if body.get("version") is None:
            log.warn(_TAG, "config without version ignored")
            return
        self._apply_config(body)
        self.config = body
        self._save_quietly()
        log.info(_TAG, "config version %s applied", body["version"])
        self.answer("config/update", body, msg)

    def _command(self, body, msg):
        cid = body.get("id")
        if not isinstance(cid, str) or not cid:
            log.warn(_TAG, "command without id ignored")
            return
        status = body.get("status")
        if status not in (None, "pending", "in_progress"):
            log.info(_TAG, "command %s is %s already; nothing to do", cid, status)
            return
        update = self.cmd_topic + "/update"
        target, value = command_target(body)
        name = body.get("name")
        if target is not None:
            self.answer(update, {"id": cid, "status": "in_progress", "message": "applying"},
                        msg)
            if self.on_desired is not None:
                self.on_desired({"id": target, "desired_id": cid, "value": value,
                                 "expires_at": None})
            return
        if cid in self.done:
            log.info(_TAG, "command %s handled before; nothing to do", cid)
            return
        self.answer(update, {"id": cid, "status": "in_progress", "message": "working"}, msg)
        self._remember(cid)
        if name == "send_dump":
            self._jobs.append(self._dump(cid, update))
        elif name == "update_firmware":
            params = body.get("parameters") if isinstance(body.get("parameters"), dict) else {}
            status, text = self._update_command(params)
            self.answer(update, {"id": cid, "status": status, "message": text}, msg)
        else:
            log.warn(_TAG, "command %s: unknown name %r", cid, name)
            self.answer(update, {"id": cid, "status": "error",
                                 "message": "unknown command %s" % name}, msg)

    # update_firmware carries {url, version} (Xyte's MQTT events page); the bundle's own signature
    # decides, so no checksum is needed. -> (final status, message) for commands/update.
    def _update_command(self, params):
        version = params.get("version") if isinstance(params.get("version"), str) else None
        url, file_id = params.get("url"), params.get("file_id")
        if self.ota is None:
            self.firmware_available(version, file_id)
            return "error", "OTA is off on this device (no ota.public_key); version noted"
        if isinstance(url, str) and url.startswith("https://"):
            if self.ota.start(url, version):
                return "done", "update to %s started" % version
            return "error", "update to %s not started; see the device log" % version
        if version and file_id:
            self.firmware_available(version, file_id)
            return "done", "file %s goes to the updater" % file_id
        return "error", "update_firmware needs an https url"

    def _remember(self, cid):
        self.done.append(cid)
        self.done = self.done[-_MAX_DONE:]
        self._save_quietly()

    async def _dump(self, cid, update):
        try:
            resp = await self._hub("POST", "dumps/text%2Fplain/device.log",
                                   self.ring.text().encode(), {"Content-Type": "text/plain"})
            ok = resp.status in (200, 201, 204)
            self.answer(update, {"id": cid, "status": "done" if ok else "error",
                                 "message": "dump uploaded" if ok else
                                 "dump answered %d" % resp.status})
        except Exception as e:  # a failed upload is reported, never fatal
            self.answer(update, {"id": cid, "status": "error",
                                 "message": "dump failed: %s" % log.describe(e)})

    def _license(self, body, msg):
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            log.warn(_TAG, "license without id ignored")
            return
        lid = body["id"]
        if body.get("remove"):
            self.licenses.pop(lid, None)
            state = "removed"
        elif (body.get("add") or body.get("update")) and isinstance(body.get("data"), str):
            self.licenses[lid] = {"data": body["data"], "signature": body.get("signature")}
            state = "inuse"
        else:
            state = "error"
        reply = {"id": lid, "state": state}
        if state == "error":
            reply["error"] = "license without data or operation"
        log.info(_TAG, "license %s: %s", lid, state)
        self._save_quietly()
        self.answer("license/update", reply, msg)

    # -- outgoing records ----------------------------------------------------------------

    def to_wire(self, rec):
        """(topic leaf, body) for one outbox record."""
        if rec.kind == "command" and rec.desired_id is not None:
            ok = rec.report_status in (None, "applied")
            text = "value %s" % rec.value
            if not ok:
                text = "%s, %s" % (rec.report_status, text)
            return self.cmd_topic + "/update", {
                "id": rec.desired_id, "status": "done" if ok else "error", "message": text,
                "message_id": rec.message_id}
        key = ("sensor_%s" if rec.kind == "sensor" else "command_%s") % rec.source
        return "telemetry", {"status": self.status, "timestamp": clock.iso8601(rec.t),
                             "telemetries": {key: _number(rec.value),
                                             "message_id": rec.message_id}}

    async def send(self, records):
        client = self.client
        if not self.reg or client is None or not client.connected:
            raise mqtt.NotConnected("no broker session yet")
        await self._flush_out()  # in_progress before done
        result = SendResult()
        tasks = []
        for rec in records:
            leaf, body = self.to_wire(rec)
            tasks.append(client.publish(self.topic(leaf), json.dumps(body), 1,
                                        props=self.props()))
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        net = None
        for rec, out in zip(records, outcomes):
            if not isinstance(out, BaseException):
                result.ok.append(rec.message_id)
            elif isinstance(out, mqtt.PacketTooLarge) or (
                    isinstance(out, mqtt.PublishRejected) and _code(out) in _DEAD_CODES):
                result.dead.append((rec.message_id, log.describe(out)))
            elif isinstance(out, conn.NetError) and not isinstance(out,
                                                                   mqtt.PublishRejected):
                net = out
            else:
                log.warn(_TAG, "record %s kept: %s", rec.message_id, log.describe(out))
                result.failed = True
        if net is not None:
            if not result.ok and not result.dead:
                raise net
            result.failed = True
        return result


def _code(e):
    code = getattr(e, "code", None)
    return code if isinstance(code, int) else -1


def _mac():
    try:
        import network

        raw = network.WLAN(network.STA_IF).config("mac")
        return ":".join("%02x" % b for b in raw)
    except Exception:  # no radio (host): a fixed placeholder; config `mac` overrides
        return "00:00:00:00:00:00"
