"""firmware.net.ws under the real MicroPython unix port against an aiohttp WebSocket server
(plain and TLS with the test CA) and a raw server for what aiohttp will not send."""
import asyncio
import base64
import hashlib
import ssl
import struct
import threading

import peers
import pytest
from aiohttp import WSMsgType, web
from certs import make_certs


class AioServer:
    """aiohttp in a thread: /echo echoes; 'ping-me' makes it ping; 'close-me' closes 4001."""

    def __init__(self, ssl_ctx=None):
        self.pongs = 0
        self.closed_codes = []
        ready = threading.Event()

        async def echo(request):
            sock = web.WebSocketResponse(autoping=False, max_msg_size=1 << 20)
            await sock.prepare(request)
            async for msg in sock:
                if msg.type == WSMsgType.TEXT:
                    if msg.data == "ping-me":
                        await sock.ping(b"srv")
                    elif msg.data == "close-me":
                        await sock.close(code=4001, message=b"done here")
                        break
                    elif msg.data.startswith("big:"):
                        await sock.send_str("x" * int(msg.data[4:]))
                    else:
                        await sock.send_str(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await sock.send_bytes(msg.data)
                elif msg.type == WSMsgType.PING:
                    await sock.pong(msg.data)
                elif msg.type == WSMsgType.PONG:
                    self.pongs += 1
                    await sock.send_str("pong-seen")
                elif msg.type == WSMsgType.CLOSE:
                    self.closed_codes.append(msg.data)
            return sock

        def run():
            self.loop = asyncio.new_event_loop()
            app = web.Application()
            app.router.add_get("/echo", echo)
            self.runner = web.AppRunner(app)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ssl_ctx)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        ready.wait(10)

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)


class RawServer:
    """Speaks the handshake itself, then sends canned frames (fragments, bad accept...)."""

    def __init__(self, frames, accept_ok=True):
        self.frames = frames
        self.accept_ok = accept_ok
        self.received = b""
        self.handled = threading.Event()
        ready = threading.Event()

        async def handle(reader, writer):
            head = await reader.readuntil(b"\r\n\r\n")
            key = [ln.split(b":", 1)[1].strip() for ln in head.split(b"\r\n")
                   if ln.lower().startswith(b"sec-websocket-key")][0]
            accept = base64.b64encode(hashlib.sha1(
                key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            if not self.accept_ok:
                accept = base64.b64encode(b"0" * 20)
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            for f in self.frames:
                writer.write(f)
            await writer.drain()
            try:
                self.received = await asyncio.wait_for(reader.read(4096), 3)
            except asyncio.TimeoutError:
                pass
            finally:
                self.handled.set()
            writer.close()

        def run():
            self.loop = asyncio.new_event_loop()
            server = self.loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0))
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        ready.wait(10)

    def stop(self):
        # the client process may exit before this thread has stored what it sent
        self.handled.wait(5)
        self.loop.call_soon_threadsafe(self.loop.stop)


def frame(opcode, payload, fin=True):
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    head = struct.pack("!BB", b0, n) if n < 126 else struct.pack("!BBH", b0, 126, n)
    return head + payload


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_certs(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def server():
    s = AioServer()
    yield s
    s.stop()


def drive(spec):
    proc = peers.run_mp_spec("ws_driver.py", spec, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return peers.json_lines(proc.stdout)


def test_echo_text_and_binary_of_every_length_class(server):
    out = drive({"url": "ws://127.0.0.1:%d/echo" % server.port, "max_message": 100000,
                 "actions": [["text", "héllo"], ["recv"], ["binary", 10], ["recv"],
                             ["binary", 126], ["recv"], ["binary", 70000], ["recv"],
                             ["close"]]})
    assert out[1]["text"] == "héllo"
    assert [o["binary_len"] for o in out if "binary_len" in o] == [10, 126, 70000]
    assert all(o["pattern_ok"] for o in out if "binary_len" in o)


def test_ping_pong_both_ways(server):
    out = drive({"url": "ws://127.0.0.1:%d/echo" % server.port,
                 "actions": [["ping"], ["text", "ping-me"], ["recv"], ["close"]]})
    # the server's ping is answered inside recv(); the server says so after seeing our pong
    assert out[2]["text"] == "pong-seen"
    assert server.pongs == 1


def test_server_close_code_surfaced(server):
    out = drive({"url": "ws://127.0.0.1:%d/echo" % server.port,
                 "actions": [["text", "close-me"], ["recv"], ["text", "after"]]})
    assert out[1]["closed"] == 4001 and out[1]["reason"] == "done here"
    assert out[2]["closed"] == 4001  # sending on a closed socket says so


def test_oversize_message_closes_with_1009(server):
    out = drive({"url": "ws://127.0.0.1:%d/echo" % server.port, "max_message": 1000,
                 "actions": [["text", "big:5000"], ["recv"], ["recv"]]})
    assert out[1]["error"] == "MessageTooBig"
    assert out[2]["closed"] == 1009


def test_fragments_with_interleaved_ping_are_reassembled():
    s = RawServer([frame(1, b"frag", fin=False), frame(9, b"p1"), frame(0, b"ment", fin=False),
                   frame(0, b"ed", fin=True), frame(2, b"\x01\x02")])
    try:
        out = drive({"url": "ws://127.0.0.1:%d/" % s.port,
                     "actions": [["recv"], ["recv"], ["close"]]})
    finally:
        s.stop()
    assert out[0]["text"] == "fragmented"
    assert out[1]["binary_len"] == 2
    # the client answered the ping with a masked pong carrying the same payload
    assert s.received[0] == 0x8A and s.received[1] == 0x80 | 2


def test_protocol_violations_close_with_1002():
    for bad in (frame(3, b"x"), bytes([0xC1, 0x01]) + b"x", bytes([0x81, 0x81]) + b"abcdx",
                frame(0, b"orphan"), frame(9, b"x", fin=False)):
        s = RawServer([bad])
        try:
            out = drive({"url": "ws://127.0.0.1:%d/" % s.port, "actions": [["recv"]]})
        finally:
            s.stop()
        assert out[0]["error"] == "WsProtocolError", bad
        assert s.received[:2] == bytes([0x88, 0x80 | len(s.received[6:])])
        assert s.received[2:4] != b"" and len(s.received) >= 8


def test_wrong_accept_key_rejected():
    s = RawServer([], accept_ok=False)
    try:
        out = drive({"url": "ws://127.0.0.1:%d/" % s.port, "actions": []})
    finally:
        s.stop()
    assert out[0]["connect"] == "HandshakeError"


def test_tls_echo_and_wrong_ca(pki):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki["server_cert"], pki["server_key"])
    s = AioServer(ctx)
    try:
        url = "wss://localhost:%d/echo" % s.port
        out = drive({"url": url, "ca": pki["ca"], "actions": [["text", "secure"], ["recv"]]})
        assert out[1]["text"] == "secure"
        out = drive({"url": url, "ca": pki["other_ca"], "actions": []})
        assert out[0]["connect"] == "TLSError"
    finally:
        s.stop()


def test_silent_tls_peer_times_out_instead_of_hanging(pki):
    # accepts TCP, never answers the TLS handshake, which MicroPython runs inside the first
    # write: the upgrade request's write must time out like the reads do
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        out = drive({"url": "wss://127.0.0.1:%d/" % silent.getsockname()[1], "ca": pki["ca"],
                     "actions": []})
    finally:
        silent.close()
    assert out[0]["connect"] == "NetTimeout", out
