"""Opening a connection for every client: URL parsing, plain TCP or verified TLS, the one
place where socket, TLS and timeout failures become named errors, and `Stream`, the one
preallocated read buffer each connection reads through.

ESP32's lwIP and mbedTLS report some failures with their own numbers (negative mbedTLS codes,
113/118 for unreachable hosts); they are listed once here so every client reads them alike.
"""
import asyncio
import sys
from time import ticks_add, ticks_diff, ticks_ms

from micropython import const

from firmware.net import tls

_BUF_SIZE = const(1024)
_MAX_LINE = const(1024)

# Tables as tuples: constants of the frozen image, where a dict would be built in RAM
_SCHEMES = ("http", "https", "ws", "wss", "mqtt", "mqtts")
_DEFAULT_PORTS = (80, 443, 80, 443, 1883, 8883)  # of each scheme above
_SECURE = ("https", "wss", "mqtts")
# errno -> meaning, ESP32 and POSIX alike
_ERRNO_TEXT = (
    (104, "connection reset"), (110, "timed out"), (111, "connection refused"),
    (113, "host unreachable"), (118, "host unreachable"), (32, "broken pipe"),
    (-202, "DNS lookup failed"), (-29312, "TLS connection closed by peer"),
    (-30592, "TLS handshake failed"), (-9984, "TLS certificate verification failed"),
)


class NetError(Exception):
    """Base of every network failure a client reports."""


class ConnectError(NetError):
    """No connection: refused, unreachable, DNS."""


class NetTimeout(NetError):
    """Connect or read took longer than allowed (a blackholed or stalled peer)."""


class DeadlineExceeded(NetTimeout):
    """The whole exchange (connect, TLS, request, answer) outlived its overall deadline: a
    peer trickling bytes keeps every single read under its timeout, never the sum."""


class TLSError(NetError):
    """The TLS handshake failed: unknown CA, wrong host name, expired certificate."""


class Closed(NetError):
    """The peer closed the connection (or reset it) while we were talking."""


class ProtocolError(NetError):
    """The peer sent something its protocol does not allow (here: a line beyond our limit)."""


class URLError(ValueError):
    """The URL cannot be used: unknown scheme, no host, bad port."""


def parse_url(url):
    """(scheme, host, port, path, secure) from `scheme://host[:port][/path]`."""
    if not isinstance(url, str) or "://" not in url:
        raise URLError("not an absolute URL: %r" % (url,))
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if scheme not in _SCHEMES:
        raise URLError("unsupported scheme %r" % scheme)
    slash = rest.find("/")
    hostport, path = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
    port = _DEFAULT_PORTS[_SCHEMES.index(scheme)]
    if hostport.startswith("["):  # [::1]:8443
        end = hostport.find("]")
        host, tail = hostport[1:end], hostport[end + 1:]
        if tail.startswith(":"):
            port = _port(tail[1:], url)
    elif ":" in hostport:
        host, p = hostport.rsplit(":", 1)
        port = _port(p, url)
    else:
        host = hostport
    if not host:
        raise URLError("no host in %r" % url)
    return scheme, host, port, path, scheme in _SECURE


def _port(text, url):
    try:
        port = int(text)
    except ValueError:
        raise URLError("bad port in %r" % url)
    if not 0 < port < 65536:
        raise URLError("bad port in %r" % url)
    return port


def describe_errno(e):
    code = e.args[0] if e.args and isinstance(e.args[0], int) else None
    if code is None:
        return str(e)
    for n, text in _ERRNO_TEXT:
        if n == code:
            return text
    return "errno %s" % code


def as_net_error(e, what):
    """The named error for exception e raised while doing `what`."""
    if isinstance(e, NetError):
        return e
    if isinstance(e, asyncio.TimeoutError):
        return NetTimeout("%s: timed out" % what)
    if isinstance(e, ValueError):  # mbedTLS verification failures arrive as ValueError
        return TLSError("%s: %s" % (what, str(e).strip() or "TLS failure"))
    if isinstance(e, OSError):
        code = e.args[0] if e.args else None
        text = describe_errno(e)
        if isinstance(code, int) and code < -9000:
            return TLSError("%s: %s" % (what, text))
        if code in (104, 32, -29312):
            return Closed("%s: %s" % (what, text))
        if code == 110:
            return NetTimeout("%s: %s" % (what, text))
        return ConnectError("%s: %s" % (what, text))
    if isinstance(e, EOFError):
        return Closed("%s: closed by peer" % what)
    return NetError("%s: %s" % (what, e))


class Until:
    """An overall deadline in tick time; `now` is injectable (tests step a fake clock)."""

    def __init__(self, ms, now=None):
        self.now = now or ticks_ms
        self.ms = int(ms)
        self.at = ticks_add(self.now(), self.ms)

    def remaining_ms(self):
        return max(0, ticks_diff(self.at, self.now()))

    def cap(self, timeout_ms, what):
        """timeout_ms, shortened to what is left; DeadlineExceeded when nothing is."""
        left = self.remaining_ms()
        if left <= 0:
            raise DeadlineExceeded("%s: no complete exchange within %d ms" % (what, self.ms))
        return min(timeout_ms, left)


def new_buf():
    """A read buffer for Stream."""
    return bytearray(_BUF_SIZE)


class Stream:
    """A connection and its one read buffer (bytes [start, end) of buf are read, not yet
    consumed): bounded lines and exact-length reads, shared by the HTTP, WebSocket and MQTT
    clients. A line longer than the buffer raises `LineError`. With `deadline` (an Until)
    set, no read waits beyond it, however steadily the peer trickles. `buf` lets a client
    that reads one connection at a time keep one buffer for all of them (`new_buf()`,
    allocated once at start-up), so a reconnect needs no new 1K block from a fragmented
    heap; a connection that ends an exchange with bytes unread then gets its own (`detach`)."""

    LineError: type = ProtocolError

    def __init__(self, reader, writer, buf=None):
        self.reader = reader
        self.writer = writer
        self.buf = buf if buf is not None else new_buf()
        self.mv = memoryview(self.buf)
        self.start = 0
        self.end = 0
        self.got_bytes = False
        self.deadline = None

    def detach(self):
        """Move the unread bytes into a buffer of this stream's own."""
        buf = new_buf()
        n = self.end - self.start
        buf[:n] = self.mv[self.start:self.end]
        self.buf, self.mv, self.start, self.end = buf, memoryview(buf), 0, n

    async def _fill(self, timeout_ms):
        if self.start == self.end:
            self.start = self.end = 0
        elif self.end == len(self.buf):  # keep unread bytes, make room behind them
            n = self.end - self.start
            self.buf[:n] = self.mv[self.start:self.end]
            self.start, self.end = 0, n
        if self.end == len(self.buf):
            raise self.LineError("line longer than %d bytes" % _MAX_LINE)
        d = self.deadline
        if d is not None:
            timeout_ms = d.cap(timeout_ms, "read")
        try:
            n = await asyncio.wait_for(self.reader.readinto(self.mv[self.end:]),
                                       timeout_ms / 1000)
        except asyncio.TimeoutError:
            if d is not None and d.remaining_ms() == 0:  # the whole, not this read, ran out
                raise DeadlineExceeded("read: no complete exchange within %d ms" % d.ms)
            raise
        if not n:
            raise Closed("closed by server")
        self.got_bytes = True
        self.end += n

    async def readline(self, timeout_ms):
        while True:
            i = self.buf.find(b"\n", self.start, self.end)
            if i >= 0:
                line = bytes(self.mv[self.start:i])
                self.start = i + 1
                return line[:-1] if line.endswith(b"\r") else line
            if self.end - self.start >= _MAX_LINE:
                raise self.LineError("line longer than %d bytes" % _MAX_LINE)
            await self._fill(timeout_ms)

    # Passes exactly n body bytes to sink(memoryview) in buffer-sized pieces.
    async def read_n(self, n, sink, timeout_ms):
        while n > 0:
            if self.start == self.end:
                await self._fill(timeout_ms)
            take = min(n, self.end - self.start)
            sink(self.mv[self.start:self.start + take])
            self.start += take
            n -= take


async def open_connection(host, port, secure, ca_file, timeout_ms):
    """(reader, writer) to host:port; TLS verified against ca_file when secure. The socket
    is closed on every way out but the return: an error, the timeout, a cancel (also one
    that lands after the connect, when wait_for would drop the streams it had)."""
    ctx = tls.context(ca_file) if secure else None
    what = "connect %s:%d" % (host, port)
    made: list = []  # the socket (MicroPython) or writer (CPython) once it exists
    try:
        return await asyncio.wait_for(_open(host, port, ctx, made), timeout_ms / 1000)
    except BaseException as e:  # a cancel included: nothing here may outlive it
        for s in made:
            close_now(s)
        if isinstance(e, Exception):  # every failure leaves here as a NetError
            raise as_net_error(e, what)
        raise


if sys.implementation.name == "micropython":
    # asyncio.open_connection of MicroPython 1.29, holding the socket in `made` from its
    # creation: asyncio's own drops it, unclosed, when a cancel or wait_for's timeout lands
    # in its wait for the connect, or when wrap_socket fails (no memory for another TLS
    # session); the board's socket (and TLS session) then stays until the GC finalises it,
    # a plain unix-port socket for good. (The wait uses asyncio's I/O queue, as asyncio's.)
    def _open(host, port, ctx, made):
        import socket
        from errno import EINPROGRESS

        ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
        s = socket.socket(ai[0], ai[1], ai[2])
        made.append(s)
        s.setblocking(False)
        try:
            s.connect(ai[-1])
        except OSError as e:
            if e.errno != EINPROGRESS:
                raise
        if ctx is not None:
            s = made[0] = ctx.wrap_socket(s, server_hostname=host,
                                          do_handshake_on_connect=False)  # it owns the socket
            s.setblocking(False)
        yield asyncio.core._io_queue.queue_write(s)  # type: ignore[attr-defined]  # not in stubs
        stream = asyncio.StreamWriter(s)
        return stream, stream
else:
    # CPython's open_connection closes its own socket on a cancel
    async def _open(host, port, ctx, made):  # type: ignore[misc]  # the host runtime's variant
        if ctx is None:
            r, w = await asyncio.open_connection(host, port)
        else:
            r, w = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=host)
        made.append(w)
        return r, w


async def send(writer, data, timeout_ms):
    """Write data and wait until it left, at most timeout_ms. On TLS the first write also
    runs the handshake, so a peer that accepted and went silent must time out here too."""
    writer.write(data)
    await asyncio.wait_for(writer.drain(), timeout_ms / 1000)


async def close(writer):
    try:
        writer.close()
        await writer.wait_closed()
    except Exception:  # closing a dead socket may fail; nothing is left to save
        pass


def close_now(writer):
    """Close a connection at once, from code that cannot await (a request being cancelled).
    MicroPython's asyncio Stream.close() does nothing, its socket closes in wait_closed():
    a connection dropped with close() alone stayed open (a second TLS session on the board,
    the peer still connected) until the GC finalised the socket."""
    try:
        writer.close()  # (a bare MicroPython socket: closed here at once)
        sock = getattr(writer, "s", None)  # MicroPython's Stream; CPython's has none
        if sock is not None:
            sock.close()
    except Exception:  # a dead socket may refuse to close; it is gone either way
        pass
