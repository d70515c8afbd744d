"""The local Xyte cloud (tools/xyte_cloud.py) on its own, driven by paho as a device: HTTPS
registration, per-device broker ACLs, user properties checked on every publish, telemetry
de-duplicated by message_id, the snapshot on `get`, the command lifecycle, revocation (broker
client gone, hub 401) and dumps."""
import json
import os
import signal
import ssl
import urllib.error
import urllib.request

import pytest
from rig import wait_for

from tools import run_local, xyte_cloud
from tools.mosquitto import SyncClient


@pytest.fixture
def cloud(tmp_path):
    data = str(tmp_path / "cloud")
    proc, info = run_local.start_cloud(data, token_ttl=0, platform="xyte")
    info["data"] = data
    yield info
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except Exception:
        proc.kill()


def https(info, method, path, body=None, headers=None):
    ctx = ssl.create_default_context(cafile=info["ca_file"])
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(info["api_url"] + path, data, method=method,
                                 headers=dict({"Content-Type": "application/json"},
                                              **(headers or {})))
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, None


def register(info):
    status, reg = https(info, "POST", "/v1/devices", {
        "hardware_key": info["hardware_key"], "sn": "SN-T", "firmware_version": "0.9",
        "mac": "aa:bb:cc:dd:ee:ff"})
    assert status == 200, status
    return reg


def device(info, reg):
    host, port = reg["mqtt_hub_url"].split("//")[1].split(":")
    c = SyncClient(host, int(port), reg["id"], reg["access_key"], client_id=reg["id"],
                   ca=info["ca_file"])
    assert c.connect().value == 0
    return c


def publish(c, reg, leaf, body, users=None, dev=None):
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = users if users is not None else [("device_id", reg["id"]),
                                                          ("access_key", reg["access_key"])]
    info = c.c.publish("v1/device/%s/%s" % (dev or reg["id"], leaf), json.dumps(body), qos=1,
                       properties=props)
    return c._wait(info.mid)


def test_registration_validates_and_replaces(cloud):
    assert https(cloud, "POST", "/v1/devices", {"hardware_key": "wrong", "sn": "x",
                                                "firmware_version": "1", "mac": "m"})[0] == 403
    assert https(cloud, "POST", "/v1/devices", {"hardware_key": cloud["hardware_key"],
                                                "sn": "x"})[0] == 422
    first = register(cloud)
    assert set(first) == {"id", "access_key", "hub_url", "hub_url_static_cert",
                          "mqtt_hub_url"}
    auth = {"Authorization": first["access_key"]}
    assert https(cloud, "GET", "/v1/devices/%s/config" % first["id"], headers=auth)[0] == 200
    assert https(cloud, "GET", "/v1/devices/%s/config" % first["id"],
                 headers={"Authorization": "Bearer " + first["access_key"]})[0] == 401
    second = register(cloud)  # same sn: the first device is deleted
    assert https(cloud, "GET", "/v1/devices/%s/config" % first["id"], headers=auth)[0] == 401
    assert [d["deleted"] for d in xyte_cloud.devices(cloud["data"])] == [True, False]
    assert second["id"] != first["id"]


def test_device_session_over_the_broker(cloud):
    data = cloud["data"]
    xyte_cloud.set_config(data, {"enabled_sensors": [7]})
    cmd = xyte_cloud.send_command(data, "set_4", {"value": 42})
    reg = register(cloud)
    c = device(cloud, reg)
    try:
        p = "v1/device/%s/" % reg["id"]
        for leaf in ("config", "commands", "license", "space_info", "firmware"):
            assert c.subscribe(p + leaf)[0].value == 1
        # another device's topics are out of reach (dynsec ACL)
        assert c.subscribe("v1/device/other/config")[0].value >= 0x80
        assert publish(c, reg, "telemetry", {}, dev="other").value == 0x87
        # telemetry: stored once per message_id; bad user properties are refused
        body = {"status": "online", "timestamp": "2026-01-01T00:00:00Z",
                "telemetries": {"sensor_7": 20.5, "message_id": "1-1"}}
        assert publish(c, reg, "telemetry", body).value == 0
        assert publish(c, reg, "telemetry", body).value == 0
        publish(c, reg, "telemetry", dict(body, telemetries={"message_id": "1-2"}),
                users=[("device_id", reg["id"]), ("access_key", "wrong")])
        publish(c, reg, "telemetry", dict(body, telemetries={"message_id": "1-3"}), users=[])
        wait_for("violations", lambda: len(xyte_cloud.events(data, "violation")) == 2)
        rows = xyte_cloud.telemetry_rows(data)
        assert [(r["message_id"], r["dups"]) for r in rows] == [("1-1", 1)]
        # get: the snapshot comes on each topic, answers name their response topics
        publish(c, reg, "get", {})
        got = {}
        wait_for("snapshot", lambda: got.update(
            {m.topic.rsplit("/", 1)[-1]: m for m in [c.next_message(5)]}) or len(got) >= 3)
        assert json.loads(got["config"].payload)["enabled_sensors"] == [7]
        assert got["config"].properties.ResponseTopic == p + "config/update"
        sent = json.loads(got["commands"].payload)
        assert (sent["id"], sent["status"], sent["parameters"]) == (cmd, "pending",
                                                                    {"value": 42})
        assert got["commands"].properties.ResponseTopic == p + "commands/update"
        assert json.loads(got["space_info"].payload)["temperature_units"] == "celsius"
        # the command lifecycle; a late in_progress and a repeated report change nothing
        for status, mid in (("in_progress", None), ("done", "9-1"), ("done", "9-1"),
                            ("in_progress", None)):
            body = {"id": cmd, "status": status, "message": "m"}
            if mid:
                body["message_id"] = mid
            publish(c, reg, "commands/update", body)
        wait_for("command done", lambda: xyte_cloud.commands(data)[0]["history"] == [
            "in_progress", "done", "in_progress"])
        assert xyte_cloud.commands(data)[0]["status"] == "done"
        publish(c, reg, "update", {"firmware_version": "0.9.1", "name": "n"})
        wait_for("device update", lambda: xyte_cloud.devices(data)[-1]["firmware_version"] ==
                 "0.9.1")
        # a dump over HTTPS
        st, _ = https(cloud, "POST", "/v1/devices/%s/dumps/text%%2Fplain/device.log" %
                      reg["id"], b"log lines\n", {"Authorization": reg["access_key"],
                                                   "Content-Type": "text/plain"})
        assert st == 201
        assert xyte_cloud.dumps(data) == [{"device": reg["id"], "mime": "text/plain",
                                           "filename": "device.log", "body": "log lines\n"}]
        # revocation: the broker drops the session, the hub answers 401
        xyte_cloud.set_fault(data, "revoke")
        assert c.wait_disconnected(10)
        wait_for("hub 401", lambda: https(cloud, "GET", "/v1/devices/%s/config" % reg["id"],
                                          headers={"Authorization": reg["access_key"]})[0]
                 == 401)
    finally:
        c.close()


def test_token_ttl_revokes_old_access_keys(tmp_path):
    data = str(tmp_path / "cloud")
    proc, info = run_local.start_cloud(data, token_ttl=1, platform="xyte")
    try:
        reg = register(info)
        wait_for("expiry", lambda: xyte_cloud.devices(data)[-1]["deleted"])
        assert https(info, "GET", "/v1/devices/%s/config" % reg["id"],
                     headers={"Authorization": reg["access_key"]})[0] == 401
        assert xyte_cloud.events(data, "delete")[0]["body"] == {"why": "access key expired"}
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)


def test_adapter_survives_any_server_message(tmp_path):
    """Fuzz: whatever arrives on the device's topics, the adapter logs and goes on; what it
    queues as answers is JSON for its own topics with its user properties."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from firmware import log
    from firmware.clouds import xyte
    from firmware.net import mqtt

    root = str(tmp_path)
    reg = {"id": "dev-1", "access_key": "xak_fuzz_key", "hub_url": "https://h",
           "mqtt_hub_url": "h:8883"}

    class Cfg:
        ca_path = None

        def get(self, key, default=None):
            return {"cloud": {"hardware_key": "hw-fuzz-key"}}.get(key, default)

    Cfg.root = root
    reg["for"] = xyte.Xyte(Cfg())._identity()
    with open(os.path.join(root, "xyte.json"), "w") as f:
        json.dump({"reg": reg}, f)
    cloud = xyte.Xyte(Cfg())
    assert not cloud.token_due()
    cloud.on_desired = lambda cmd: None
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
            st.sampled_from(["id", "name", "status", "parameters", "version", "data", "add",
                             "remove", "update", "enabled_sensors", "log_level", "command",
                             "value", "latest_fw_version", "x"]), kids, max_size=6),
        max_leaves=12)
    payloads = json_values.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=64)
    leaves = st.sampled_from(["config", "commands", "license", "space_info", "firmware",
                              "other"])

    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(leaves, payloads, st.sampled_from([{}, {mqtt.RESPONSE_TOPIC: "v1/device/dev-1/r"},
                                              {mqtt.RESPONSE_TOPIC: "elsewhere/x"}]))
    def one(leaf, payload, props):
        cloud._out = []
        cloud._on_message(mqtt.Message("v1/device/dev-1/" + leaf, payload, 1, False, False, 1,
                                       props))
        for topic, body, p in cloud._out:
            assert topic.startswith("v1/device/dev-1/")
            json.loads(body)
            assert dict(p[mqtt.USER_PROPERTY]) == {"device_id": "dev-1",
                                                   "access_key": "xak_fuzz_key"}

    log.set_sink(lambda line: None)
    try:
        one()
    finally:
        log.set_sink(None)
        log.set_level(log.INFO)


def test_file_records_answer_what_was_set_and_reads_are_recorded(cloud):
    reg = register(cloud)
    auth = {"Authorization": reg["access_key"]}
    path = "/v1/devices/%s/files/fw-1" % reg["id"]
    status, body = https(cloud, "GET", path, headers=auth)
    assert status == 200 and body["url"] == "https://127.0.0.1/none"  # nothing set: placeholder
    xyte_cloud.set_file(cloud["data"], "fw-1", "https://files.test/fw-1.bin", "ef" * 32)
    status, body = https(cloud, "GET", path, headers=auth)
    assert status == 200
    assert (body["url"], body["checksum"]) == ("https://files.test/fw-1.bin", "ef" * 32)
    assert https(cloud, "GET", path, headers={"Authorization": "wrong"})[0] == 401
    assert [e["body"] for e in xyte_cloud.events(cloud["data"], "file")] == ["fw-1", "fw-1"]
    assert https(cloud, "GET", "/bundles/fw-1.bin")[0] == 404
    assert [e["body"] for e in xyte_cloud.events(cloud["data"], "bundle")] == ["fw-1.bin"]
