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

The adapter is four small modules: this one (the object the app holds, and the uplink:
records to telemetry and command reports), firmware/clouds/xyte_reg.py (registration and
the hub's HTTPS), firmware/clouds/xyte_session.py (the MQTT session and answers) and
firmware/clouds/xyte_inbox.py (what arrives: config, commands, licenses, firmware).
"""
import asyncio
import json
from time import ticks_ms

from firmware import clock, log
from firmware.clouds import Adapter, SendResult
from firmware.clouds.xyte_inbox import Inbox, ring
from firmware.clouds.xyte_reg import Registration
from firmware.clouds.xyte_session import Session
from firmware.net import conn, mqtt

_TAG = "xyte"
_DEAD_CODES = (0x90, 0x95, 0x99)  # topic, size, payload format: never accepted
MQTT = "mqtt"


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


# the parts first: their members (token_due, authenticate, close...) override the contract's
# defaults; Adapter.__init__ is called by name (MicroPython's super() and several bases)
class Xyte(Registration, Session, Inbox, Adapter):
    def __init__(self, cfg, http_client=None, ticks=None, **hooks):
        Adapter.__init__(self, **hooks)  # on_desired, on_link_up, ota (the update command)
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
        self.ring = ring()
        self._load()

    async def poll_catalog(self, on_desired):
        return 60000  # everything arrives by subscription

    def background(self):
        return [("xyte", self.session)]

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
