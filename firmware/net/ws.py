"""WebSocket client (RFC 6455) on asyncio streams, for DeviceHive.

`connect(url)` does the HTTP/1.1 upgrade (checking Sec-WebSocket-Accept) over plain TCP or
verified TLS and returns a `WebSocket`: `send_text`, `send_binary`, `recv` (str for text,
bytes for binary, fragments reassembled), `ping`, `close`. Client frames are masked with a
fresh key each; pings are answered inside `recv`; a message over `max_message` closes the
connection with 1009; any protocol violation by the server closes it with 1002. Every
failure is a named error, never a bare exception from the parser.

Nothing waits without end: the handshake (connect, TLS, upgrade answer) and each message,
from its first frame header to its last byte, have an overall deadline, and the upgrade's
header lines and a message's fragments are counted, so a server that trickles or never ends
a message meets a limit, not just a read timeout per byte.
"""
import binascii
import hashlib
import os
import struct

from micropython import const

from firmware.net import conn
from firmware.net.http import HttpProtocolError, Stream, parse_header_line, parse_status_line

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONT = const(0)
TEXT = const(1)
BINARY = const(2)
CLOSE = const(8)
PING = const(9)
PONG = const(10)
_DEFAULT_MAX = const(16384)
_DEFAULT_TIMEOUT_MS = const(15000)
_MAX_CONTROL = const(125)
_DEFAULT_DEADLINE_MS = const(60000)  # the whole handshake; one whole message
_MAX_HEADERS = const(48)
_MAX_HEADER_BYTES = const(8192)
_MAX_FRAGMENTS = const(128)  # frames of one message (empty continuations cost no bytes)


class WsError(conn.NetError):
    """Base of WebSocket failures."""


class HandshakeError(WsError):
    """The server did not upgrade the connection properly."""


class WsProtocolError(WsError):
    """The server broke RFC 6455 (masked frame, reserved bits, bad opcode, bad UTF-8...)."""


class MessageTooBig(WsError):
    """A message exceeded max_message; the connection was closed with 1009."""


class WsClosed(WsError):
    """The connection is closed; `code` and `reason` are the server's (1005: none given)."""

    def __init__(self, code=1005, reason=""):
        super().__init__("closed %d %s" % (code, reason))
        self.code = code
        self.reason = reason


def accept_key(key):
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (both base64 text)."""
    digest = hashlib.sha1(key.encode() + _GUID).digest()
    return binascii.b2a_base64(digest).decode().strip()


def apply_mask(buf, key):
    """XOR bytearray buf in place with the 4-byte key (masking and unmasking alike)."""
    k0, k1, k2, k3 = key[0], key[1], key[2], key[3]
    n = len(buf)
    i = 0
    while i + 4 <= n:
        buf[i] ^= k0
        buf[i + 1] ^= k1
        buf[i + 2] ^= k2
        buf[i + 3] ^= k3
        i += 4
    while i < n:
        buf[i] ^= key[i & 3]
        i += 1


def encode_frame(opcode, payload, fin=True, key=None):
    """One masked client frame. `key` (4 bytes) is random unless a test fixes it."""
    key = key or os.urandom(4)
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        head = struct.pack("!BB", b0, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", b0, 0x80 | 127, n)
    body = bytearray(payload)
    apply_mask(body, key)
    return head + key + body


def parse_header(b0, b1):
    """(fin, opcode, masked, length code) of a frame's first two bytes; raises on RSV bits
    and unknown opcodes."""
    if b0 & 0x70:
        raise WsProtocolError("reserved bits set without an extension")
    opcode = b0 & 0x0F
    if opcode not in (CONT, TEXT, BINARY, CLOSE, PING, PONG):
        raise WsProtocolError("unknown opcode %d" % opcode)
    fin = bool(b0 & 0x80)
    if opcode >= CLOSE and (not fin or (b1 & 0x7F) > _MAX_CONTROL):
        raise WsProtocolError("control frame fragmented or longer than 125 bytes")
    return fin, opcode, bool(b1 & 0x80), b1 & 0x7F


class WebSocket:
    def __init__(self, stream, max_message, timeout_ms, deadline_ms=_DEFAULT_DEADLINE_MS):
        self.s = stream
        self.max_message = max_message
        self.timeout_ms = timeout_ms
        self.deadline_ms = deadline_ms
        self.closed = None  # WsClosed once closed

    async def _send(self, opcode, payload):
        if self.closed:
            raise self.closed
        try:
            await conn.send(self.s.writer, encode_frame(opcode, payload), self.timeout_ms)
        except Exception as e:  # socket gone: the connection is over
            raise conn.as_net_error(e, "websocket send")

    async def send_text(self, text):
        await self._send(TEXT, text.encode())

    async def send_binary(self, data):
        await self._send(BINARY, data)

    async def ping(self, data=b""):
        await self._send(PING, data)

    async def close(self, code=1000, reason=""):
        if not self.closed:
            try:
                await self._send(CLOSE, struct.pack("!H", code) + reason.encode()[:120])
            except conn.NetError:
                pass
            self.closed = WsClosed(code, reason)
        await conn.close(self.s.writer)

    async def _fail(self, code, err):
        await self.close(code, str(err)[:60])
        raise err

    async def _read(self, n, timeout_ms):
        parts: list = []
        await self.s.read_n(n, lambda c: parts.append(bytes(c)), timeout_ms)
        return b"".join(parts)

    async def _frame_header(self, timeout_ms):
        head = await self._read(2, timeout_ms)
        fin, opcode, masked, n = parse_header(head[0], head[1])
        if n >= 126:
            wide = n == 127
            n = struct.unpack("!Q" if wide else "!H", await self._read(8 if wide else 2,
                                                                       timeout_ms))[0]
        if masked:
            raise WsProtocolError("server frames must not be masked")
        return fin, opcode, n

    async def recv(self, timeout_ms=None):
        """The next whole message: str (text) or bytes (binary). Answers pings on the way.
        Raises WsClosed when the server closed, other WsError/NetError on failure."""
        if self.closed:
            raise self.closed
        timeout_ms = timeout_ms or self.timeout_ms
        parts: list = []
        size = frames = 0
        kind = None
        try:
            while True:
                fin, opcode, n = await self._frame_header(timeout_ms)
                if kind is None and opcode < CLOSE:  # a message starts: it has a deadline
                    self.s.deadline = conn.Until(self.deadline_ms)
                if opcode >= CLOSE:
                    data = await self._read(n, timeout_ms)
                    if opcode == PING:
                        await self._send(PONG, data)
                    elif opcode == CLOSE:
                        await self._closed_by_server(data)
                    continue
                if opcode == CONT and kind is None:
                    raise WsProtocolError("continuation without a first frame")
                if opcode != CONT and kind is not None:
                    raise WsProtocolError("new message inside a fragmented one")
                if kind is None:
                    kind = opcode
                frames += 1
                if frames > _MAX_FRAGMENTS:
                    raise WsProtocolError("message in more than %d frames" % _MAX_FRAGMENTS)
                size += n
                if size > self.max_message:
                    await self._fail(1009, MessageTooBig("message over %d bytes" %
                                                         self.max_message))
                await self.s.read_n(n, lambda c: parts.append(bytes(c)), timeout_ms)
                if fin:
                    break
        except WsError as e:
            if isinstance(e, WsProtocolError):
                await self._fail(1002, e)
            raise
        except Exception as e:  # socket failures and timeouts, named in one place
            raise conn.as_net_error(e, "websocket recv")
        finally:
            self.s.deadline = None
        data = b"".join(parts)
        if kind == TEXT:
            try:
                return data.decode()
            except UnicodeError:
                await self._fail(1007, WsProtocolError("text message is not UTF-8"))
        return data

    async def _closed_by_server(self, data):
        code, reason = 1005, ""
        if len(data) >= 2:
            code = struct.unpack("!H", data[:2])[0]
            try:
                reason = data[2:].decode()
            except UnicodeError:
                reason = ""
        elif len(data) == 1:
            raise WsProtocolError("close frame with a 1-byte body")
        if not self.closed:
            try:
                await self._send(CLOSE, data[:2])  # echo the code: the closing handshake
            except conn.NetError:
                pass
        self.closed = WsClosed(code, reason)
        await conn.close(self.s.writer)
        raise self.closed


async def connect(url, headers=None, ca_file=None, timeout_ms=_DEFAULT_TIMEOUT_MS,
                  max_message=_DEFAULT_MAX, deadline_ms=_DEFAULT_DEADLINE_MS):
    scheme, host, port, path, secure = conn.parse_url(url)
    if scheme not in ("ws", "wss"):
        raise conn.URLError("not a WebSocket URL: %r" % url)
    what = "websocket handshake"
    until = conn.Until(deadline_ms)
    reader, writer = await conn.open_connection(host, port, secure, ca_file,
                                                until.cap(timeout_ms, what))
    stream = Stream(reader, writer)
    stream.deadline = until
    key = binascii.b2a_base64(os.urandom(16)).decode().strip()
    lines = ["GET %s HTTP/1.1" % path, "Host: %s:%d" % (host, port), "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Key: " + key, "Sec-WebSocket-Version: 13"]
    for k, v in (headers or {}).items():
        lines.append("%s: %s" % (k, v))
    try:
        await conn.send(writer, ("\r\n".join(lines) + "\r\n\r\n").encode(),
                        until.cap(timeout_ms, what))
        status, _ = parse_status_line(await stream.readline(timeout_ms))
        got: dict = {}
        count = size = 0
        while True:
            line = await stream.readline(timeout_ms)
            if not line:
                break
            count += 1
            size += len(line)
            if count > _MAX_HEADERS or size > _MAX_HEADER_BYTES:
                raise HttpProtocolError("upgrade answer with more than %d header lines or %d "
                                        "bytes" % (_MAX_HEADERS, _MAX_HEADER_BYTES))
            name, value = parse_header_line(line)
            got[name] = value
    except HttpProtocolError as e:
        await conn.close(writer)
        raise HandshakeError(str(e))
    except Exception as e:
        await conn.close(writer)
        raise conn.as_net_error(e, "websocket handshake")
    except BaseException:  # a cancel: the socket must not outlive it
        conn.close_now(writer)
        raise
    if status != 101 or got.get("upgrade", "").lower() != "websocket":
        await conn.close(writer)
        raise HandshakeError("server answered %d, not 101 websocket" % status)
    if got.get("sec-websocket-accept") != accept_key(key):
        await conn.close(writer)
        raise HandshakeError("wrong Sec-WebSocket-Accept")
    stream.deadline = None  # from here on each message has its own
    return WebSocket(stream, max_message, timeout_ms, deadline_ms)
