"""MQTT and WebSocket peers that trickle or never end (both runtimes): the MQTT connect has
an overall CONNACK deadline and a session whose broker trickles a packet ends after 1.5
keepalives without a whole packet; the WebSocket handshake has a deadline and bounded header
lines, a message has a deadline and a bounded number of fragments. Peers pace their bytes
like slow servers do; the checks wait on outcomes with generous deadlines, nothing is timed."""
import asyncio
import binascii
import hashlib
import os

from test_mqtt_session import ScriptedBroker

import support
from firmware.net import conn, mqtt, ws


async def _server(handler):
    for _ in range(50):  # MicroPython's Server does not expose its port: pick, retry if taken
        port = 20000 + int.from_bytes(os.urandom(2), "little") % 40000
        try:
            return await asyncio.start_server(handler, "127.0.0.1", port), port
        except OSError:
            continue
    raise AssertionError("no free loopback port")


async def _trickle(w, data, pause_ms, stop):
    try:
        for i in range(len(data)):
            if stop[0]:
                return
            w.write(data[i:i + 1])
            await w.drain()
            await asyncio.sleep_ms(pause_ms)
    except Exception:  # the client hung up: what a trickling peer meets in the end
        pass


def test_a_trickled_connack_meets_the_connect_deadline():
    stop = [False]

    async def serve(reader, writer):
        await reader.read(256)  # the CONNECT
        await _trickle(writer, b"\x20\x03\x00\x00\x00", 200, stop)  # 1 s for 5 bytes
        writer.close()

    async def main():
        server, port = await _server(serve)
        c = mqtt.Client("mqtt://127.0.0.1:%d" % port, "dev", timeout_ms=5000)
        c.connect_deadline_ms = 300
        try:
            err = await support.araises(conn.NetTimeout, c.connect())
        finally:
            stop[0] = True
            server.close()
        return err, c

    err, c = support.run(main())
    assert isinstance(err, conn.DeadlineExceeded) and "CONNACK" in str(err), err
    assert not c.connected


def test_a_broker_that_trickles_a_packet_forever_ends_the_session():
    stop = [False]
    started: list = []

    async def main():
        b = await ScriptedBroker().start()

        async def trickle_on_ping(first, body, w):
            if first >> 4 == mqtt.PINGREQ and not started:  # a PUBLISH of 1000 bytes at one
                started.append(1)  # byte per 0.2 s, once: later PINGREQs are not answered
                asyncio.create_task(_trickle(w, b"\x30\xe8\x07" + b"x" * 1000, 200, stop))

        b.on_packet = trickle_on_ping
        c = mqtt.Client(b.url(), "dev", keepalive_s=1)  # each read waits 1 s: never hit
        await c.connect()
        try:
            err = await asyncio.wait_for(c.wait_closed(), 30)  # a generous bound, not a time
        finally:
            stop[0] = True
            await b.stop()
        return err

    err = support.run(main())
    assert isinstance(err, conn.NetTimeout) and "stalled" in str(err), err


class _WsPeer:
    """Reader and writer of one fake WebSocket server: answers the upgrade (with the right
    accept key) and then serves `after`, a list of byte strings; `pause_ms` paces each read,
    `lines` serves header lines without end instead of finishing the upgrade."""

    def __init__(self, after=(), pause_ms=0, lines=None):
        self.after = list(after)
        self.pause_ms = pause_ms
        self.lines = lines
        self.request = b""
        self.queue = b""
        self.answered = False
        self.closed = False

    def write(self, data):
        self.request += bytes(data)

    async def drain(self):
        pass

    def close(self):
        self.closed = True

    async def wait_closed(self):
        pass

    def _upgrade(self):
        key = self.request.split(b"Sec-WebSocket-Key: ")[1].split(b"\r\n")[0]
        accept = binascii.b2a_base64(hashlib.sha1(key + ws._GUID).digest()).strip()
        return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")

    async def readinto(self, mv):
        await asyncio.sleep_ms(self.pause_ms)
        if not self.queue:
            if not self.answered:
                self.answered = True
                self.queue = b"HTTP/1.1 101 Switching Protocols\r\n" if self.lines else \
                    self._upgrade()
            elif self.lines:
                self.queue = self.lines
            elif self.after:
                self.queue = self.after.pop(0)
            else:
                return 0
        n = min(len(mv), len(self.queue), 1 if self.pause_ms else len(self.queue))
        mv[:n] = self.queue[:n]
        self.queue = self.queue[n:]
        return n


def _ws(peer, **kw):
    async def fake_open(host, port, secure, ca_file, timeout_ms):
        return peer, peer

    saved = conn.open_connection
    conn.open_connection = fake_open
    try:
        return support.run(ws.connect("ws://h/ws", **kw))
    finally:
        conn.open_connection = saved


def _recv(sock):
    return support.run(sock.recv())


def test_websocket_upgrade_with_endless_header_lines_is_refused():
    peer = _WsPeer(lines=b"X-More: yes\r\n")
    e = support.raises(ws.HandshakeError, _ws, peer)
    assert "header" in str(e) and peer.closed


def test_websocket_upgrade_trickled_meets_the_handshake_deadline():
    peer = _WsPeer(lines=b"X-More: yes\r\n", pause_ms=20)  # a line every ~0.25 s
    support.raises(conn.NetTimeout, _ws, peer, deadline_ms=300)
    assert peer.closed


def _frame(fin, opcode, payload):
    return bytes([(0x80 if fin else 0) | opcode, len(payload)]) + payload


def test_websocket_message_in_endless_fragments_is_a_protocol_error():
    frames = [_frame(False, ws.TEXT, b"a")] + [_frame(False, ws.CONT, b"")] * 300
    sock = _ws(_WsPeer(after=[b"".join(frames)]))
    support.raises(ws.WsProtocolError, _recv, sock)


def test_websocket_message_trickled_meets_its_deadline_and_a_whole_one_is_read():
    whole = _ws(_WsPeer(after=[_frame(False, ws.TEXT, b"he") + _frame(True, ws.CONT, b"y")]))
    assert _recv(whole) == "hey"
    body = b"x" * 100
    peer = _WsPeer(after=[bytes([0x82, 100]) + body])
    sock = _ws(peer, deadline_ms=300)
    peer.pause_ms = 20  # the message now comes one byte per read
    err = support.raises(conn.NetTimeout, _recv, sock)
    assert isinstance(err, conn.DeadlineExceeded), err
