import support
from firmware.net import mqtt


def test_varint_vectors_from_the_standard():
    for n, enc in ((0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16383, b"\xff\x7f"),
                   (16384, b"\x80\x80\x01"), (2097151, b"\xff\xff\x7f"),
                   (2097152, b"\x80\x80\x80\x01"), (268435455, b"\xff\xff\xff\x7f")):
        assert mqtt.encode_varint(n) == enc
        assert mqtt.decode_varint(b"?" + enc + b"!", 1) == (n, 1 + len(enc))
    support.raises(ValueError, mqtt.encode_varint, 268435456)
    support.raises(mqtt.MqttProtocolError, mqtt.decode_varint, b"\xff\xff\xff\xff\x01", 0)
    support.raises(mqtt.MqttProtocolError, mqtt.decode_varint, b"\x80\x80", 0)


def test_connect_311_matches_hand_built_bytes():
    pkt = mqtt.encode_connect("c", keepalive_s=60, clean=True, v5=False)
    assert pkt == bytes([0x10, 13, 0, 4]) + b"MQTT" + bytes([4, 0x02, 0, 60, 0, 1]) + b"c"


def test_connect_5_with_credentials_and_session_expiry():
    pkt = mqtt.encode_connect("dev", "user", "pw", 30, False, True,
                              {mqtt.SESSION_EXPIRY: 600})
    # fixed header, "MQTT", level 5, flags user+password (no clean start), keepalive 30
    assert pkt[2:10] == b"\x00\x04MQTT\x05\xc0"
    assert pkt[10:12] == b"\x00\x1e"
    assert pkt[12:18] == b"\x05\x11\x00\x00\x02\x58"  # properties: session expiry 600
    assert pkt[18:] == b"\x00\x03dev\x00\x04user\x00\x02pw"
    assert pkt[1] == len(pkt) - 2


def test_publish_311_qos0_bytes():
    assert mqtt.encode_publish("a/b", "hi", v5=False) == b"\x30\x07\x00\x03a/bhi"


def test_publish_qos1_retain_dup_flags_and_pid():
    pkt = mqtt.encode_publish("t", b"x", qos=1, retain=True, pid=0x1234, dup=True, v5=False)
    assert pkt[0] == 0x30 | 0x08 | 0x02 | 0x01
    assert pkt[2:7] == b"\x00\x01t\x12\x34"


def test_publish_refuses_bad_topics_and_qos2():
    for topic in ("", "a/+", "a/#"):
        support.raises(ValueError, mqtt.encode_publish, topic, b"x")
    support.raises(ValueError, mqtt.encode_publish, "a", b"x", 2)


def test_properties_round_trip_with_many_user_properties():
    props = {mqtt.USER_PROPERTY: [("a", "1"), ("b", "2"), ("a", "3")],
             mqtt.RESPONSE_TOPIC: "reply/here", mqtt.CORRELATION_DATA: b"\x00\xffid",
             mqtt.MESSAGE_EXPIRY: 3600, mqtt.CONTENT_TYPE: "application/json",
             mqtt.PAYLOAD_FORMAT: 1}
    pkt = mqtt.encode_publish("t/1", b"{}", 1, pid=7, props=props)
    kind, msg = mqtt.decode(pkt[0], pkt[2:])
    assert kind == mqtt.PUBLISH
    assert (msg.topic, msg.payload, msg.qos, msg.pid, msg.retain) == ("t/1", b"{}", 1, 7, False)
    assert msg.props == props


def test_subscribe_and_unsubscribe_layout():
    sub = mqtt.encode_subscribe(5, [("a/#", 1), ("b", 0)], v5=True)
    assert sub[0] == 0x82
    assert sub[2:] == b"\x00\x05\x00\x00\x03a/#\x01\x00\x01b\x00"
    unsub = mqtt.encode_unsubscribe(6, ["a/#"], v5=False)
    assert unsub == b"\xa2\x07\x00\x06\x00\x03a/#"


def test_disconnect_with_reason():
    assert mqtt.encode_disconnect(0) == b"\xe0\x00"
    assert mqtt.encode_disconnect(0x81) == b"\xe0\x02\x81\x00"
    assert mqtt.encode_disconnect(0x81, v5=False) == b"\xe0\x00"


def test_decode_acks_of_both_versions():
    assert mqtt.decode(0x20, b"\x01\x00", v5=False) == (mqtt.CONNACK, True, 0, {})
    assert mqtt.decode(0x20, b"\x00\x86\x03\x1f\x00\x00") == (mqtt.CONNACK, False, 0x86,
                                                           {mqtt.REASON_STRING: ""})
    assert mqtt.decode(0x20, b"\x00\x00\x03\x21\x00\x02")[3] == {mqtt.RECEIVE_MAXIMUM: 2}
    assert mqtt.decode(0x40, b"\x00\x09") == (mqtt.PUBACK, 9, 0, {})
    assert mqtt.decode(0x40, b"\x00\x09\x87\x00") == (mqtt.PUBACK, 9, 0x87, {})
    assert mqtt.decode(0x90, b"\x00\x02\x00\x01\x87") == (mqtt.SUBACK, 2, [1, 0x87], {})
    assert mqtt.decode(0x90, b"\x00\x02\x80", v5=False) == (mqtt.SUBACK, 2, [0x80], {})
    assert mqtt.decode(0xB0, b"\x00\x03\x00\x00") == (mqtt.UNSUBACK, 3, [0], {})
    assert mqtt.decode(0xD0, b"") == (mqtt.PINGRESP,)
    assert mqtt.decode(0xE0, b"\x8e\x00") == (mqtt.DISCONNECT, 0x8E, {})
    assert mqtt.decode(0xE0, b"") == (mqtt.DISCONNECT, 0, {})


def test_malformed_packets_are_named_errors():
    bad = [
        (0x20, b"\x00"),                      # CONNACK too short
        (0x20, b"\x02\x00\x00"),              # CONNACK reserved flag bits
        (0x21, b"\x00\x00\x00"),              # flags on CONNACK
        (0x20, b"\x00\x00\x00junk"),          # stray bytes
        (0x30, b"\x00\x05ab"),                # topic longer than the packet
        (0x36, b"\x00\x01t\x00\x01\x00"),     # QoS 3
        (0x34, b"\x00\x01t\x00\x01\x00"),     # QoS 2
        (0x32, b"\x00\x01t\x00\x00\x00"),     # QoS 1 with packet id 0
        (0x30, b"\x00\x03a/#\x00"),           # wildcard in a topic name
        (0x30, b"\x00\x01t\x02\x7f\x00"),     # unknown property 0x7f
        (0x30, b"\x00\x01t\x04\x03\x00\x01"),  # property longer than its block
        (0x30, b"\x00\x01t\x0a\x02\x00\x00\x00\x01\x02\x00\x00\x00\x02"),  # twice
        (0x30, b"\x00\x01t\x09"),             # property length beyond the packet
        (0x30, b"\x00\x02\xff\xfe\x00"),      # topic not UTF-8
        (0x90, b"\x00\x02\x00"),              # SUBACK without codes
        (0xF0, b"\x00"),                      # AUTH is not supported
        (0x50, b"\x00\x01"),                  # PUBREC: we never send QoS 2
        (0xD0, b"\x00"),                      # PINGRESP with a body
    ]
    for first, body in bad:
        support.raises(mqtt.MqttProtocolError, mqtt.decode, first, body)


def test_connack_codes_map_to_named_errors():
    assert type(mqtt.refusal(4)) is mqtt.BadCredentials
    assert type(mqtt.refusal(0x86)) is mqtt.BadCredentials
    assert type(mqtt.refusal(5)) is mqtt.NotAuthorized
    assert type(mqtt.refusal(0x87)) is mqtt.NotAuthorized
    assert type(mqtt.refusal(3)) is mqtt.ServerUnavailable
    assert type(mqtt.refusal(0x89)) is mqtt.ServerUnavailable
    assert type(mqtt.refusal(0x84)) is mqtt.ConnectRefused
    assert isinstance(mqtt.refusal(0x86), mqtt.CredentialsRefused)
    assert isinstance(mqtt.refusal(5), mqtt.CredentialsRefused)
    assert not isinstance(mqtt.refusal(0x89), mqtt.CredentialsRefused)
    e = mqtt.refusal(0x86, "bad user name or password")
    assert e.code == 0x86 and "bad user name" in str(e)
    assert isinstance(e, mqtt.MqttError)


def test_client_refuses_non_mqtt_urls_and_versions():
    support.raises(ValueError, mqtt.Client, "https://x", "id")
    support.raises(ValueError, mqtt.Client, "mqtt://x", "id", version=3)
    c = mqtt.Client("mqtts://broker.example:8884", "id")
    assert (c.host, c.port, c.secure) == ("broker.example", 8884, True)
    assert mqtt.Client("mqtt://h", "id").port == 1883


def test_put_publish_writes_the_same_bytes_into_a_preallocated_buffer():
    buf = bytearray(64)
    for v5 in (True, False):
        for props in (None, mqtt.encode_props({mqtt.CONTENT_TYPE: "j"})):
            if props and not v5:
                continue
            whole = mqtt.encode_publish("a/b", b"payload", 1, False, 7, True,
                                        {mqtt.CONTENT_TYPE: "j"} if props else None, v5)
            n = mqtt.put_publish(buf, b"a/b", b"payload", 1, False, 7, True, props, v5)
            assert bytes(buf[:n]) == bytes(whole)
            assert n == mqtt.publish_size(3, 7, 1, props, v5)
            # header only: the payload then goes from the caller's own buffer
            h = mqtt.put_publish(buf, b"a/b", b"payload", 1, False, 7, True, props, v5, False)
            assert bytes(buf[:h]) + b"payload" == bytes(whole)
    # a 200-byte body: two-byte remaining length
    big = mqtt.encode_publish("t", b"x" * 200, 0, v5=False)
    assert big[:3] == b"\x30\xcb\x01" and len(big) == 206


def test_encoding_a_publish_into_the_buffer_allocates_nothing():
    buf = bytearray(128)
    payload = b'{"sensor_id": 7, "value": "21.5"}'
    if support.IS_MICROPYTHON:
        import micropython

        micropython.heap_lock()
        try:
            n = mqtt.put_publish(buf, b"realer/x/feed-data", payload, 1, False, 513, False,
                                 None, True)
        finally:
            micropython.heap_unlock()
    else:
        n = mqtt.put_publish(buf, b"realer/x/feed-data", payload, 1, False, 513, False, None,
                             True)
    assert bytes(buf[:n]) == bytes(mqtt.encode_publish("realer/x/feed-data", payload, 1,
                                                       False, 513))
