"""Random and mutated broker packets into firmware.net.mqtt: the codec (`decode`), the
encode/decode round trip of PUBLISH, the client's packet reader on a byte stream, connect()
and a live session against a loopback peer that sends garbage. Only the module's named errors
may escape, and an oversize remaining length is refused unallocated."""
import asyncio
import struct
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.net import conn, mqtt
from support import StepReader
from tools.mosquitto import Broker, BrokerError

M = mqtt


def _pkt(ptype, flags, body):
    return bytes([ptype << 4 | flags]) + M.encode_varint(len(body)) + body


def _valid_packets(v5):
    """Well-formed server->client packets (whole, with fixed header) for one protocol level."""
    if v5:
        connack = _pkt(2, 0, b"\x01\x00" + M.encode_props({
            M.RECEIVE_MAXIMUM: 20, M.MAXIMUM_QOS: 1, M.ASSIGNED_CLIENT_ID: "auto-7f",
            M.SERVER_KEEP_ALIVE: 30, M.MAXIMUM_PACKET_SIZE: 65536,
            M.USER_PROPERTY: [("a", "b"), ("a", "c")], 0x22: 10, 0x25: 1}))
        puback = _pkt(4, 0, b"\x00\x07\x87" + M.encode_props({M.REASON_STRING: "no ACL"}))
        suback = _pkt(9, 0, b"\x00\x02" + M.encode_props({M.REASON_STRING: "ok"}) + b"\x00\x01\x87")
        unsuback = _pkt(11, 0, b"\x00\x03" + M.encode_props(None) + b"\x00\x11")
        disconnect = _pkt(14, 0, b"\x8e" + M.encode_props({M.REASON_STRING: "session taken over",
                                                           M.USER_PROPERTY: [("k", "v")]}))
    else:
        connack = _pkt(2, 0, b"\x00\x00")
        puback = _pkt(4, 0, b"\x00\x07")
        suback = _pkt(9, 0, b"\x00\x02\x00\x01\x80")
        unsuback = _pkt(11, 0, b"\x00\x03")
        disconnect = _pkt(14, 0, b"")
    props = {M.PAYLOAD_FORMAT: 1, M.MESSAGE_EXPIRY: 300, M.CONTENT_TYPE: "application/json",
             M.RESPONSE_TOPIC: "c/dev/reply", M.CORRELATION_DATA: b"\x00\xffreq",
             M.USER_PROPERTY: [("source", "s-7"), ("unit", "°C"), ("source", "again")],
             0x0B: 268435455}
    return [connack, puback, suback, unsuback, disconnect, _pkt(13, 0, b""),
            M.encode_publish("d/dev/t", b"", 0, False, 0, False, None, v5),
            M.encode_publish("d/dev/täst", b'{"v": 21.5}', 1, True, 513, True, props, v5)]


GOOD = {True: _valid_packets(True), False: _valid_packets(False)}


def _split(raw):
    """(first byte, body) of a whole packet."""
    _, pos = M.decode_varint(raw, 1)
    return raw[0], raw[pos:]


def test_every_seed_packet_decodes():
    # the mutations below start from packets the decoder accepts, or they prove little
    for v5 in (True, False):
        kinds = sorted({M.decode(*_split(p), v5)[0] for p in GOOD[v5]})
        assert kinds == [2, 3, 4, 9, 11, 13, 14], kinds


def _decode_or_named(first, body, v5):
    try:
        M.decode(first, body, v5)
    except M.MqttProtocolError:
        pass  # the one error the codec is allowed to raise


@settings(max_examples=600, deadline=None)
@given(st.integers(0, 255), st.binary(max_size=300), st.booleans())
def test_decode_random_bytes(first, body, v5):
    _decode_or_named(first, body, v5)


_MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10 ** 6), st.integers(0, 7)),
    st.tuples(st.just("set"), st.integers(0, 10 ** 6), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.integers(0, 10 ** 6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10 ** 6), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10 ** 6), st.just(0)))


def _mutate(body, mutations):
    body = bytearray(body)
    for op, pos, val in mutations:
        at = pos % (len(body) + 1)
        if op == "flip" and body:
            body[at % len(body)] ^= 1 << val
        elif op == "set" and body:
            body[at % len(body)] = val
        elif op == "cut":
            del body[at:]
        elif op == "insert":
            body.insert(at, val)
        elif op == "delete" and body:
            del body[at % len(body)]
    return bytes(body)


@settings(max_examples=1500, deadline=None)
@given(st.booleans(), st.data(), st.lists(_MUTATION, min_size=1, max_size=4),
       st.integers(0, 7))
def test_decode_mutated_packets(v5, data, mutations, first_flip):
    first, body = _split(data.draw(st.sampled_from(GOOD[v5])))
    if first_flip < 4:  # now and then a wrong type or flags nibble too
        first ^= 1 << (first_flip * 2)
    _decode_or_named(first, _mutate(body, mutations), v5)


# ---- PUBLISH round trip ------------------------------------------------------------------

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
_TOPIC = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="+#"),
                 min_size=1, max_size=60)
_PROPS = st.fixed_dictionaries({}, optional={
    M.PAYLOAD_FORMAT: st.integers(0, 1),
    M.MESSAGE_EXPIRY: st.integers(0, 2 ** 32 - 1),
    M.CONTENT_TYPE: _TEXT,
    M.RESPONSE_TOPIC: _TOPIC,
    M.CORRELATION_DATA: st.binary(max_size=64),
    M.USER_PROPERTY: st.lists(st.tuples(_TEXT, _TEXT), min_size=1, max_size=12),
    0x0B: st.integers(1, 268435455),  # subscription identifier: a variable byte integer
})


@settings(max_examples=500, deadline=None)
@given(_TOPIC, st.binary(max_size=300), st.integers(0, 1), st.booleans(), st.booleans(),
       st.integers(1, 65535), _PROPS, st.booleans())
def test_publish_round_trip(topic, payload, qos, retain, dup, pid, props, v5):
    raw = M.encode_publish(topic, payload, qos, retain, pid, dup, props, v5)
    first, body = _split(raw)
    assert M.decode_varint(raw, 1)[0] == len(body)  # the remaining length is right
    kind, msg = M.decode(first, body, v5)
    assert kind == M.PUBLISH
    assert (msg.topic, msg.payload, msg.qos, msg.retain, msg.dup) == (topic, payload, qos,
                                                                      retain, dup)
    assert msg.pid == (pid if qos else 0)
    expected = {k: (list(v) if k == M.USER_PROPERTY else v) for k, v in props.items()}
    assert msg.props == (expected if v5 else {})


def test_round_trip_keeps_duplicate_user_property_order():
    pairs = [("k", "1"), ("k", "2"), ("ä", ""), ("k", "1")]
    _, msg = M.decode(*_split(M.encode_publish("t/ü", b"\x00", 1, False, 9, False,
                                               {M.USER_PROPERTY: pairs})), True)
    assert msg.props == {M.USER_PROPERTY: pairs}


# ---- the client's packet reader on a byte stream -----------------------------------------

class _Writer:
    def write(self, data):
        pass

    async def drain(self):
        pass

    def close(self):
        pass

    async def wait_closed(self):
        pass


def _client(v5=True, max_packet=4096):
    return M.Client("mqtt://127.0.0.1:1883", "fuzz", version=5 if v5 else 4,
                    max_packet=max_packet)


def _read_all(data, step, v5):
    """Read and dispatch packets until the stream ends; return how many were read."""
    client = _client(v5)
    stream = conn.Stream(StepReader(data, step), _Writer())

    async def run():
        n = 0
        while True:
            pkt = await client._read_packet(stream, 1000)
            n += 1
            if pkt is not None:  # None: a PUBACK, handled inside _read_packet
                await client._dispatch(pkt)  # unknown acks, DISCONNECT...: named errors too

    try:
        asyncio.run(run())
    except conn.NetError:  # MqttError subclasses, Closed at the end of the bytes
        pass


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=500), st.integers(1, 64), st.booleans())
def test_stream_random_bytes(data, step, v5):
    _read_all(data, step, v5)


@settings(max_examples=500, deadline=None)
@given(st.booleans(), st.lists(st.integers(0, 7), min_size=1, max_size=5),
       st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), max_size=5),
       st.integers(0, 40), st.integers(1, 64))
def test_stream_mutated_packets(v5, picks, sets, cut, step):
    good = GOOD[v5]
    data = bytearray(b"".join(good[i] for i in picks))
    for pos, val in sets:
        data[pos % len(data)] = val
    _read_all(bytes(data[:max(0, len(data) - cut)]), step, v5)


def test_stream_reads_good_packets_back_to_back():
    # PUBACK/PINGRESP/PUBLISH qos0 need no session; the rest are covered by the decode tests
    v5 = True
    client = _client(v5)
    seeds = [GOOD[v5][i] for i in (1, 5, 6)]
    stream = conn.Stream(StepReader(b"".join(seeds), 3), _Writer())

    async def run():
        # None: a PUBACK whole in the buffer, handled in place
        return [(await client._read_packet(stream, 1000) or (M.PUBACK,))[0] for _ in seeds]

    assert asyncio.run(run()) == [M.PUBACK, M.PINGRESP, M.PUBLISH]


@settings(max_examples=100, deadline=None)
@given(st.integers(4096 - 3 + 1, 268435455), st.sampled_from([0x30, 0x32, 0x40, 0x90, 0x20]))
def test_oversize_remaining_length_is_refused_unallocated(length, first):
    client = _client(True, max_packet=4096)
    data = bytes([first]) + M.encode_varint(length) + b"\x00" * 64
    stream = conn.Stream(StepReader(data, 64), _Writer())
    tracemalloc.start()
    try:
        err = _capture(client._read_packet(stream, 1000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(err, M.MqttProtocolError), err
    assert "over the 4096 allowed" in str(err)
    assert peak < 64 * 1024, "refusing a %d-byte packet took %d bytes" % (length, peak)


def test_remaining_length_of_five_bytes_is_refused():
    client = _client(True, max_packet=2 ** 30)
    stream = conn.Stream(StepReader(b"\x30\xff\xff\xff\xff\x01", 8), _Writer())
    err = _capture(client._read_packet(stream, 1000))
    assert isinstance(err, M.MqttProtocolError) and "longer than 4 bytes" in str(err), err


def _publish_of_total_size(total):
    """(packet, payload): a v5 QoS 0 PUBLISH to "t" whose whole packet (fixed header included)
    is `total` bytes, or None for a size no packet has (129 -> 131 adds a length byte)."""
    for header in (2, 3, 4, 5):
        payload = bytes(range(256)) * (total // 256 + 1)
        payload = payload[:total - header - 4]
        raw = M.encode_publish("t", payload, 0)
        if len(raw) == total:
            return raw, payload
    return None


def test_packet_of_exactly_max_packet_bytes_is_read():
    # We announce Maximum Packet Size = max_packet: the broker may send packets of that total
    # size (MQTT 5 3.1.2.11.4), fixed header included, so refusing one would drop a session
    # the broker did nothing wrong in (and a QoS 1 resend would loop). Sizes around the 2-, 3-
    # and 4-byte remaining-length boundaries.
    tried = 0
    for limit in list(range(125, 135)) + list(range(16382, 16392)):
        exact = _publish_of_total_size(limit)
        if exact is None:
            continue
        tried += 1
        raw, payload = exact
        stream = conn.Stream(StepReader(raw, 512), _Writer())
        kind, msg = asyncio.run(_client(True, max_packet=limit)._read_packet(stream, 1000))
        assert kind == M.PUBLISH and msg.payload == payload, limit
        over = next(p for p in map(_publish_of_total_size, range(limit + 1, limit + 4)) if p)[0]
        err = _capture(_client(True, max_packet=limit)._read_packet(
            conn.Stream(StepReader(over, 512), _Writer()), 1000))
        assert isinstance(err, M.MqttProtocolError), (limit, err)
    assert tried == 18, tried


def _capture(coro):
    try:
        asyncio.run(coro)
    except Exception as e:
        return e
    return None


def test_body_ending_early_is_a_named_close():
    raw = M.encode_publish("t", b"abcdef", 0)
    err = _capture(_client()._read_packet(conn.Stream(StepReader(raw[:-2], 4), _Writer()), 1000))
    assert isinstance(err, conn.Closed), err


def test_struct_sizes_used_by_the_seeds():
    # guards the hand-built seeds: PUBACK pid 7 and SUBACK pid 2 are big-endian u16
    assert struct.unpack("!H", GOOD[True][1][2:4])[0] == 7
    assert M.decode(*_split(GOOD[True][2]), True)[1:3] == (2, [0, 1, 0x87])


# ---- connect() against a real socket peer that answers CONNECT with anything -------------

async def _connect_to(answer, timeout_ms=1000):
    """connect() to a loopback server that reads the CONNECT, writes `answer` and closes;
    returns the exception connect() raised, or None (then the session is closed again)."""

    async def handle(reader, writer):
        await reader.read(4096)
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = M.Client("mqtt://127.0.0.1:%d" % port, "fuzz", timeout_ms=timeout_ms)
    try:
        await client.connect()
    except Exception as e:
        return e
    finally:
        await client.disconnect()
        server.close()
    return None


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.binary(max_size=60),
                 st.builds(lambda body, cut: _mutate(GOOD[True][0], [("cut", cut, 0)]) + body,
                           st.binary(max_size=8), st.integers(0, 200))))
def test_connect_answered_with_garbage(answer):
    err = asyncio.run(_connect_to(answer))
    assert err is None or isinstance(err, conn.NetError), repr(err)


def test_connack_with_receive_maximum_zero_is_refused():
    # MQTT 5 3.2.2.3.3: Receive Maximum 0 is a protocol error. Taken as a send window of 0,
    # every QoS 1 publish would wait for a free slot forever.
    for prop in (M.RECEIVE_MAXIMUM, M.MAXIMUM_PACKET_SIZE):
        body = b"\x00\x00" + M.encode_props({prop: 0})
        try:
            M.decode(0x20, body, True)
            raise AssertionError("CONNACK with property 0x%02x = 0 accepted" % prop)
        except M.MqttProtocolError:
            pass
        err = asyncio.run(_connect_to(_pkt(2, 0, body)))
        assert isinstance(err, M.MqttProtocolError), repr(err)


async def _session_fed(stream_bytes, v5):
    """A session whose broker sends a good CONNACK, then `stream_bytes`, then closes; returns
    why the session ended (the reader loop must end it, with a named error)."""

    async def handle(reader, writer):
        await reader.read(4096)
        writer.write(GOOD[v5][0] + stream_bytes)
        await writer.drain()
        await asyncio.sleep(0.05)  # let PUBACKs and DISCONNECT 0x81 arrive before closing
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    got = []
    client = M.Client("mqtt://127.0.0.1:%d" % port, "fuzz", version=5 if v5 else 4,
                      timeout_ms=2000, keepalive_s=0, on_message=got.append)
    try:
        await client.connect()
        return await asyncio.wait_for(client.wait_closed(), 5)
    finally:
        await client.disconnect()
        server.close()


@settings(max_examples=150, deadline=None)
@given(st.booleans(), st.lists(st.integers(0, 7), max_size=4),
       st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), max_size=3),
       st.binary(max_size=40))
def test_session_reader_ends_with_a_named_error(v5, picks, sets, tail):
    data = bytearray(b"".join(GOOD[v5][i] for i in picks) + tail)
    for pos, val in sets:
        if data:
            data[pos % len(data)] = val
    err = asyncio.run(_session_fed(bytes(data), v5))
    # as_net_error turns an unexpected exception (a bug) into a bare NetError: not allowed
    assert isinstance(err, conn.NetError) and type(err) is not conn.NetError, repr(err)


# ---- a publish the broker cannot take (found reading the client, checked on mosquitto) ----

class _SmallPacketBroker(Broker):
    """mosquitto announcing Maximum Packet Size 1000 in its CONNACK."""

    def _config(self):
        return "max_packet_size 1000\n" + super()._config()


def test_publish_over_the_brokers_maximum_packet_size_is_refused_locally(tmp_path):
    # mosquitto answers an oversize PUBLISH with DISCONNECT 0x95; a QoS 1 one stayed in flight
    # and was sent again on every reconnect, so the session could never carry anything else
    # (40 reconnects in 2 s of run()). It must be refused before it is sent or kept.
    try:
        broker = _SmallPacketBroker(str(tmp_path), dynsec=False, users={"u": "pw-123456"}).start()
    except BrokerError as e:
        raise AssertionError("mosquitto could not start: %s" % e) from None

    async def run():
        c = M.Client(broker.url, "big", "u", "pw-123456", timeout_ms=3000)
        await c.connect()
        assert c.server_props.get(M.MAXIMUM_PACKET_SIZE) == 1000, c.server_props
        for qos in (1, 0):
            err = await _acapture(c.publish("t/big", b"x" * 2000, qos))
            assert isinstance(err, M.PacketTooLarge), repr(err)
        assert c.connected and c.inflight == 0
        await asyncio.wait_for(c.publish("t/small", b"x" * 900, 1), 3)  # still usable
        await c.disconnect()

    try:
        asyncio.run(run())
    finally:
        broker.stop()


async def _acapture(coro):
    try:
        await asyncio.wait_for(coro, 3)
    except Exception as e:
        return e
    return None
