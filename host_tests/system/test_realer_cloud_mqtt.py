"""The local Realer cloud's MQTT side (tools/realer_cloud.py serve --mqtt) with paho v5 as the
device over real TLS (test CA): the catalog, short-lived credentials, broker ACLs, feed data
acks with idempotency, retained desired states, credential expiry and the MQTT fault knobs."""
import base64
import contextlib
import json
import os
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from rig import scratch_dir, stop_cloud, wait_for

from tools import realer_cloud, run_local
from tools.mosquitto import BrokerError, SyncClient

ALL_SCOPES = "iot:catalog:read iot:feed-data:write " + " ".join(realer_cloud.MQTT_SCOPES)
REFUSED = (0x86, 0x87)  # bad user name or password / not authorized
NOT_AUTHORIZED = 0x87


class CloudRig:
    def __init__(self, tmp, cred_ttl, route_ids=True):
        self.data = tmp
        self.proc, self.info = run_local.start_cloud(tmp, mqtt=True, mqtt_cred_ttl=cred_ttl)
        # most tests here address routes by source: the id-carrying variant (knob)
        realer_cloud.set_knob(tmp, "route_ids", route_ids)
        assert self.info.get("mqtt_url", "").startswith("mqtts://127.0.0.1:"), self.info
        self.ctx = ssl.create_default_context(cafile=self.info["ca_file"])
        self.clients = []

    def http(self, method, path, body=None, token=None, headers=None):
        hdrs = dict(headers or {})
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        if token:
            hdrs["Authorization"] = "Bearer " + token
        req = urllib.request.Request(self.info["api_url"] + path, data, hdrs, method=method)
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=10) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    def token(self, scope=ALL_SCOPES):
        basic = base64.b64encode(("%s:%s" % (self.info["client_id"],
                                             self.info["client_secret"])).encode()).decode()
        form = urllib.parse.urlencode({"grant_type": "client_credentials", "scope": scope})
        status, body = self.http("POST", "/oauth/token", form.encode(), headers={
            "Authorization": "Basic " + basic,
            "Content-Type": "application/x-www-form-urlencoded"})
        assert status == 200, body
        return body["access_token"]

    def catalog(self, token=None):
        status, body = self.http("GET", "/iot/v1/devices/%d/mqtt" % self.info["device_id"],
                                 token=token or self.token())
        assert status == 200, body
        return body

    def credential(self, token=None, body=None):
        cat = self.catalog(token)
        ep = cat["mqtt"]["credential_endpoint"]
        status, resp = self.http(ep["http_method"], ep["endpoint"], body or ep["body"],
                                 token=token or self.token())
        assert status == 200, resp
        return cat, resp["mqtt"]

    def device(self, cred=None, username=None, password=None, client_id=None):
        """A connected-or-refused paho client as the device; (client, CONNACK code)."""
        port = int(self.info["mqtt_url"].rsplit(":", 1)[1])
        c = SyncClient("127.0.0.1", port, username or cred["mqtt_username"],
                       password or cred["mqtt_credential"],
                       client_id=client_id or cred["mqtt_client_id"], ca=self.info["ca_file"])
        self.clients.append(c)
        return c, c.connect().value

    def connected_device(self):
        cat, cred = self.credential()
        c, rc = self.device(cred)
        assert rc == 0
        routes = {r["source_id"]: r["mqtt"] for r in cat["mqtt_routes"]}
        assert c.subscribe(cat["mqtt"]["feed_data_ack_topic"])[0].value == 1
        return c, cat, cred, routes

    def close_devices(self):
        """One live device per client id: a second one would take over the session."""
        while self.clients:
            self.clients.pop().close()

    def stop(self):
        try:
            self.close_devices()
        finally:
            stop_cloud(self.proc)  # SIGINT: the cloud stops its mosquitto too


@contextlib.contextmanager
def cloud_rig(cred_ttl):
    with scratch_dir("realer-cloud-mqtt-") as tmp:
        rig = CloudRig(tmp, cred_ttl=cred_ttl)
        try:
            yield rig
        finally:
            rig.stop()


@pytest.fixture(scope="module")
def cloud():
    with cloud_rig(cred_ttl=60) as rig:
        yield rig


@pytest.fixture(autouse=True)
def _close_devices(request):
    yield
    if "cloud" in request.fixturenames:
        request.getfixturevalue("cloud").close_devices()


def reading(mid, value="21.5", at="2026-04-24T10:15:00Z", **extra):
    return dict({"message_id": mid, "value": value, "value_received_at": at}, **extra)


def next_ack(c, mid, timeout=5):
    """The next ack for message_id mid (acks for other ids are skipped)."""
    end = time.time() + timeout
    while time.time() < end:
        try:
            ack = json.loads(c.next_message(max(0.1, end - time.time())).payload)
        except BrokerError:
            break
        if ack.get("message_id") == mid:
            return ack
    raise AssertionError("no ack for %s" % mid)


def test_catalog_default_is_the_documented_shape(cloud):
    realer_cloud.set_knob(cloud.data, "route_ids", False)
    try:
        cat = cloud.catalog()
        _, cred = cloud.credential()
    finally:
        realer_cloud.set_knob(cloud.data, "route_ids", True)
    routes = cat["mqtt_routes"]
    # the Realer MQTT guide's route item: source_type and mqtt only, no ids
    assert all(set(r) == {"source_type", "mqtt"} for r in routes), routes
    assert sorted(r["source_type"] for r in routes) == ["command", "command", "sensor"]
    sensor = [r["mqtt"] for r in routes if r["source_type"] == "sensor"][0]
    assert set(sensor) == {"feed_data_topic", "feed_data_publish_scope"}
    for r in routes:
        if r["source_type"] == "command":
            assert set(r["mqtt"]) == {"feed_data_topic", "feed_data_publish_scope",
                                      "desired_topic", "desired_subscribe_scope"}
    c, rc = cloud.device(cred)
    assert rc == 0 and c.subscribe(cat["mqtt"]["feed_data_ack_topic"])[0].value == 1
    # the payload names the sensor; both sensors share the one sensor route
    topic = sensor["feed_data_topic"]
    c.publish(topic, reading("doc-1", sensor_id=7))
    assert next_ack(c, "doc-1")["status"] == "accepted"
    c.publish(topic, reading("doc-2", sensor_id=8))
    assert next_ack(c, "doc-2")["status"] == "accepted"
    c.publish(topic, reading("doc-3"))  # whose reading? the route does not say
    ack = next_ack(c, "doc-3")
    assert ack["status"] == "rejected" and ack["error"]["details"] == {
        "sensor_id": ["is required on a sensor route"]}
    c.publish(topic, reading("doc-4", command_id=3))
    assert next_ack(c, "doc-4")["status"] == "rejected"
    rows = {r["message_id"]: r["source"] for r in realer_cloud.feed_rows(cloud.data)}
    assert (rows["doc-1"], rows["doc-2"]) == ("sensor:7", "sensor:8")


def test_catalog_shape_with_route_ids(cloud):
    cat = cloud.catalog()
    cid = cloud.info["client_id"]
    assert set(cat) == {"code", "mqtt", "mqtt_routes"} and cat["code"] == 2000
    m = cat["mqtt"]
    assert m == {"broker_url": cloud.info["mqtt_url"], "protocol": "mqtt-5.0", "client_id": cid,
                 "feed_data_ack_topic": "realer/iot/v1/devices/%s/feed-data/acks" % cid,
                 "credential_endpoint": {"endpoint": "/iot/v1/mqtt-credentials",
                                         "http_method": "POST",
                                         "body": {"device_id": cloud.info["device_id"],
                                                  "scopes": list(realer_cloud.MQTT_SCOPES)}}}
    routes = cat["mqtt_routes"]
    assert sorted((r["source_type"], r["source_id"]) for r in routes) == [
        ("command", 3), ("command", 4), ("sensor", 7), ("sensor", 8)]
    topic = re.compile(r"^realer/iot/v1/devices/%s/routes/rte_[0-9a-z]{26}/(feed-data|desired)$"
                       % cid)
    for r in routes:
        keys = {"feed_data_topic", "feed_data_publish_scope"}
        if r["source_type"] == "command":
            keys |= {"desired_topic", "desired_subscribe_scope"}
            assert r["mqtt"]["desired_subscribe_scope"] == "iot:mqtt:desired:read"
            assert topic.match(r["mqtt"]["desired_topic"]).group(1) == "desired"
        assert set(r["mqtt"]) == keys
        assert topic.match(r["mqtt"]["feed_data_topic"]).group(1) == "feed-data"
        assert r["mqtt"]["feed_data_publish_scope"] == "iot:mqtt:feed-data:write"
    assert len({r["mqtt"]["feed_data_topic"] for r in routes}) == 4
    # the catalog needs iot:catalog:read and the device's own id
    status, body = cloud.http("GET", "/iot/v1/devices/%d/mqtt" % cloud.info["device_id"],
                              token=cloud.token("iot:mqtt:connect"))
    assert (status, body["error"]["type"]) == (403, "insufficient_scope")
    status, body = cloud.http("GET", "/iot/v1/devices/999/mqtt", token=cloud.token())
    assert (status, body["error"]["type"]) == (404, "resource_not_found")


def test_credential_and_connect(cloud):
    _cat, cred = cloud.credential()
    assert set(cred) == {"mqtt_client_id", "mqtt_username", "mqtt_credential", "expires_in",
                         "renew_after", "session_hard_expires_in"}
    assert cred["mqtt_client_id"] == cloud.info["client_id"]
    assert re.match(r"^realer-cdv-[0-9a-z]+-cred-v\d+$", cred["mqtt_username"])
    assert (cred["expires_in"], cred["renew_after"], cred["session_hard_expires_in"]) == \
        (60, 45, 60)
    _c, rc = cloud.device(cred)
    assert rc == 0
    # every credential is new: a second one has another user name and password
    _, cred2 = cloud.credential()
    assert cred2["mqtt_username"] != cred["mqtt_username"]
    assert cred2["mqtt_credential"] != cred["mqtt_credential"]
    # the OAuth bearer token is not an MQTT password; nor is another id than the locked one
    token = cloud.token()
    _c, rc = cloud.device(cred, password=token)
    assert rc in REFUSED
    _c, rc = cloud.device(cred, client_id="cdv_someoneelse")
    assert rc in REFUSED


def test_credential_request_errors(cloud):
    path = "/iot/v1/mqtt-credentials"
    ok_body = {"device_id": cloud.info["device_id"], "scopes": ["iot:mqtt:connect"]}
    cases = [
        (cloud.token("iot:catalog:read"), ok_body, 403, "insufficient_scope"),
        (cloud.token("iot:mqtt:connect"), dict(ok_body, scopes=["iot:mqtt:connect",
                                                                "iot:mqtt:ack:read"]),
         403, "insufficient_scope"),
        (cloud.token(), dict(ok_body, device_id=999), 404, "resource_not_found"),
        (cloud.token(), dict(ok_body, device_id=str(cloud.info["device_id"])), 404,
         "resource_not_found"),
        (cloud.token(), dict(ok_body, scopes=["iot:mqtt:connect", "iot:root"]), 422,
         "validation_failed"),
        (cloud.token(), dict(ok_body, scopes="iot:mqtt:connect"), 422, "validation_failed"),
        (cloud.token(), [ok_body], 422, "validation_failed"),
        ("nope", ok_body, 401, "invalid_token"),
    ]
    for token, body, status, etype in cases:
        got, resp = cloud.http("POST", path, body, token=token)
        assert (got, resp["error"]["type"]) == (status, etype), body
    got, resp = cloud.http("POST", path, b"x=1", token=cloud.token(),
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert got == 415


def test_acl_limits_device_to_its_topics(cloud):
    c, cat, _cred, routes = cloud.connected_device()
    other = "realer/iot/v1/devices/cdv_other0000000000000000000000"
    assert c.subscribe(other + "/feed-data/acks")[0].value == NOT_AUTHORIZED
    assert c.subscribe("realer/#")[0].value == NOT_AUTHORIZED
    assert c.publish(other + "/routes/rte_x/feed-data", reading("x1")).value == NOT_AUTHORIZED
    # the device cannot forge acks or desired states on its own topics either
    assert c.publish(cat["mqtt"]["feed_data_ack_topic"], "{}").value == NOT_AUTHORIZED
    assert c.publish(routes[4]["desired_topic"], "{}").value == NOT_AUTHORIZED
    assert c.subscribe(routes[4]["desired_topic"])[0].value == 1
    assert c.subscribe(routes[7]["feed_data_topic"])[0].value == NOT_AUTHORIZED
    # a credential asked without desired:read may not subscribe to desired topics
    cloud.close_devices()
    ep = cat["mqtt"]["credential_endpoint"]
    status, resp = cloud.http("POST", ep["endpoint"], {
        "device_id": ep["body"]["device_id"],
        "scopes": ["iot:mqtt:connect", "iot:mqtt:feed-data:write"]}, token=cloud.token())
    assert status == 200, resp
    c2, rc = cloud.device(resp["mqtt"])
    assert rc == 0
    assert c2.subscribe(routes[4]["desired_topic"])[0].value == NOT_AUTHORIZED
    assert c2.subscribe(cat["mqtt"]["feed_data_ack_topic"])[0].value == NOT_AUTHORIZED
    assert not c2.publish(routes[8]["feed_data_topic"], reading("acl-ok")).is_failure


def test_feed_data_acks_and_idempotency(cloud):
    c, _cat, _cred, routes = cloud.connected_device()
    t7 = routes[7]["feed_data_topic"]
    assert not c.publish(t7, reading("m-1")).is_failure
    assert next_ack(c, "m-1") == {"message_id": "m-1", "status": "accepted"}
    c.publish(t7, reading("m-1"))
    assert next_ack(c, "m-1") == {"message_id": "m-1", "status": "replayed"}
    c.publish(t7, reading("m-1", value="99"))
    ack = next_ack(c, "m-1")
    assert (ack["status"], ack["error"]["type"]) == ("conflict", "message_conflict")
    c.publish(t7, reading("m-2", at="2026-04-24 10:15:00"))
    ack = next_ack(c, "m-2")
    assert ack["status"] == "rejected" and "value_received_at" in ack["error"]["details"]
    c.publish(t7, reading("m-3", value=21.5))
    assert next_ack(c, "m-3")["status"] == "rejected"
    c.publish(t7, reading("m-4", sensor_id=8))  # route 7 says the source is sensor 7
    assert next_ack(c, "m-4")["status"] == "rejected"
    c.publish(t7, reading("m-4b", sensor_id=7))
    assert next_ack(c, "m-4b")["status"] == "accepted"
    c.publish(t7, b'{"message_id": "m-5", "value": ')  # truncated JSON: id still found
    ack = next_ack(c, "m-5")
    assert (ack["status"], ack["error"]["type"]) == ("rejected", "validation_failed")
    c.publish(t7, json.dumps(reading("m-5b", value="x" * 17000)))
    assert next_ack(c, "m-5b")["error"]["type"] == "payload_too_large"
    c.publish(t7, b"not json at all")  # no id to answer: dropped, the next ack is m-6
    c.publish(routes[8]["feed_data_topic"], reading("m-6", value="40"))
    assert json.loads(c.next_message().payload) == {"message_id": "m-6", "status": "accepted"}
    # a command report answering a desired state; report_status rules as on HTTPS
    t4 = routes[4]["feed_data_topic"]
    c.publish(t4, reading("m-7", value="55", desired_id="des_1", report_status="stale"))
    assert next_ack(c, "m-7")["status"] == "accepted"
    c.publish(t4, reading("m-8", value="55", report_status="applied"))
    assert next_ack(c, "m-8")["status"] == "rejected"
    c.publish(t7, reading("m-9", desired_id="des_1"))
    assert next_ack(c, "m-9")["status"] == "rejected"
    rows = {r["message_id"]: r for r in realer_cloud.feed_rows(cloud.data)}
    assert (rows["m-1"]["source"], rows["m-1"]["value"], rows["m-1"]["transport"]) == \
        ("sensor:7", "21.5", "mqtt")
    assert rows["m-6"]["source"] == "sensor:8"
    assert (rows["m-7"]["source"], rows["m-7"]["desired_id"], rows["m-7"]["report_status"]) == \
        ("command:4", "des_1", "stale")
    assert not {"m-2", "m-3", "m-4", "m-5", "m-5b", "m-8", "m-9"} & set(rows)
    # the same message_id over HTTPS afterwards is the same record (one idempotency space)
    status, body = cloud.http("POST", "/iot/v1/devices/%d/feed-data" % cloud.info["device_id"],
                              reading("m-1", sensor_id=7), token=cloud.token())
    assert (status, body["status"]) == (200, "idempotent")


def test_desired_published_retained(cloud):
    c, _cat, _cred, routes = cloud.connected_device()
    topic = routes[3]["desired_topic"]
    assert c.subscribe(topic)[0].value == 1
    out = run_local.subprocess.run(
        [run_local.sys.executable, "-m", "tools.realer_cloud", "set-desired", "--data",
         cloud.data, "3", "1", "--ttl", "30"], cwd=run_local.ROOT, capture_output=True,
        text=True, timeout=20)
    found = re.search(r"desired_id (des_\w+)", out.stdout)
    assert out.returncode == 0 and found, out.stdout + out.stderr
    desired_id = found.group(1)
    msg = c.next_message()
    body = json.loads(msg.payload)
    assert msg.topic == topic and msg.qos == 1
    assert set(body) == {"command_id", "desired_id", "value", "seq", "desired_at", "expires_at"}
    assert (body["command_id"], body["desired_id"], body["value"]) == (3, desired_id, "1")
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", body["expires_at"])
    # set directly in the database (as the e2e tests do): published too, seq grows
    d2 = realer_cloud.set_desired(cloud.data, 3, 0)
    body2 = json.loads(c.next_message().payload)
    assert (body2["desired_id"], body2["seq"], body2["expires_at"]) == (d2, body["seq"] + 1, None)
    # a device subscribing later gets the latest value, flagged retained
    cloud.close_devices()
    late, rc = cloud.device(cloud.credential()[1])
    assert rc == 0 and late.subscribe(topic)[0].value == 1
    msg = late.next_message()
    assert msg.retain and json.loads(msg.payload)["desired_id"] == d2


def admin_fault(cloud, kind, count=1):
    realer_cloud.admin_call(cloud.data, "fault", {"kind": kind, "count": count})


def test_fault_ack_error_and_silent(cloud):
    c, _cat, _cred, routes = cloud.connected_device()
    t8 = routes[8]["feed_data_topic"]
    admin_fault(cloud, "ack-error")
    c.publish(t8, reading("f-1"))
    assert next_ack(c, "f-1") == {"message_id": "f-1", "status": "error", "retryable": True,
                                  "error": {"type": "internal_error",
                                            "message": "try again (fault knob)", "details": {}}}
    assert "f-1" not in {r["message_id"] for r in realer_cloud.feed_rows(cloud.data)}
    c.publish(t8, reading("f-1"))
    assert next_ack(c, "f-1")["status"] == "accepted"
    admin_fault(cloud, "mqtt-silent")
    c.publish(t8, reading("f-2"))
    with pytest.raises(BrokerError):
        c.next_message(1.0)
    assert "f-2" in {r["message_id"] for r in realer_cloud.feed_rows(cloud.data)}
    c.publish(t8, reading("f-2"))  # the device re-publishes the same id: stored once
    assert next_ack(c, "f-2")["status"] == "replayed"


def test_fault_no_credential_endpoint_and_drop(cloud):
    admin_fault(cloud, "no-credential-endpoint")
    assert "credential_endpoint" not in cloud.catalog()["mqtt"]
    assert "credential_endpoint" in cloud.catalog()["mqtt"]
    c, _cat, _cred, routes = cloud.connected_device()
    admin_fault(cloud, "drop-mqtt")
    assert c.wait_disconnected(5), "drop-mqtt did not kick the session"
    # the credential itself still works
    assert c.connect().value == 0


def test_credential_expiry_kicks():
    with cloud_rig(cred_ttl=2) as rig:
        _cat, cred = rig.credential()
        assert cred["renew_after"] == 1
        c, rc = rig.device(cred)
        assert rc == 0
        t0 = time.time()
        assert c.wait_disconnected(6), "expired credential kept its session"
        assert time.time() - t0 < 6
        c.close()
        _c, rc = rig.device(cred)
        assert rc in REFUSED
        _c, rc = rig.device(rig.credential()[1])
        assert rc == 0


def test_run_local_mqtt_device_config_is_valid(cloud):
    from firmware import config

    device = os.path.join(cloud.data, "device")
    run_local.write_device(device, cloud.info, transport="mqtt")
    cfg = config.load(device)
    assert cfg.raw["cloud"]["transport"] == "mqtt"
    assert cfg.raw["cloud"]["api_url"] == cloud.info["api_url"]


def test_fault_broker_down(cloud):
    c, cat, cred, routes = cloud.connected_device()
    realer_cloud.admin_call(cloud.data, "fault", {"kind": "broker-down", "seconds": 1.5})
    assert c.wait_disconnected(5), "broker-down did not end the session"
    ep = cat["mqtt"]["credential_endpoint"]
    status, body = cloud.http("POST", ep["endpoint"], ep["body"], token=cloud.token())
    assert (status, body["error"]["type"]) == (503, "service_unavailable")
    codes = []

    def reconnected():  # as a device would: retry until the broker is back
        try:
            codes.append(c.connect().value)
        except OSError:
            return False
        return codes[-1] == 0

    try:
        wait_for("the same credential accepted once the broker is back", reconnected, 30,
                 step=0.2)
    except AssertionError as e:
        raise AssertionError("%s; CONNACK codes %s" % (e, codes))
    # the cloud's bridge is back too: acks flow, the desired state is retained again
    assert c.subscribe(cat["mqtt"]["feed_data_ack_topic"])[0].value == 1
    end = time.time() + 5
    ack = None
    while ack is None and time.time() < end:
        c.publish(routes[7]["feed_data_topic"], reading("down-1"))
        try:
            ack = json.loads(c.next_message(0.5).payload)
        except BrokerError:
            pass
    assert ack and ack["message_id"] == "down-1" and ack["status"] in ("accepted", "replayed")
    d = realer_cloud.set_desired(cloud.data, 4, 33)
    assert c.subscribe(routes[4]["desired_topic"])[0].value == 1
    for _ in range(3):
        msg = c.next_message()
        if json.loads(msg.payload).get("desired_id") == d:
            break
    else:
        raise AssertionError("desired state not published after the broker came back")
