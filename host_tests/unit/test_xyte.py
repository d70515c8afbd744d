"""The Xyte adapter's registration, message handling and record mapping (both runtimes); the
whole firmware against the local Xyte cloud and mosquitto is system/test_xyte_e2e.py."""
import json

from test_realer_https import FakeHttp, FakeResp

import support
from firmware import log
from firmware.clouds import xyte, xyte_inbox, xyte_reg, xyte_session
from firmware.net import conn, mqtt
from firmware.outbox import Record

DEV = "4f1c-dev"
KEY = "xak_secret_access_key_1"
REG = {"id": DEV, "access_key": KEY, "hub_url": "https://hub.example",
       "hub_url_static_cert": "https://hub2.example", "mqtt_hub_url": "hub.example:8883"}


class Cfg:
    ca_path = None

    def __init__(self, root, **extra):
        self.root = root
        self.cloud = dict({"platform": "xyte", "registration_url": "https://entry.example/",
                           "hardware_key": "hw-key-123456", "serial_number": "SN1",
                           "firmware_version": "1.0.0", "name": "lab", "mac": "aa:bb"},
                          **extra)

    def get(self, key, default=None):
        return {"cloud": self.cloud}.get(key, default)


def registered(**extra):
    root = support.tmpdir("xyte")
    made_for = xyte.Xyte(Cfg(root, **extra))._identity()
    support.write(root + "/xyte.json", json.dumps({"reg": dict(REG, **{"for": made_for})}))
    return xyte.Xyte(Cfg(root, **extra)), root


def message(leaf, body, props=None):
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return mqtt.Message("v1/device/%s/%s" % (DEV, leaf), payload, 1, False, False, 1,
                        props or {})


def sent(cloud):
    return [(t, json.loads(p), dict(props[mqtt.USER_PROPERTY])) for t, p, props in cloud._out]


def test_registration_is_kept_and_its_key_is_secret():
    root = support.tmpdir("xyte")
    http = FakeHttp([FakeResp(503, {"error": "later"}), FakeResp(200, REG)])
    lines: list = []
    log.set_sink(lines.append)
    try:
        now = [1000]
        cloud = xyte.Xyte(Cfg(root, register_retry_s=7), http, ticks=lambda: now[0])
        assert cloud.token_due()
        assert support.run(cloud.authenticate()) == 7000  # refused: again slowly
        assert cloud.token_due()
        now[0] += 7000
        assert support.run(cloud.authenticate()) == 0
        log.info("t", "key is %s", KEY)
    finally:
        log.set_sink(None)
    method, url, kw = http.calls[0]
    assert (method, url) == ("POST", "https://entry.example/v1/devices")
    assert kw["json"] == {"hardware_key": "hw-key-123456", "sn": "SN1",
                          "firmware_version": "1.0.0", "mac": "aa:bb", "name": "lab"}
    assert not cloud.token_due() and cloud.renewals == 1
    assert not [line for line in lines if KEY in line or "hw-key-123456" in line]
    again = xyte.Xyte(Cfg(root), FakeHttp([]))  # a reboot: no second registration
    assert again.reg["id"] == DEV and again.reg["access_key"] == KEY
    assert not again.token_due()
    assert support.run(again.authenticate()) == 0
    assert "hw-key-123456" not in open(root + "/xyte.json").read()
    # the config names another cloud: a new identity
    moved = xyte.Xyte(Cfg(root, registration_url="https://other.example"), FakeHttp([]))
    assert moved.token_due()
    support.rmtree(root)


def test_unreadable_state_file_means_register_again():
    root = support.tmpdir("xyte")
    support.write(root + "/xyte.json", "{not json")
    cloud = xyte.Xyte(Cfg(root))
    assert cloud.token_due()
    support.rmtree(root)


def test_hub_401_drops_the_registration():
    cloud, root = registered()
    cloud.http = FakeHttp([FakeResp(401, {"error": "unauthorized"})])
    err = None
    try:
        support.run(cloud.probe())
    except xyte_reg.Reregister as e:
        err = e
    assert err is not None and cloud.token_due()
    method, url, kw = cloud.http.calls[0]
    assert url == "https://hub.example/v1/devices/%s/config" % DEV
    assert kw["headers"]["Authorization"] == KEY  # no "Bearer"
    assert json.load(open(root + "/xyte.json"))["reg"] == {}
    support.rmtree(root)


def test_telemetry_and_command_reports_carry_the_message_id():
    cloud, root = registered()
    leaf, body = cloud.to_wire(Record("1-a", "sensor", 7, "21.5", 1777025700))
    assert leaf == "telemetry"
    assert body == {"status": "online", "timestamp": "2026-04-24T10:15:00Z",
                    "telemetries": {"sensor_7": 21.5, "message_id": "1-a"}}
    leaf, body = cloud.to_wire(Record("1-b", "command", 3, "1", 1777025700))
    assert body["telemetries"] == {"command_3": 1, "message_id": "1-b"}
    leaf, body = cloud.to_wire(Record("1-c", "command", 4, "55", 1777025700,
                                             desired_id="cmd-1", report_status="applied"))
    assert leaf == "commands/update"
    assert body == {"id": "cmd-1", "status": "done", "message": "value 55",
                    "message_id": "1-c"}
    leaf, body = cloud.to_wire(Record("1-d", "command", 4, "0", 1777025700,
                                             desired_id="cmd-2", report_status="rejected"))
    assert body["status"] == "error" and body["message"].startswith("rejected")
    assert [xyte._number(t) for t in ("3", "-2.5", "nan", "inf", "on", "true")] == [
        3, -2.5, "nan", "inf", "on", True]
    assert xyte_session.mqtt_url("hub.example") == "mqtts://hub.example:8883"
    assert xyte_session.mqtt_url("mqtts://h:1") == "mqtts://h:1"
    support.rmtree(root)


def test_config_applied_kept_and_acked_with_its_version():
    cloud, root = registered()
    rt = "v1/device/%s/config/reply" % DEV
    cloud._on_message(message("config", {"version": "v7", "enabled_sensors": [7],
                                         "colour": "blue"}, {mqtt.RESPONSE_TOPIC: rt}))
    assert cloud.enabled_sensors == {7}
    (topic, body, users), = sent(cloud)
    assert topic == rt and body["version"] == "v7" and body["colour"] == "blue"
    assert users == {"device_id": DEV, "access_key": KEY}
    cloud._out = []
    # a foreign response topic is not used; the spec's topic is
    cloud._on_message(message("config", {"version": "v8"},
                              {mqtt.RESPONSE_TOPIC: "v1/device/other/config/update"}))
    assert sent(cloud)[0][0] == "v1/device/%s/config/update" % DEV
    assert cloud.enabled_sensors is None
    reboot = xyte.Xyte(Cfg(root))
    assert reboot.config["version"] == "v8"
    support.rmtree(root)


def test_command_lifecycle_goes_through_the_desired_path():
    cloud, root = registered()
    seen: list = []
    cloud.on_desired = seen.append
    cloud._on_message(message("commands", {"id": "c-1", "status": "pending", "name": "set_4",
                                           "parameters": {"value": 42}}))
    cloud._on_message(message("commands", {"id": "c-2", "name": "x",
                                           "parameters": {"command": "3", "value": 1}}))
    assert seen == [{"id": 4, "desired_id": "c-1", "value": 42, "expires_at": None},
                    {"id": 3, "desired_id": "c-2", "value": 1, "expires_at": None}]
    assert [(t.rsplit("/", 2)[-2:], b["status"]) for t, b, _ in sent(cloud)] == [
        (["commands", "update"], "in_progress"), (["commands", "update"], "in_progress")]
    cloud._out = []
    cloud._on_message(message("commands", {"id": "c-3", "status": "pending",
                                           "name": "reboot_now"}))
    assert [b["status"] for _, b, _ in sent(cloud)] == ["in_progress", "error"]
    cloud._out = []
    cloud._on_message(message("commands", {"id": "c-3", "status": "pending",
                                           "name": "reboot_now"}))
    assert sent(cloud) == []  # handled before
    cloud._on_message(message("commands", {"id": "c-4", "status": "done", "name": "set_4"}))
    assert sent(cloud) == [] and len(seen) == 2
    support.rmtree(root)


def test_command_topic_is_configurable():
    cloud, root = registered(command_topic="command")
    seen: list = []
    cloud.on_desired = seen.append
    cloud._on_message(message("command", {"id": "c-9", "name": "4",
                                          "parameters": {"value": 5}}))
    assert seen[0]["id"] == 4 and sent(cloud)[0][0].endswith("/command/update")
    support.rmtree(root)


def test_licenses_one_or_many():
    cloud, root = registered()
    cloud._on_message(message("license", [
        {"id": "L1", "data": "lic", "signature": "s", "add": True},
        {"id": "L2", "remove": True}, {"id": "L3"}, "junk"]))
    assert [(b["id"], b["state"]) for _, b, _ in sent(cloud)] == [
        ("L1", "inuse"), ("L2", "removed"), ("L3", "error")]
    assert list(cloud.licenses) == ["L1"]
    support.rmtree(root)


def test_space_firmware_and_malformed_messages():
    cloud, root = registered()
    lines: list = []
    log.set_sink(lines.append)
    try:
        cloud._on_message(message("space_info", {"name": "Room", "temperature_units":
                                                 "fahrenheit"}))
        cloud._on_message(message("firmware", {"latest_fw_version": "1.2.0",
                                               "latest_fw_file_id": "f-1"}))
        for leaf, body in (("config", b"\xff{"), ("commands", [1]), ("commands", {"id": 5}),
                           ("config", {"no": "version"}), ("firmware", {}),
                           ("elsewhere", {"a": 1})):
            cloud._on_message(message(leaf, body))
    finally:
        log.set_sink(None)
    assert cloud.temperature_units == "fahrenheit"
    assert cloud.latest_fw == ("1.2.0", "f-1")
    assert sent(cloud) == []
    text = "\n".join(lines)
    for needle in ("not JSON", "not a JSON object", "command without id",
                   "config without version", "without latest_fw_version", "unexpected topic"):
        assert needle in text, needle
    support.rmtree(root)


def test_config_with_a_bad_log_level_is_a_logged_rejection():
    cloud, root = registered()
    lines: list = []
    log.set_sink(lines.append)
    try:
        for bad in ([], {"a": 1}, "loud", 3):  # a list once raised TypeError (unhashable)
            cloud._on_message(message("config", {"version": "v9", "log_level": bad,
                                                 "enabled_sensors": [7]}))
    finally:
        log.set_sink(None)
        log.set_level(log.INFO)
    assert cloud.enabled_sensors == {7}  # the rest of the config still applies
    assert "\n".join(lines).count("log_level must be") == 4, lines
    assert len(sent(cloud)) == 4  # each config acknowledged with its version
    support.rmtree(root)


class FakeClient:
    """Stands in for mqtt.Client.publish: answers per topic from a script."""

    connected = True

    def __init__(self, outcomes):
        self.outcomes = outcomes
        self.published: list = []

    async def disconnect(self):
        self.connected = False

    async def publish(self, topic, payload, qos=0, retain=False, props=None, wait=True):
        self.published.append((topic, json.loads(payload), props))
        out = self.outcomes.pop(0)
        if isinstance(out, Exception):
            raise out
        return out


def test_send_sorts_pubacks_into_ok_dead_and_kept():
    cloud, root = registered()
    recs = [Record("1-%d" % i, "sensor", 7, str(i), 1777025700) for i in range(4)]
    cloud.client = FakeClient([1, mqtt.PublishRejected("t", 0x99),
                               mqtt.PublishRejected("t", 0x97), conn.Closed("gone")])
    res = support.run(cloud.send(recs))
    assert res.ok == ["1-0"] and [m for m, _ in res.dead] == ["1-1"] and res.failed
    assert all(p[2][mqtt.USER_PROPERTY] == [("device_id", DEV), ("access_key", KEY)]
               for p in cloud.client.published)
    cloud.client = FakeClient([conn.Closed("gone")])
    assert isinstance(support.raises(conn.Closed, lambda: support.run(cloud.send(recs[:1]))),
                      conn.Closed)
    support.rmtree(root)


def test_ring_keeps_the_last_lines_in_order():
    ring = xyte_inbox.Ring(3)
    ring.prev = [].append
    for i in range(5):
        ring.add("line %d" % i)
    assert ring.text() == "line 2\nline 3\nline 4\n"


def test_command_target_forms():
    assert xyte_inbox.command_target({"name": "set_4", "parameters": {"value": 1}}) == (4, 1)
    assert xyte_inbox.command_target({"name": "7"}) == (7, None)
    assert xyte_inbox.command_target({"name": "x", "parameters": {"command": 3}}) == (3, None)
    assert xyte_inbox.command_target({"name": "send_dump"}) == (None, None)
    assert xyte_inbox.command_target({"parameters": "bad"}) == (None, None)


def test_close_says_offline_then_disconnects():
    cloud, root = registered()
    cloud.client = FakeClient([1])
    support.run(cloud.close())
    (topic, body, _), = cloud.client.published
    assert topic == "v1/device/%s/telemetry" % DEV and body["status"] == "offline"
    assert not cloud.client.connected
    support.run(cloud.close())  # closed already: nothing more
    assert len(cloud.client.published) == 1
    support.rmtree(root)


class RaisingHttp(FakeHttp):
    """FakeHttp whose script may hold an exception: that request raises it."""

    async def request(self, method, url, **kw):
        a = await super().request(method, url, **kw)
        if isinstance(a, Exception):
            raise a
        return a


class GateHttp(FakeHttp):
    """FakeHttp whose answers wait for `open` to be set: two callers can be inside at once."""

    def __init__(self, answers):
        super().__init__(answers)
        import asyncio

        self.open = asyncio.Event()

    async def request(self, method, url, **kw):
        self.calls.append((method, url, kw))
        await self.open.wait()
        a = self.answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a


def _two_callers(answer):
    """The auth task and the session ask for a registration at the same moment."""
    import asyncio

    async def main():
        root = support.tmpdir("xyte")
        http = GateHttp([answer, FakeResp(200, REG)])
        cloud = xyte.Xyte(Cfg(root, register_retry_s=90), http, ticks=lambda: 5000)
        t1 = asyncio.create_task(cloud.authenticate())
        t2 = asyncio.create_task(cloud.authenticate())
        for _ in range(5):
            await asyncio.sleep_ms(0)
        http.open.set()
        waits = (await t1, await t2)
        support.rmtree(root)
        return waits, len(http.calls), cloud

    return support.run(main())


def test_one_registrar_two_callers_make_one_post():
    (w1, w2), posts, cloud = _two_callers(FakeResp(429, {"error": "rate"},
                                                   {"retry-after": "40"}))
    assert posts == 1 and w1 == 90000 and w2 == 90000 and cloud.token_due()
    (w1, w2), posts, cloud = _two_callers(FakeResp(503, b"<html>busy</html>"))
    assert posts == 1 and w1 == w2 == 90000
    (w1, w2), posts, cloud = _two_callers(FakeResp(201, REG))
    assert posts == 1 and w1 == w2 == 0 and not cloud.token_due() and cloud.renewals == 1


def test_after_a_refusal_no_post_before_the_deadline_and_one_after_it():
    root = support.tmpdir("xyte")
    now = [1000]
    http = RaisingHttp([FakeResp(403, {"error": "bad hardware key"}),
                     FakeResp(500, b""),
                     FakeResp(429, {"error": "rate"}, {"retry-after": "2"}),
                     FakeResp(429, {"error": "rate"}, {"retry-after": "1200"}),
                     OSError(113),
                     FakeResp(201, REG)])
    cloud = xyte.Xyte(Cfg(root, register_retry_s=60), http, ticks=lambda: now[0])

    def attempt():
        before = len(http.calls)
        try:
            wait = support.run(cloud.authenticate())
        except OSError:
            wait = None
        return wait, len(http.calls) - before

    # (time step before the call, expected wait, expected POSTs)
    steps = [(0, 60000, 1),  # refused: a minute (register_retry_s)
             (59999, 1, 0),  # a millisecond early: nothing goes out
             (1, 120000, 1),  # due: one POST, refused again: the pause doubles
             (119999, 1, 0), (1, 240000, 1),  # a 429 with a short Retry-After: no shorter
             (240000, 1200000, 1),  # a 429's long Retry-After is honoured
             (1199999, 1, 0), (1, None, 1),  # no answer: the network error propagates
             (4999, 1, 0), (1, 0, 1)]  # 5 s later the registration goes through
    for step, want_wait, want_posts in steps:
        now[0] += step
        assert attempt() == (want_wait, want_posts), (now[0], want_wait, want_posts)
    assert not cloud.token_due() and cloud.renewals == 1
    assert attempt() == (0, 0)  # registered: nothing more to do
    support.rmtree(root)


def test_only_a_registration_object_registers():
    # Xyte's acceptance over HTTPS is the registration answer; records are PUBACKed on MQTT
    for answer in (FakeResp(200, b"<html><title>portal</title></html>"), FakeResp(200, b"[]"),
                   FakeResp(201, b""), FakeResp(200, {"id": DEV}),
                   FakeResp(200, {"id": DEV, "access_key": 7})):
        root = support.tmpdir("xyte")
        cloud = xyte.Xyte(Cfg(root), FakeHttp([answer]), ticks=lambda: 0)
        assert support.run(cloud.authenticate()) == 60000
        assert cloud.token_due() and cloud.renewals == 0
        support.rmtree(root)
