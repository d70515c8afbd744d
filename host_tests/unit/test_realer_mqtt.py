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


def adapter(answers, **hooks):
    http = FakeHttp(answers)
    return rm.RealerMqtt(Cfg(), http, **hooks), http


def test_catalog_sets_up_broker_topics_and_routes():
    cloud, http = adapter([_token(), FakeResp(200, catalog())])
    assert support.run(cloud._read_catalog()) is True
    assert http.calls[1][1] == "https://cloud/iot/v1/devices/12345/mqtt"
    assert "iot:mqtt:connect" in http.calls[0][2]["form"]["scope"]  # MQTT scopes requested
    c = cloud.client
    assert (c.host, c.port, c.secure, c.client_id) == ("mqtt.example", 8883, True, CID)
    assert cloud.routes == {("sensor", 7): FEED_7, ("command", 3): FEED_3}
    assert cloud.type_routes == {"sensor": "no/source/id"}  # ids are never required
    assert cloud.desired_routes == {DESIRED_3: 3}
    assert c.subscriptions == {ACKS: 1, DESIRED_3: 1}
    assert cloud.route_for("sensor", 7) == FEED_7
    assert cloud.route_for("sensor", 8) == "no/source/id"
    assert cloud.route_for("command", 4) is None


FEED_S = "realer/iot/v1/devices/cdv_123/routes/rte_aaaaaaaaaaaaaaaaaaaaaaaaaa/feed-data"
FEED_C = "realer/iot/v1/devices/cdv_123/routes/rte_bbbbbbbbbbbbbbbbbbbbbbbbbb/feed-data"
DESIRED_C = "realer/iot/v1/devices/cdv_123/routes/rte_bbbbbbbbbbbbbbbbbbbbbbbbbb/desired"
DESIRED_C2 = "realer/iot/v1/devices/cdv_123/routes/rte_cccccccccccccccccccccccccc/desired"


def documented(routes=None, url="mqtts://mqtt.example:8883"):
    # the route items exactly as the Realer MQTT guide shows them: no source ids
    body = catalog()
    body["mqtt"]["broker_url"] = url
    body["mqtt_routes"] = routes if routes is not None else [
        {"source_type": "sensor", "mqtt": {"feed_data_topic": FEED_S,
                                           "feed_data_publish_scope": "iot:mqtt:feed-data:write"}},
        {"source_type": "command", "mqtt": {"feed_data_topic": FEED_C, "desired_topic": DESIRED_C,
                                            "desired_subscribe_scope": "iot:mqtt:desired:read"}},
        {"source_type": "command", "mqtt": {"feed_data_topic": FEED_C + "2",
                                            "desired_topic": DESIRED_C2}}]
    return body


def test_documented_routes_without_ids_route_by_source_type():
    cloud, _ = adapter([_token(), FakeResp(200, documented())])
    assert support.run(cloud._read_catalog()) is True
    assert cloud.routes == {}
    assert cloud.route_for("sensor", 7) == cloud.route_for("sensor", 8) == FEED_S
    # several routes of one type: the first takes the records, every desired_topic is heard
    assert cloud.route_for("command", 3) == cloud.route_for("command", 4) == FEED_C
    assert cloud.client.subscriptions == {ACKS: 1, DESIRED_C: 1, DESIRED_C2: 1}
    desired: list = []
    cloud.on_desired = desired.append
    lines: list = []
    log.set_sink(lines.append)
    try:
        cloud._on_message(_msg(DESIRED_C2, {"command_id": 4, "desired_id": "d1", "value": "5",
                                            "sequence": 9}))
        cloud._on_message(_msg(DESIRED_C, {"desired_id": "d2", "value": "1"}))  # whose?
    finally:
        log.set_sink(None)
    assert desired == [{"id": 4, "desired_id": "d1", "value": "5", "seq": 9,
                        "expires_at": None}]
    assert any("names no command_id" in ln for ln in lines)


def test_desired_sequence_number_under_any_likely_name():
    cloud, _ = adapter([_token(), FakeResp(200, catalog())])
    support.run(cloud._read_catalog())
    desired: list = []
    cloud.on_desired = desired.append
    for i, name in enumerate(("seq", "sequence", "sequence_number")):
        cloud._on_message(_msg(DESIRED_3, {"desired_id": "d%d" % i, "value": "1", name: 10 + i}))
    cloud._on_message(_msg(DESIRED_3, {"desired_id": "d9", "value": "1"}))
    assert [(d["desired_id"], d["seq"]) for d in desired] == [
        ("d0", 10), ("d1", 11), ("d2", 12), ("d9", None)]


def test_unusable_routes_and_catalogs_are_logged_once_naming_what_is_missing():
    bad = [{"source_type": "actuator", "mqtt": {"feed_data_topic": "x"}},
           {"source_type": "sensor", "mqtt": {"desired_topic": "y"}}, "not a route"]
    lines: list = []
    log.set_sink(lines.append)
    try:
        cloud, _ = adapter([_token(), FakeResp(200, documented(bad)), FakeResp(200,
                                                                            documented(bad))])
        assert support.run(cloud._read_catalog()) is True
        assert support.run(cloud._refresh()) is False  # the same catalog read again
        rec = Record("1-1", "sensor", 7, "1", 1777025700)
        assert cloud.route_for(rec.kind, rec.source) is None
        cloud2, _ = adapter([_token(), FakeResp(200, documented(url="ftp://x")),
                             FakeResp(200, documented([]))])
        assert support.run(cloud2._read_catalog()) is False
        assert support.run(cloud2._read_catalog()) is True
    finally:
        log.set_sink(None)
    errors = [ln for ln in lines if " E realer-mqtt: " in ln]
    for text in ("mqtt_routes[0] ignored: source_type must be", "'actuator'",
                 "mqtt_routes[1] (sensor) ignored: no mqtt.feed_data_topic",
                 "mqtt_routes[2] ignored", "no usable sensor route", "no usable command route",
                 "a usable mqtt.broker_url", "lists no mqtt_routes"):
        assert len([ln for ln in errors if text in ln]) == 1, (text, lines)


def _cred(n):
    return FakeResp(200, {"mqtt": {"mqtt_client_id": CID, "mqtt_username": "u%d" % n,
                                   "mqtt_credential": "secret-%d" % n, "renew_after": 2700}})


def test_refused_credential_is_never_offered_again_and_the_catalog_is_read_again():
    moved = documented(url="mqtts://moved.example:8884")
    cloud, http = adapter([_token(), FakeResp(200, catalog()), _cred(1),
                           FakeResp(200, moved),  # re-read after the refusal
                           FakeResp(503, {"error": {"type": "service_unavailable"}}),
                           _cred(2)])
    support.run(cloud._read_catalog())
    c = cloud.client
    support.run(cloud.session_prepare(c))
    assert c.password == "secret-1"
    c.error = mqtt.NotAuthorized(0x87)  # the broker refused it (run() records why)
    support.raises(rm.RealerError, support.run, cloud.session_prepare(c))  # new one: 503
    assert (c.host, c.port) == ("moved.example", 8884)
    assert cloud.route_for("sensor", 7) == FEED_S
    c.error = rm.RealerError("credential request answered 503")  # what run() keeps next
    support.run(cloud.session_prepare(c))  # still not the refused one
    assert (c.username, c.password) == ("u2", "secret-2")
    assert [call[1].rsplit("/", 1)[1] for call in http.calls[1:]] == [
        "mqtt", "mqtt-credentials", "mqtt", "mqtt-credentials", "mqtt-credentials"]


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
    support.run(cloud.session_prepare(cloud.client))
    method, url, kw = http.calls[2]
    assert (method, url) == ("POST", "https://cloud/iot/v1/mqtt-credentials")
    assert kw["json"] == {"device_id": 12345, "scopes": ["iot:mqtt:connect"]}
    c = cloud.client
    assert (c.username, c.password) == ("realer-cred-v1", "plaintext-returned-once")
    assert c.password != "bearer-token-1"
    assert log.redact("pw plaintext-returned-once") == "pw ***"
    assert 2690000 < cloud.cred_renew.remaining_ms() <= 2700000
    support.run(cloud.session_prepare(cloud.client))  # not due: no second request
    assert len(http.calls) == 3 and cloud.credentials == 1


def test_refused_credential_request_is_a_named_error():
    cloud, _ = adapter([_token(), FakeResp(200, catalog()),
                        FakeResp(403, {"error": {"type": "insufficient_scope"}})])
    support.run(cloud._read_catalog())
    e = support.raises(rm.RealerError, support.run, cloud.session_prepare(cloud.client))
    assert "403 insufficient_scope" in str(e)


def _msg(topic, payload):
    return mqtt.Message(topic, payload if isinstance(payload, bytes) else
                        json.dumps(payload).encode(), 1, False, False, 1, {})


def test_acks_and_desired_messages_are_routed_and_garbage_ignored():
    cloud, _ = adapter([_token(), FakeResp(200, catalog())])
    support.run(cloud._read_catalog())
    desired: list = []
    cloud.on_desired = desired.append
    import asyncio

    event = asyncio.Event()
    cloud._waiting = {"1-1": event}  # send() is waiting for this record's ack
    cloud._on_message(_msg(ACKS, {"message_id": "1-1", "status": "accepted"}))
    cloud._on_message(_msg(ACKS, {"message_id": "0-9", "status": "replayed"}))  # late: dropped
    cloud._on_message(_msg(DESIRED_3, {"desired_id": "des_9", "value": "1", "seq": 4}))
    for topic, junk in ((ACKS, b"{not json"), (ACKS, [1, 2]), (ACKS, {"status": "accepted"}),
                        (DESIRED_3, {"value": "1"}), ("some/other/topic", {"a": 1}),
                        (DESIRED_3, b"\xff\xfe")):
        cloud._on_message(_msg(topic, junk))  # logged, never raised
    assert cloud._acks == {"1-1": {"message_id": "1-1", "status": "accepted"}}
    assert event.is_set()  # its send is woken
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


def test_reread_reconnects_only_when_the_catalog_changed():
    cloud, _ = adapter([_token(), FakeResp(200, catalog()), _cred(1), FakeResp(200, catalog()),
                        FakeResp(200, documented())])
    support.run(cloud._read_catalog())
    support.run(cloud.session_prepare(cloud.client))
    cloud.client.subscriptions.pop(DESIRED_3)  # the broker refused it (subscribe() drops it)
    assert support.run(cloud._refresh()) is False  # same catalog: no reconnect, same credential
    assert cloud.cred_renew is not None
    assert cloud.client.subscriptions == {ACKS: 1, DESIRED_3: 1}  # asked again next connect
    assert support.run(cloud._refresh()) is True  # new routes: reconnect with a new credential
    assert cloud.cred_renew is None
    assert cloud.client.subscriptions == {ACKS: 1, DESIRED_C: 1, DESIRED_C2: 1}


class _Session:
    """What _await_acks looks at on the MQTT client: the session it sent on is still up."""
    connects = 1
    connected = True


def test_an_ack_arriving_before_the_waiter_sleeps_still_wakes_it():
    # wait_for() runs event.wait() in a task of its own that starts later: an ack coming in
    # between must not be lost (it used to be: the batch then waited out ack_timeout_s)
    import asyncio

    cloud, _ = adapter([])
    cloud.ack_timeout_ms = 600000
    cloud.ack_topic = ACKS
    rec = Record("1-1", "sensor", 7, "1", 1777025700)

    async def main():
        event = asyncio.Event()
        cloud._waiting = {"1-1": event}
        waiter = asyncio.create_task(cloud._await_acks([rec], event, _Session(), 1))
        await asyncio.sleep_ms(0)  # the waiter looks, finds no ack, calls wait_for
        cloud._on_message(_msg(ACKS, {"message_id": "1-1", "status": "accepted"}))
        await asyncio.wait_for(waiter, 10)  # a deadline for the hang, not a timing check
        return cloud._acks

    assert support.run(main()) == {"1-1": {"message_id": "1-1", "status": "accepted"}}


def test_no_publishing_before_the_ack_topic_is_subscribed():
    # connect() returns before run() subscribes: a record published then would have its ack
    # go nowhere and wait out ack_timeout_s
    cloud, _ = adapter([_token(), FakeResp(200, catalog())])
    support.run(cloud._read_catalog())
    cloud.mode = rm.MQTT
    c = cloud.client
    c._stream = object()  # the session is open (connect() done)
    c.connects = 1
    rec = Record("1-1", "sensor", 7, "1", 1777025700)
    e = support.raises(mqtt.NotConnected, support.run, cloud.send([rec]))
    assert "not subscribed yet" in str(e)
    ups: list = []
    cloud.on_link_up = ups.append
    support.run(cloud.session_up(c))  # run() calls it once the subscriptions are made
    assert cloud._subscribed == 1 and ups == [True]


def test_a_token_success_reaches_the_apps_hook_through_the_inner_https_adapter():
    # the app gives on_reached to the adapter it makes; RealerMqtt's token and catalog calls
    # (and its HTTPS fallback) run in the inner RealerHttps, which must call that hook
    reached = []
    cloud, http = adapter([_token()], on_reached=lambda: reached.append(1))
    support.run(cloud.authenticate())
    assert reached == [1], reached
    # the app reads these as plain values, whatever RealerMqtt forwards to RealerHttps
    assert isinstance(cloud.batch_max, int) and isinstance(cloud.renewals, int)
