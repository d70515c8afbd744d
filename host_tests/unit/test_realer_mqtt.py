"""RealerMqtt's catalog, credential, ack and desired-state handling (both runtimes); the
whole adapter against the local cloud and mosquitto is system/test_realer_mqtt_e2e.py."""
import json

from test_realer_https import Cfg, FakeHttp, FakeResp

import support
from firmware import log
from firmware.clouds import realer_mqtt as rm
from firmware.net import mqtt
from firmware.outbox import Record

CID = "cdv_1234567890abcdef"
ACKS = "realer/iot/v1/devices/%s/feed-data/acks" % CID
FEED_7 = "realer/iot/v1/devices/cdv_123/routes/rte_a/feed-data"
FEED_3 = "realer/iot/v1/devices/cdv_123/routes/rte_b/feed-data"
DESIRED_3 = "realer/iot/v1/devices/cdv_123/routes/rte_b/desired"


def catalog(credential_endpoint=True):
    m = {"broker_url": "mqtts://mqtt.example:8883", "protocol": "mqtt-5.0", "client_id": CID,
         "feed_data_ack_topic": ACKS}
    if credential_endpoint:
        m["credential_endpoint"] = {"endpoint": "/iot/v1/mqtt-credentials",
                                    "http_method": "POST",
                                    "body": {"device_id": 12345,
                                             "scopes": ["iot:mqtt:connect"]}}
    return {"code": 2000, "mqtt": m, "mqtt_routes": [
        {"source_type": "sensor", "source_id": 7, "mqtt": {"feed_data_topic": FEED_7}},
        {"source_type": "command", "source_id": 3,
         "mqtt": {"feed_data_topic": FEED_3, "desired_topic": DESIRED_3}},
        {"source_type": "sensor", "mqtt": {"feed_data_topic": "no/source/id"}},
        "not a route"]}


def _token():
    return FakeResp(200, {"access_token": "bearer-token-1", "renew_after": 100})


def adapter(answers):
    http = FakeHttp(answers)
    return rm.RealerMqtt(Cfg(), http), http


def test_catalog_sets_up_broker_topics_and_routes():
    cloud, http = adapter([_token(), FakeResp(200, catalog())])
    assert support.run(cloud._read_catalog()) is True
    assert http.calls[1][1] == "https://cloud/iot/v1/devices/12345/mqtt"
    assert "iot:mqtt:connect" in http.calls[0][2]["form"]["scope"]  # MQTT scopes requested
    c = cloud.client
    assert (c.host, c.port, c.secure, c.client_id) == ("mqtt.example", 8883, True, CID)
    assert cloud.routes == {("sensor", 7): FEED_7, ("command", 3): FEED_3}
    assert cloud.desired_routes == {DESIRED_3: 3}
    assert c.subscriptions == {ACKS: 1, DESIRED_3: 1}


def test_no_credential_endpoint_or_no_catalog_means_https():
    cloud, _ = adapter([_token(), FakeResp(200, catalog(credential_endpoint=False))])
    lines: list = []
    log.set_sink(lines.append)
    try:
        assert support.run(cloud._read_catalog()) is False
        cloud2, _ = adapter([_token(), FakeResp(404, {"error": {"type": "not_found"}})])
        assert support.run(cloud2._read_catalog()) is False
    finally:
        log.set_sink(None)
    assert any("no credential_endpoint" in ln for ln in lines)
    assert any("404" in ln and "staying on HTTPS" in ln for ln in lines)


def test_credential_is_used_as_password_and_never_logged():
    cred = {"mqtt": {"mqtt_client_id": CID, "mqtt_username": "realer-cred-v1",
                     "mqtt_credential": "plaintext-returned-once", "expires_in": 3600,
                     "renew_after": 2700}}
    cloud, http = adapter([_token(), FakeResp(200, catalog()), FakeResp(200, cred)])
    support.run(cloud._read_catalog())
    support.run(cloud._prepare(cloud.client))
    method, url, kw = http.calls[2]
    assert (method, url) == ("POST", "https://cloud/iot/v1/mqtt-credentials")
    assert kw["json"] == {"device_id": 12345, "scopes": ["iot:mqtt:connect"]}
    c = cloud.client
    assert (c.username, c.password) == ("realer-cred-v1", "plaintext-returned-once")
    assert c.password != "bearer-token-1"
    assert log.redact("pw plaintext-returned-once") == "pw ***"
    assert 2690000 < cloud.cred_renew.remaining_ms() <= 2700000
    support.run(cloud._prepare(cloud.client))  # not due: no second request
    assert len(http.calls) == 3 and cloud.credentials == 1


def test_refused_credential_request_is_a_named_error():
    cloud, _ = adapter([_token(), FakeResp(200, catalog()),
                        FakeResp(403, {"error": {"type": "insufficient_scope"}})])
    support.run(cloud._read_catalog())
    e = support.raises(rm.RealerError, support.run, cloud._prepare(cloud.client))
    assert "403 insufficient_scope" in str(e)


def _msg(topic, payload):
    return mqtt.Message(topic, payload if isinstance(payload, bytes) else
                        json.dumps(payload).encode(), 1, False, False, 1, {})


def test_acks_and_desired_messages_are_routed_and_garbage_ignored():
    cloud, _ = adapter([_token(), FakeResp(200, catalog())])
    support.run(cloud._read_catalog())
    desired: list = []
    cloud.on_desired = desired.append
    cloud._waiting = {"1-1"}  # send() is waiting for this record's ack
    cloud._on_message(_msg(ACKS, {"message_id": "1-1", "status": "accepted"}))
    cloud._on_message(_msg(ACKS, {"message_id": "0-9", "status": "replayed"}))  # late: dropped
    cloud._on_message(_msg(DESIRED_3, {"desired_id": "des_9", "value": "1", "seq": 4}))
    for topic, junk in ((ACKS, b"{not json"), (ACKS, [1, 2]), (ACKS, {"status": "accepted"}),
                        (DESIRED_3, {"value": "1"}), ("some/other/topic", {"a": 1}),
                        (DESIRED_3, b"\xff\xfe")):
        cloud._on_message(_msg(topic, junk))  # logged, never raised
    assert cloud._acks == {"1-1": {"message_id": "1-1", "status": "accepted"}}
    assert desired == [{"id": 3, "desired_id": "des_9", "value": "1", "seq": 4,
                        "expires_at": None}]


def test_ack_statuses_decide_each_record():
    cloud, _ = adapter([])
    recs = [Record("1-%d" % i, "sensor", 7, "1", 1777025700) for i in range(7)]
    acks = [{"status": "accepted"}, {"status": "replayed"}, {"status": "conflict"},
            {"status": "rejected", "error": {"type": "validation_failed"}},
            {"status": "error", "retryable": False}, {"status": "error", "retryable": True},
            None]
    result = rm.SendResult()
    for rec, ack in zip(recs, acks):
        cloud._judge(result, rec, ack)
    assert result.ok == ["1-0", "1-1"]
    assert [d[0] for d in result.dead] == ["1-2", "1-3", "1-4"]
    assert result.dead[1][1] == "rejected validation_failed"
    assert result.failed  # 1-5 and 1-6 stay pending, to be published again


def test_send_waits_for_the_catalog_then_follows_the_mode():
    cloud, _ = adapter([_token(), FakeResp(201, {"code": 2000, "status": "created"})])
    rec = Record("1-1", "sensor", 7, "1", 1777025700)
    support.raises(mqtt.NotConnected, support.run, cloud.send([rec]))  # catalog not read
    cloud.mode = rm.HTTPS
    assert support.run(cloud.send([rec])).ok == ["1-1"]
