"""MQTT 5 and 3.1.1 client on asyncio streams: the codec, one session, and a reconnecting run loop.

`Client.connect()` opens one session (plain TCP for mqtt://, verified TLS for mqtts://) and
starts two tasks: a reader that dispatches every incoming packet, and a pinger that sends
PINGREQ when the link has been quiet for half the keepalive. Silence for a whole keepalive
means a dead peer: the session ends with NetTimeout. `publish(qos=1)` keeps up to `window`
PUBLISHes in flight (fewer if the broker's Receive Maximum says so) and matches PUBACKs by
packet id; unacknowledged ones are sent again with DUP set after a reconnect. `run()` keeps a
session up: connect with backoff, re-subscribe, resend, repeat.

Every failure is a named error: CONNACK refusals map to BadCredentials / NotAuthorized /
ServerUnavailable / ConnectRefused (the first two are
CredentialsRefused), SUBACK failures to SubscribeDenied, a PUBLISH over the broker's Maximum
Packet Size to PacketTooLarge (refused before it is sent or kept), and any malformed
packet (bad remaining length, unknown property, oversize) to MqttProtocolError, which closes
the connection (with DISCONNECT 0x81 on MQTT 5), never the loop.
"""
import asyncio
import struct
from time import ticks_diff, ticks_ms

from micropython import const

from firmware import log
from firmware.backoff import Backoff
from firmware.net import conn

_TAG = "mqtt"
CONNECT = const(1)
CONNACK = const(2)
PUBLISH = const(3)
PUBACK = const(4)
SUBSCRIBE = const(8)
SUBACK = const(9)
UNSUBSCRIBE = const(10)
UNSUBACK = const(11)
PINGREQ = const(12)
PINGRESP = const(13)
DISCONNECT = const(14)
AUTH = const(15)

# Property identifiers (MQTT 5, section 2.2.2.2) a caller may set or read
PAYLOAD_FORMAT = const(0x01)
MESSAGE_EXPIRY = const(0x02)
CONTENT_TYPE = const(0x03)
RESPONSE_TOPIC = const(0x08)
CORRELATION_DATA = const(0x09)
SESSION_EXPIRY = const(0x11)
ASSIGNED_CLIENT_ID = const(0x12)
SERVER_KEEP_ALIVE = const(0x13)
REASON_STRING = const(0x1F)
RECEIVE_MAXIMUM = const(0x21)
MAXIMUM_QOS = const(0x24)
USER_PROPERTY = const(0x26)
MAXIMUM_PACKET_SIZE = const(0x27)

_BYTE = const(1)
_U16 = const(2)
_U32 = const(4)
_VARINT = const(5)
_STR = const(6)
_BIN = const(7)
_PAIR = const(8)
# The kind of each property id, indexed by id (0: no such property). A bytes constant stays
# in the frozen image; a dict would be built in RAM at import (256 bytes).
_PROPS = (b"\0\1\4\6\0\0\0\0\6\7\0\5\0\0\0\0"  # 0x00-0x0F
          b"\0\4\6\2\0\6\7\1\4\1\6\0\6\0\0\6"  # 0x10-0x1F
          b"\0\2\2\2\1\1\x08\4\1\1\1")  # 0x20-0x2A


def _kind(pid):
    return _PROPS[pid] if 0 <= pid < len(_PROPS) else 0


_DEFAULT_MAX_PACKET = const(16384)
# A PUBLISH up to this size is built in one preallocated buffer and written in one call (one
# TCP segment: split writes meet Nagle's algorithm and the peer's delayed ACK); a bigger one
# goes as its header from that buffer, then the payload from the caller's own buffer.
_TX_SIZE = const(512)
_TOPICS = const(16)  # encoded topic names kept (a device publishes to a handful)
# connect, TLS, CONNECT and the whole CONNACK: a broker that trickles them meets this, not
# just each read's timeout
_CONNECT_DEADLINE_MS = const(30000)
_DEFAULT_TIMEOUT_MS = const(15000)
_MALFORMED = const(0x81)

# CONNACK: MQTT 3.1.1 return codes and MQTT 5 reason codes, sorted into what a caller does next
_BAD_CREDENTIALS = (4, 0x86)
_NOT_AUTHORIZED = (5, 0x87, 0x8C)
_UNAVAILABLE = (3, 0x88, 0x89, 0x97, 0x9C, 0x9D, 0x9F)


class MqttError(conn.NetError):
    """Base of MQTT failures."""


class MqttProtocolError(MqttError):
    """The peer sent something MQTT does not allow (the connection is closed)."""


class ConnectRefused(MqttError):
    """CONNACK refused the connection; `code` is the return/reason code."""

    def __init__(self, code, reason=""):
        super().__init__("connection refused, code 0x%02x%s" % (code, " " + reason if reason
                                                                 else ""))
        self.code = code


class CredentialsRefused(ConnectRefused):
    """The broker will not take these credentials: retrying with the same ones is pointless,
    fetch new ones. (Mosquitto 2.0 answers a wrong password with NotAuthorized, 0x87 / 5.)"""


class BadCredentials(CredentialsRefused):
    """Wrong user name or password (0x86 / 4)."""


class NotAuthorized(CredentialsRefused):
    """The broker does not let this client connect (0x87 / 5)."""


class ServerUnavailable(ConnectRefused):
    """Busy, unavailable or moved: retry later with backoff."""


class SubscribeDenied(MqttError):
    """SUBACK refused some filters; `denied` is [(filter, code)]. The others are subscribed."""

    def __init__(self, denied):
        super().__init__("subscribe refused: " + ", ".join("%s 0x%02x" % d for d in denied))
        self.denied = denied


class PublishRejected(MqttError):
    """PUBACK carried a failure reason code (MQTT 5), e.g. 0x87 not authorized."""

    def __init__(self, topic, code):
        super().__init__("publish to %s refused, code 0x%02x" % (topic, code))
        self.code = code


class ServerDisconnect(MqttError):
    """The broker sent DISCONNECT (MQTT 5); `code` says why (0x8E: another client took the id)."""

    def __init__(self, code, reason=""):
        super().__init__("broker disconnected us, code 0x%02x%s" % (code, " " + reason if reason
                                                                    else ""))
        self.code = code


class NotConnected(MqttError):
    """No session is open right now."""


class PacketTooLarge(MqttError):
    """The PUBLISH is over the broker's Maximum Packet Size: it was not sent and is not kept
    (the broker would drop the session, and a resend would do it again)."""


_spare: list = []  # (tx, read) buffer pairs from reserve(), for the next Client made


def reserve():
    """Make the buffers of one Client now (1.5K), for an adapter that creates its Client only
    later, after a catalog read: by then the heap is fragmented and may lack a free block of
    1K. Called from the adapter's constructor at start-up, while the heap is whole. One set
    is kept at most (one adapter per firmware)."""
    if not _spare:
        _spare.append((bytearray(_TX_SIZE), conn.new_buf()))


def refusal(code, reason=""):
    """The named ConnectRefused subclass for a CONNACK code."""
    for codes, cls in ((_BAD_CREDENTIALS, BadCredentials), (_NOT_AUTHORIZED, NotAuthorized),
                       (_UNAVAILABLE, ServerUnavailable)):
        if code in codes:
            return cls(code, reason)
    return ConnectRefused(code, reason)


# ---- codec ------------------------------------------------------------------------------

def encode_varint(n):
    if not 0 <= n <= 268435455:
        raise ValueError("variable byte integer out of range")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def decode_varint(buf, pos):
    """(value, next position); at most four bytes, as the standard says."""
    value = 0
    for i in range(4):
        if pos >= len(buf):
            raise MqttProtocolError("truncated variable byte integer")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            return value, pos
    raise MqttProtocolError("variable byte integer longer than 4 bytes")


def _str(s):
    b = s.encode() if isinstance(s, str) else bytes(s)
    if len(b) > 65535:
        raise ValueError("string longer than 65535 bytes")
    return struct.pack("!H", len(b)) + b


def encode_props(props):
    """Property block (length + properties) from {id: value}; USER_PROPERTY takes a list of
    (name, value) pairs, every other id one value."""
    out = bytearray()
    for pid, value in (props or {}).items():
        kind = _kind(pid)
        if not kind:
            raise ValueError("unknown property 0x%02x" % pid)
        for v in (value if kind == _PAIR else (value,)):
            out.append(pid)
            if kind == _BYTE:
                out.append(v)
            elif kind == _U16:
                out += struct.pack("!H", v)
            elif kind == _U32:
                out += struct.pack("!I", v)
            elif kind == _VARINT:
                out += encode_varint(v)
            elif kind == _PAIR:
                out += _str(v[0]) + _str(v[1])
            else:
                out += _str(v)
    return encode_varint(len(out)) + out


class _Reader:
    """Bounds-checked reads from one packet body."""

    def __init__(self, buf, pos=0):
        self.buf = buf
        self.pos = pos

    def left(self):
        return len(self.buf) - self.pos

    def take(self, n):
        if n > self.left():
            raise MqttProtocolError("packet shorter than its fields")
        start = self.pos
        self.pos += n
        return bytes(self.buf[start:self.pos])

    def u8(self):
        return self.take(1)[0]

    def u16(self):
        return struct.unpack("!H", self.take(2))[0]

    def u32(self):
        return struct.unpack("!I", self.take(4))[0]

    def varint(self):
        value, self.pos = decode_varint(self.buf, self.pos)
        return value

    def text(self):
        try:
            return self.take(self.u16()).decode()
        except UnicodeError:
            raise MqttProtocolError("string is not UTF-8")

    def props(self):
        n = self.varint()
        if n > self.left():
            raise MqttProtocolError("property length beyond the packet")
        end = self.pos + n
        props: dict = {}
        while self.pos < end:
            pid = self.varint()
            kind = _kind(pid)
            if not kind:
                raise MqttProtocolError("unknown property 0x%02x" % pid)
            if kind == _BYTE:
                value = self.u8()
            elif kind == _U16:
                value = self.u16()
            elif kind == _U32:
                value = self.u32()
            elif kind == _VARINT:
                value = self.varint()
            elif kind == _PAIR:
                value = (self.text(), self.text())
            elif kind == _BIN:
                value = self.take(self.u16())
            else:
                value = self.text()
            if kind == _PAIR:
                props.setdefault(pid, []).append(value)
            elif pid in props:
                raise MqttProtocolError("property 0x%02x given twice" % pid)
            else:
                props[pid] = value
        if self.pos != end:
            raise MqttProtocolError("property block overruns its length")
        return props


def packet(ptype, flags, body):
    """A whole packet: fixed header then body, built in one buffer (the body copied once)."""
    n = len(body)
    out = bytearray(1 + _varint_len(n) + n)
    out[0] = ptype << 4 | flags
    i = _put_varint(out, 1, n)
    out[i:] = body
    return out


def _varint_len(n):
    return 1 if n < 128 else 2 if n < 16384 else 3 if n < 2097152 else 4


def _put_varint(buf, i, n):
    """Writes n as a variable byte integer at buf[i]; returns the index after it."""
    while True:
        b = n & 0x7F
        n >>= 7
        buf[i] = b | 0x80 if n else b
        i += 1
        if not n:
            return i


def encode_connect(client_id, username=None, password=None, keepalive_s=60, clean=True,
                   v5=True, props=None, will=None):
    """CONNECT. `will` is (topic, payload, qos, retain) or None."""
    flags = 0x02 if clean else 0
    body = bytearray(_str("MQTT") + bytes([5 if v5 else 4]))
    payload = bytearray(_str(client_id))
    if will:
        topic, message, qos, retain = will
        flags |= 0x04 | qos << 3 | (0x20 if retain else 0)
        payload += (encode_props(None) if v5 else b"") + _str(topic) + _str(message)
    if username is not None:
        flags |= 0x80
        payload += _str(username)
    if password is not None:
        flags |= 0x40
        payload += _str(password)
    body.append(flags)
    body += struct.pack("!H", keepalive_s)
    if v5:
        body += encode_props(props)
    return packet(CONNECT, 0, body + payload)


def encode_publish(topic, payload, qos=0, retain=False, pid=0, dup=False, props=None, v5=True):
    """One PUBLISH as a new buffer (tests, rare paths); Client writes its own into a
    preallocated one (Client._put_publish)."""
    t = _topic_bytes(topic)
    if isinstance(payload, str):
        payload = payload.encode()
    pb = encode_props(props) if v5 and props else None
    buf = bytearray(publish_size(len(t), len(payload), qos, pb, v5))
    return buf[:put_publish(buf, t, payload, qos, retain, pid, dup, pb, v5)]


def _topic_bytes(topic):
    if not topic or "+" in topic or "#" in topic:
        raise ValueError("bad topic name %r" % topic)
    t = topic.encode()
    if len(t) > 65535:
        raise ValueError("string longer than 65535 bytes")
    return t


def publish_size(topic_len, payload_len, qos, props, v5):
    """Bytes of a whole PUBLISH (fixed header included) with these parts."""
    n = 2 + topic_len + (2 if qos else 0) + ((len(props) if props else 1) if v5 else 0) + \
        payload_len
    return 1 + _varint_len(n) + n


def put_publish(buf, t, payload, qos, retain, pid, dup, props, v5, with_payload=True):
    """Writes a PUBLISH into buf (large enough: publish_size) without allocating: topic bytes
    t, an encoded property block or None. Returns its length; with_payload=False stops
    before the payload (the caller writes that from its own buffer)."""
    if qos not in (0, 1):
        raise ValueError("QoS must be 0 or 1")
    n = 2 + len(t) + (2 if qos else 0) + ((len(props) if props else 1) if v5 else 0) + \
        len(payload)
    buf[0] = PUBLISH << 4 | (0x08 if dup else 0) | qos << 1 | (1 if retain else 0)
    i = _put_varint(buf, 1, n)
    buf[i] = len(t) >> 8
    buf[i + 1] = len(t) & 0xFF
    i += 2
    buf[i:i + len(t)] = t
    i += len(t)
    if qos:
        buf[i] = pid >> 8
        buf[i + 1] = pid & 0xFF
        i += 2
    if v5:
        if props:
            buf[i:i + len(props)] = props
            i += len(props)
        else:
            buf[i] = 0
            i += 1
    if with_payload:
        buf[i:i + len(payload)] = payload
        i += len(payload)
    return i


def encode_puback(pid, code=0, v5=True):
    return packet(PUBACK, 0, struct.pack("!H", pid) + (bytes([code]) if v5 and code else b""))


def encode_subscribe(pid, filters, v5=True, props=None):
    """SUBSCRIBE for [(filter, qos)]."""
    body = bytearray(struct.pack("!H", pid))
    if v5:
        body += encode_props(props)
    for topic, qos in filters:
        body += _str(topic) + bytes([qos])
    return packet(SUBSCRIBE, 2, body)


def encode_unsubscribe(pid, filters, v5=True):
    body = bytearray(struct.pack("!H", pid))
    if v5:
        body += encode_props(None)
    for topic in filters:
        body += _str(topic)
    return packet(UNSUBSCRIBE, 2, body)


def encode_disconnect(code=0, v5=True, props=None):
    if not v5 or (code == 0 and not props):
        return packet(DISCONNECT, 0, b"")
    return packet(DISCONNECT, 0, bytes([code]) + encode_props(props))


class Message:
    """An incoming PUBLISH. `props` holds its MQTT 5 properties by id (user properties as a
    list of pairs under USER_PROPERTY)."""

    def __init__(self, topic, payload, qos, retain, dup, pid, props):
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.dup = dup
        self.pid = pid
        self.props = props


def decode(first, body, v5=True):
    """One received packet as a tuple (type, ...fields); MqttProtocolError when malformed.

    CONNACK: (2, session_present, code, props)   PUBLISH: (3, Message)
    PUBACK/UNSUBACK/SUBACK: (t, pid, codes or code, props)   PINGRESP: (13,)
    DISCONNECT: (14, code, props)
    """
    ptype, flags = first >> 4, first & 0x0F
    r = _Reader(body)
    if ptype == PUBLISH:
        qos = (flags >> 1) & 3
        if qos > 1:
            raise MqttProtocolError("QoS %d PUBLISH (we subscribe with QoS 1 at most)" % qos)
        topic = r.text()
        if not topic or "+" in topic or "#" in topic:
            raise MqttProtocolError("bad topic name in PUBLISH")
        pid = r.u16() if qos else 0
        if qos and not pid:
            raise MqttProtocolError("packet id 0")
        props = r.props() if v5 else {}
        return PUBLISH, Message(topic, r.take(r.left()), qos, bool(flags & 1), bool(flags & 8),
                                pid, props)
    if flags != (2 if ptype in (6, 8, 10) else 0):
        raise MqttProtocolError("bad flags 0x%x for packet type %d" % (flags, ptype))
    if ptype == CONNACK:
        ack = r.u8()
        if ack & 0xFE:
            raise MqttProtocolError("bad CONNACK flags")
        code = r.u8()
        props = r.props() if v5 and r.left() else {}
        _end(r)
        if props.get(RECEIVE_MAXIMUM) == 0 or props.get(MAXIMUM_PACKET_SIZE) == 0:
            # a protocol error (MQTT 5 3.2.2.3.3/3.2.2.3.6); a send window of 0 would hang
            raise MqttProtocolError("CONNACK with Receive Maximum or Maximum Packet Size 0")
        return CONNACK, bool(ack & 1), code, props
    if ptype == PUBACK:
        pid = r.u16()
        code = r.u8() if v5 and r.left() else 0
        props = r.props() if v5 and r.left() else {}
        _end(r)
        return PUBACK, pid, code, props
    if ptype in (SUBACK, UNSUBACK):
        pid = r.u16()
        props = r.props() if v5 else {}
        codes = list(r.take(r.left()))
        if ptype == SUBACK and not codes:
            raise MqttProtocolError("SUBACK without return codes")
        return ptype, pid, codes, props
    if ptype == PINGRESP:
        _end(r)
        return (PINGRESP,)
    if ptype == DISCONNECT:
        code = r.u8() if r.left() else 0
        props = r.props() if v5 and r.left() else {}
        _end(r)
        return DISCONNECT, code, props
    raise MqttProtocolError("unexpected packet type %d" % ptype)


def _end(r):
    if r.left():
        raise MqttProtocolError("%d stray bytes at the end of a packet" % r.left())


# ---- the client -------------------------------------------------------------------------

def _backlog(writer):
    # bytes written but not yet taken by the socket (MicroPython's stream or CPython's)
    buf = getattr(writer, "out_buf", None)
    return len(buf) if buf is not None else writer.transport.get_write_buffer_size()


def _pulse(event):
    # wake everyone waiting now; later waiters block until the next pulse
    event.set()
    event.clear()


class Client:
    """One MQTT connection at a time. `on_message(Message)` may be a function or a coroutine
    function; a QoS 1 message is acknowledged after it returns (also when it raised: the
    error is logged, so one poison message cannot loop forever)."""

    def __init__(self, url, client_id, username=None, password=None, keepalive_s=60,
                 version=5, clean_start=True, session_expiry_s=0, ca_file=None, window=8,
                 timeout_ms=_DEFAULT_TIMEOUT_MS, max_packet=_DEFAULT_MAX_PACKET,
                 on_message=None):
        scheme, self.host, self.port, _, self.secure = conn.parse_url(url)
        if scheme not in ("mqtt", "mqtts"):
            raise conn.URLError("not an MQTT URL: %s://" % scheme)
        if version not in (4, 5):
            raise ValueError("MQTT version must be 5 or 4 (3.1.1)")
        self.client_id = client_id
        self.username = username
        self.password = password
        log.secret(password)
        self.keepalive_s = keepalive_s
        self.v5 = version == 5
        self.clean_start = clean_start
        self.session_expiry_s = session_expiry_s
        self.ca_file = ca_file
        self.window = max(1, window)
        self.timeout_ms = timeout_ms
        self.max_packet = max_packet
        self.connect_deadline_ms = _CONNECT_DEADLINE_MS
        self.on_message = on_message
        self.subscriptions: dict = {}  # filter -> qos, renewed after every reconnect
        self._inflight: dict = {}  # pid -> [topic, payload, retain, props, result code]
        self._pending: dict = {}  # pid -> [packet type, result] for SUBACK/UNSUBACK
        self._pid = 0
        self._stream = None
        self._tasks: list = []
        self._event = asyncio.Event()  # pulsed on every ack and on session end
        self._closed = asyncio.Event()
        self._send_window = self.window
        self._last_rx = self._last_tx = ticks_ms()
        self._stopping = False
        self.error = None  # why the last session ended
        self.session_present = False
        self.connects = 0
        self.server_props: dict = {}
        # the read buffer (_rbuf) serves every session (one at a time): a reconnect on a
        # fragmented heap needs no new 1K block
        bufs = _spare.pop() if _spare else (bytearray(_TX_SIZE), conn.new_buf())
        self._tx: bytearray = bufs[0]
        self._rbuf: bytearray = bufs[1]
        self._txv = memoryview(self._tx)
        self._topics: dict = {}  # topic -> its UTF-8 bytes

    @property
    def connected(self):
        return self._stream is not None

    # -- session ------------------------------------------------------------------------

    async def connect(self):
        """Open a session; raises a ConnectRefused subclass or a NetError."""
        if self._stream:
            raise MqttError("already connected")
        what = "mqtt connect %s:%d" % (self.host, self.port)
        until = conn.Until(self.connect_deadline_ms)
        reader, writer = await conn.open_connection(self.host, self.port, self.secure,
                                                    self.ca_file, until.cap(self.timeout_ms,
                                                                            what))
        stream = conn.Stream(reader, writer, self._rbuf)
        try:
            props = None
            if self.v5:
                props = {MAXIMUM_PACKET_SIZE: self.max_packet}
                if self.session_expiry_s:
                    props[SESSION_EXPIRY] = self.session_expiry_s
            await conn.send(writer, encode_connect(self.client_id, self.username, self.password,
                                                   self.keepalive_s, self.clean_start, self.v5,
                                                   props), until.cap(self.timeout_ms, what))
            pkt: tuple = await asyncio.wait_for(self._read_packet(stream, self.timeout_ms),
                                         until.cap(until.ms, what) / 1000)
            if pkt is None or pkt[0] != CONNACK:
                raise MqttProtocolError("expected CONNACK, got packet type %d" %
                                        (pkt[0] if pkt else PUBACK))
            _, present, code, props = pkt
            if code:
                raise refusal(code, props.get(REASON_STRING, ""))
        except BaseException as e:  # a cancel too: the socket must not outlive it
            conn.close_now(writer)
            if not isinstance(e, Exception):
                raise
            if isinstance(e, asyncio.TimeoutError) and until.remaining_ms() == 0:
                e = conn.DeadlineExceeded("no CONNACK within %d ms" % until.ms)
            raise conn.as_net_error(e, what)
        self.session_present = present
        self.server_props = props
        self._send_window = min(self.window, props.get(RECEIVE_MAXIMUM, 65535))
        self.keepalive_s = props.get(SERVER_KEEP_ALIVE, self.keepalive_s)
        self._stream = stream
        self.error = None
        self.connects += 1
        self._closed = asyncio.Event()
        self._last_rx = self._last_tx = ticks_ms()
        self._tasks = [asyncio.create_task(self._read_loop(stream))]
        if self.keepalive_s:
            self._tasks.append(asyncio.create_task(self._ping_loop()))
        log.info(_TAG, "connected to %s:%d as %s (MQTT %s)", self.host, self.port,
                 self.client_id, "5" if self.v5 else "3.1.1")
        await self._resend_inflight()

    async def _resend_inflight(self):
        for pid in sorted(self._inflight):
            topic, payload, retain, props, _ = self._inflight[pid]
            await self._send_publish(topic, payload, 1, retain, pid, True, props)

    async def disconnect(self, code=0):
        """DISCONNECT (with a reason on MQTT 5) and close; in-flight messages are kept."""
        if self._stream:
            try:
                await self._send(encode_disconnect(code, self.v5))
            except conn.NetError:
                pass
        await self._end(None)

    async def wait_closed(self):
        """Returns when the current session ends (at once when there is none)."""
        if self._stream:
            await self._closed.wait()
        return self.error

    async def _end(self, error):
        stream, self._stream = self._stream, None
        if stream is None:
            return
        self.error = error
        current = asyncio.current_task()
        for t in self._tasks:
            if t is not current:
                t.cancel()
        self._tasks = []
        await conn.close(stream.writer)
        self._closed.set()
        _pulse(self._event)
        if error is not None:
            log.warn(_TAG, "session with %s:%d ended: %s", self.host, self.port,
                     log.describe(error))

    # -- sending ------------------------------------------------------------------------

    async def _send(self, data, more=None):
        """Write data (then `more`, when given) and wait until it left, at most timeout_ms.
        A write the socket took at once needs no drain: no timer task per packet."""
        stream = self._stream
        if stream is None:
            raise NotConnected("not connected")
        try:
            w = stream.writer
            w.write(data)
            if more is not None:
                w.write(more)
            if _backlog(w):
                await asyncio.wait_for(w.drain(), self.timeout_ms / 1000)
        except Exception as e:  # the socket is gone: the session is over
            err = conn.as_net_error(e, "mqtt send")
            await self._end(err)
            raise err
        self._last_tx = ticks_ms()

    def _topic(self, topic):
        t = self._topics.get(topic)
        if t is None:
            t = _topic_bytes(topic)
            if len(self._topics) >= _TOPICS:
                self._topics.clear()
            self._topics[topic] = t
        return t

    def _put_publish(self, topic, payload, qos, retain, pid, dup, props):
        """Builds the PUBLISH in self._tx and returns its length, negated when the payload
        did not fit and was left out (no tuple: this path allocates nothing). Raises
        PacketTooLarge over the broker's Maximum Packet Size."""
        t = self._topic(topic)
        pb = encode_props(props) if self.v5 and props else None
        size = publish_size(len(t), len(payload), qos, pb, self.v5)
        limit = self.server_props.get(MAXIMUM_PACKET_SIZE)
        if limit and size > limit:
            raise PacketTooLarge("%d-byte PUBLISH to %s is over the broker's %d-byte limit" %
                                 (size, topic, limit))
        whole = size <= len(self._tx)
        if not whole and size - len(payload) > len(self._tx):
            raise PacketTooLarge("PUBLISH header over %d bytes" % len(self._tx))
        n = put_publish(self._tx, t, payload, qos, retain, pid, dup, pb, self.v5, whole)
        return n if whole else -n

    async def _send_publish(self, topic, payload, qos, retain, pid, dup, props):
        n = self._put_publish(topic, payload, qos, retain, pid, dup, props)
        await self._send(self._txv[:abs(n)], None if n > 0 else payload)

    def _next_pid(self):
        while True:
            self._pid = self._pid % 65535 + 1
            if self._pid not in self._inflight and self._pid not in self._pending:
                return self._pid

    async def publish(self, topic, payload, qos=0, retain=False, props=None, wait=True):
        """Send one message. QoS 1 waits for a free slot in the in-flight window; with
        wait=True it then waits for the PUBACK (PublishRejected for a failure code) and
        returns the packet id, with wait=False it returns the packet id at once.

        If the session ends before the PUBACK, the message stays in flight and is sent again
        (DUP) on the next connect; a waiting caller gets the NetError meanwhile."""
        if isinstance(payload, str):
            payload = payload.encode()
        if qos == 0:
            await self._send_publish(topic, payload, 0, retain, 0, False, props)
            return 0
        while len(self._inflight) >= self._send_window:
            self._check_session()
            await self._event.wait()
        self._check_session()
        pid = self._next_pid()
        # built and handed to the socket before anything else runs: the one buffer is free
        # again when write() returns (what the socket did not take, the stream copied)
        n = self._put_publish(topic, payload, qos, retain, pid, False, props)
        entry = [topic, payload, retain, props, None]
        self._inflight[pid] = entry
        await self._send(self._txv[:abs(n)], None if n > 0 else payload)
        if wait:
            while entry[4] is None:
                self._check_session()
                await self._event.wait()
            if entry[4] >= 0x80:
                raise PublishRejected(topic, entry[4])
        return pid

    def _check_session(self):
        if self._stream is None:
            raise self.error or NotConnected("not connected")

    @property
    def inflight(self):
        return len(self._inflight)

    async def flush(self):
        """Wait until every QoS 1 message in flight is acknowledged."""
        while self._inflight:
            self._check_session()
            await self._event.wait()

    async def subscribe(self, filters, qos=1):
        """Subscribe to one filter or a list; returns the granted codes, raises
        SubscribeDenied for refused filters (the others stay subscribed and are renewed
        after every reconnect)."""
        if isinstance(filters, str):
            filters = [filters]
        pairs = [(f, qos) for f in filters]
        codes = await self._request(SUBSCRIBE, encode_subscribe, pairs)
        if len(codes) != len(pairs):
            raise MqttProtocolError("SUBACK has %d codes for %d filters" % (len(codes),
                                                                          len(pairs)))
        denied = []
        for (f, q), code in zip(pairs, codes):
            if code >= 0x80:
                denied.append((f, code))
                self.subscriptions.pop(f, None)
            else:
                self.subscriptions[f] = q
        if denied:
            raise SubscribeDenied(denied)
        return codes

    async def unsubscribe(self, filters):
        if isinstance(filters, str):
            filters = [filters]
        for f in filters:
            self.subscriptions.pop(f, None)
        return await self._request(UNSUBSCRIBE, encode_unsubscribe, filters)

    async def _request(self, ptype, encoder, items):
        pid = self._next_pid()
        entry = [ptype, None]
        self._pending[pid] = entry
        try:
            await self._send(encoder(pid, items, self.v5))
            await asyncio.wait_for(self._answer(entry), self.timeout_ms / 1000)
        except asyncio.TimeoutError:
            raise conn.NetTimeout("no %s from the broker" % ("SUBACK" if ptype == SUBSCRIBE
                                                             else "UNSUBACK"))
        finally:
            self._pending.pop(pid, None)
        return entry[1]

    async def _answer(self, entry):
        while entry[1] is None:
            self._check_session()
            await self._event.wait()

    # -- receiving ----------------------------------------------------------------------

    async def _read_packet(self, stream, timeout_ms):
        """The next packet, decoded; None for a PUBACK, which is handled here without
        allocating (the hot path of publishing). Reads straight from the stream's buffer:
        a body that fits is decoded in place once it is there whole (a body cut at the
        buffer's end is moved to its start by _fill, no second buffer kept for it); only one
        larger than the buffer is gathered in a bytearray of its own."""
        if stream.start == stream.end:
            await stream._fill(timeout_ms)
        first = stream.buf[stream.start]
        stream.start += 1
        length = shift = 0
        while True:
            if stream.start == stream.end:
                await stream._fill(timeout_ms)
            b = stream.buf[stream.start]
            stream.start += 1
            length |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift >= 28:
                raise MqttProtocolError("remaining length longer than 4 bytes")
        size = 2 + shift // 7 + length  # the whole packet, as Maximum Packet Size counts it
        if size > self.max_packet:
            raise MqttProtocolError("packet of %d bytes is over the %d allowed" %
                                    (size, self.max_packet))
        if length <= len(stream.buf):
            while stream.end - stream.start < length:
                await stream._fill(timeout_ms)
            start = stream.start
            stream.start += length
            if first == PUBACK << 4 and (length == 2 or (length == 3 and self.v5)):
                buf = stream.buf  # (with properties it takes the full decoder below)
                self._puback(buf[start] << 8 | buf[start + 1], buf[start + 2] if length > 2
                             else 0)
                return None
            return decode(first, stream.mv[start:start + length], self.v5)
        rx = memoryview(bytearray(length))
        got = 0
        while got < length:
            if stream.start == stream.end:
                await stream._fill(timeout_ms)
            take = min(length - got, stream.end - stream.start)
            rx[got:got + take] = stream.mv[stream.start:stream.start + take]
            stream.start += take
            got += take
        return decode(first, rx[:length], self.v5)

    def _puback(self, pid, code):
        entry = self._inflight.pop(pid, None)
        if entry is not None:
            entry[4] = code
            if code >= 0x80:
                log.warn(_TAG, "PUBACK for %s: code 0x%02x", entry[0], code)
        _pulse(self._event)

    async def _read_loop(self, stream):
        try:
            while True:
                timeout = self.keepalive_s * 1000 if self.keepalive_s else 86400000
                try:
                    pkt = await self._read_packet(stream, timeout)
                except asyncio.TimeoutError:
                    raise conn.NetTimeout("no packet from the broker for %d s (dead peer)" %
                                          self.keepalive_s)
                self._last_rx = ticks_ms()
                if pkt is not None:  # None: a PUBACK, already handled
                    await self._dispatch(pkt)
        except asyncio.CancelledError:
            raise
        except MqttProtocolError as e:
            if self.v5:
                try:
                    await conn.send(stream.writer, encode_disconnect(_MALFORMED, True), 1000)
                except Exception:  # the connection is being dropped anyway
                    pass
            await self._end(e)
        except Exception as e:
            await self._end(conn.as_net_error(e, "mqtt read"))

    async def _dispatch(self, pkt):
        ptype = pkt[0]
        if ptype == PUBLISH:
            await self._deliver(pkt[1])
        elif ptype == PUBACK:
            self._puback(pkt[1], pkt[2])
        elif ptype in (SUBACK, UNSUBACK):
            entry = self._pending.get(pkt[1])
            if entry is None or entry[0] != ptype - 1:
                raise MqttProtocolError("ack for unknown packet id %d" % pkt[1])
            entry[1] = pkt[2]
            _pulse(self._event)
        elif ptype == DISCONNECT:
            raise ServerDisconnect(pkt[1], pkt[2].get(REASON_STRING, ""))
        elif ptype != PINGRESP:
            raise MqttProtocolError("unexpected packet type %d" % ptype)

    async def _deliver(self, msg):
        if self.on_message is not None:
            try:
                result = self.on_message(msg)
                if hasattr(result, "send"):  # a coroutine
                    await result
            except Exception as e:  # a handler bug must not take the session down
                log.exc(_TAG, "handler failed on a message for %s" % msg.topic, e)
        if msg.qos:
            await self._send(encode_puback(msg.pid, 0, self.v5))

    async def _ping_loop(self):
        # ping when either direction has been quiet for half the keepalive; the reader's
        # keepalive-long read timeout then catches a peer that stopped answering, and this
        # loop one that trickles: no whole packet (not even the PINGRESP) for 1.5 keepalives
        half = self.keepalive_s * 500
        try:
            while True:
                now = ticks_ms()
                if ticks_diff(now, self._last_rx) >= 3 * half:
                    await self._end(conn.NetTimeout(
                        "no whole packet from the broker for %d ms (stalled peer)" %
                        (3 * half)))
                    return
                idle = max(ticks_diff(now, self._last_tx), ticks_diff(now, self._last_rx))
                if idle >= half:
                    await self._send(packet(PINGREQ, 0, b""))
                    idle = 0
                await asyncio.sleep_ms(max(50, half - idle))
        except conn.NetError:  # _send has ended the session and recorded why
            pass

    # -- staying connected --------------------------------------------------------------

    async def run(self, prepare=None, on_connect=None, base_ms=1000, cap_ms=60000):
        """Keep a session up until stop(): connect (after `await prepare(self)`, which may
        refresh credentials), re-subscribe, call `await on_connect(self)`, wait for the end,
        back off, repeat. Bad credentials back off like any other refusal, so `prepare` can
        fetch new ones."""
        backoff = Backoff(base_ms, cap_ms)
        self._stopping = False
        while not self._stopping:
            try:
                if prepare is not None:
                    await prepare(self)
                await self.connect()
                if self.subscriptions:
                    filters = list(self.subscriptions.items())
                    for f, q in filters:
                        try:
                            await self.subscribe(f, q)
                        except SubscribeDenied as e:
                            log.warn(_TAG, "re-subscribe: %s", log.describe(e))
                if on_connect is not None:
                    await on_connect(self)
                backoff.reset()
                await self.wait_closed()
            except asyncio.CancelledError:
                await self._end(None)
                raise
            except Exception as e:  # every failure is retried; the reason is logged
                log.warn(_TAG, "connect to %s:%d failed: %s", self.host, self.port,
                         log.describe(e))
                err = conn.as_net_error(e, "mqtt session")
                await self._end(err)
                self.error = err  # prepare() may act on it (refused credentials)
            if not self._stopping:
                await asyncio.sleep_ms(backoff.next_ms())

    async def stop(self):
        self._stopping = True
        await self.disconnect()
