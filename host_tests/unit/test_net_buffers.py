"""Buffers the network clients allocate once, at start-up, instead of per connection or per
answer (both runtimes): on a small, fragmented heap (a board without PSRAM, bench/memory.md)
a reconnect or a catalog answer must not need a new large block."""
from test_http_deadlines import Peers, _with

import support
from firmware.net import http, mqtt


def _ok(body=b"ok", close=False):
    return (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" %
            (len(body), b"Connection: close\r\n" if close else b"")) + body


def test_every_http_connection_reads_through_the_clients_one_buffer():
    peers = Peers([_ok(b"first", close=True)], [_ok(b"second")])
    client = http.Client()
    buf = client._buf  # made with the client, before any connection

    def run():
        return [support.run(client.request("GET", "http://h/a")) for _ in range(2)]

    resps, _ = _with(peers, run)
    assert [bytes(r.body) for r in resps] == [b"first", b"second"]
    assert len(peers.opened) == 2  # the first answer closed its connection
    assert client._conns[("h", 80, False)].buf is buf  # the new connection took no new one


def test_bytes_after_an_answer_move_to_the_connections_own_buffer():
    # a peer that sends the next answer early: its bytes must survive the next request,
    # which is built in the shared buffer
    peers = Peers([_ok(b"one") + _ok(b"two")])
    client = http.Client()

    def run():
        first = support.run(client.request("POST", "http://h/a", body=b"x" * 40))
        second = support.run(client.request("POST", "http://h/b", body=b"y" * 40))
        return first, second

    (first, second), _ = _with(peers, run)
    assert (bytes(first.body), bytes(second.body)) == (b"one", b"two")
    c = client._conns[("h", 80, False)]
    assert c.buf is not client._buf and len(c.buf) == len(client._buf)
    sent = peers.opened[0][1].sent
    assert len(sent) == 2 and sent[1].startswith(b"POST /b ") and sent[1].endswith(b"y" * 40)


def test_a_request_is_one_write_of_head_and_body():
    peers = Peers([_ok()])
    client = http.Client()
    _with(peers, lambda: support.run(client.request("POST", "http://h/p", json={"a": 1})))
    sent = peers.opened[0][1].sent
    assert len(sent) == 1
    head, _, body = sent[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /p HTTP/1.1\r\n") and b"Content-Length: 8" in head
    assert body == b'{"a": 1}'


def test_a_body_of_known_length_arrives_in_one_block_of_its_size():
    body = b'{"catalog": "' + b"c" * 1500 + b'"}'  # over the read buffer: several reads
    answer = _ok(body)
    peers = Peers([answer[:300], answer[300:900], answer[900:]])
    client = http.Client()
    resp, _ = _with(peers, lambda: support.run(client.request("GET", "http://h/c")))
    assert resp.body == body and resp.json() == {"catalog": "c" * 1500}
    # one preallocated bytearray, not pieces joined into a second copy
    assert isinstance(resp.body, bytearray) and len(resp.body) == len(body)


def test_a_chunked_or_empty_body_is_still_bytes():
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    peers = Peers([chunked + b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"])
    client = http.Client()
    resps, _ = _with(peers, lambda: [support.run(client.request("GET", "http://h/x"))
                                     for _ in range(2)])
    assert resps[0].body == b"abcde" and resps[1].body == b""


def _connack():
    return b"\x20\x03\x00\x00\x00"  # MQTT 5 CONNACK: no session, success, no properties


def test_an_mqtt_client_takes_the_reserved_buffers_and_keeps_its_read_buffer():
    mqtt._spare.clear()
    mqtt.reserve()
    mqtt.reserve()  # one set at most
    assert len(mqtt._spare) == 1
    tx, rbuf = mqtt._spare[0]
    assert len(tx) + len(rbuf) == 1536  # no third buffer for packets cut at the read's end
    client = mqtt.Client("mqtt://h:1883", "dev", keepalive_s=0)
    assert client._tx is tx and client._rbuf is rbuf and not mqtt._spare
    other = mqtt.Client("mqtt://h:1883", "dev2")  # nothing reserved: its own
    assert other._rbuf is not rbuf and len(other._rbuf) == len(rbuf)

    streams = []

    async def two_sessions():
        for _ in range(2):
            await client.connect()
            streams.append(client._stream)
            await client.wait_closed()  # the peer's reader ends: the session closes

    peers = Peers([_connack()], [_connack()])
    _with(peers, lambda: support.run(two_sessions()))
    assert len(peers.opened) == 2 and streams[0] is not streams[1]
    assert streams[0].buf is rbuf and streams[1].buf is rbuf  # no new 1K per reconnect


def test_mqtt_packets_cut_at_the_read_buffers_end_or_larger_than_it_arrive_whole():
    # 1000 bytes of small publishes, then one cut by the 1024-byte read, then one larger than
    # the buffer: all decoded, in order, from the one read buffer (and a buffer of its own
    # for the large one only)
    small = [mqtt.encode_publish("t/%d" % i, b"%03d" % i + b"s" * 90) for i in range(10)]
    cut = mqtt.encode_publish("t/cut", b"c" * 200)
    large = mqtt.encode_publish("t/large", bytes(range(256)) * 6)
    stream = b"".join(small) + cut + large
    assert sum(len(p) for p in small) < 1024 < sum(len(p) for p in small) + len(cut)
    got: list = []
    client = mqtt.Client("mqtt://h:1883", "dev", keepalive_s=0,
                         on_message=lambda m: got.append((m.topic, bytes(m.payload))))

    async def session():
        await client.connect()
        await client.wait_closed()  # the script ends: the session closes

    peers = Peers([_connack(), stream])
    _with(peers, lambda: support.run(session()))
    want = [("t/%d" % i, b"%03d" % i + b"s" * 90) for i in range(10)]
    want += [("t/cut", b"c" * 200), ("t/large", bytes(range(256)) * 6)]
    assert got == want
