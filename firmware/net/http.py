"""HTTP/1.1 client on asyncio streams: one kept-alive connection per host, bounded memory.

A `Client` keeps one connection per (host, port, TLS) and reuses it, so a board sending a
reading every few seconds pays one TLS handshake, not one per request. When the server has
closed an idle connection, the request is sent again on a new one only if replaying it is
safe: GET/HEAD/PUT/DELETE, or a request the caller marks `idempotent=True` (it carries an
idempotency key such as Realer's message_id). Each connection reads through one
preallocated buffer with readinto; a response larger than `max_body` is refused and the
connection dropped, so a bad server cannot exhaust the heap.

Nothing waits without end: each request has an overall deadline (connect, TLS, request,
answer), header lines, interim 1xx answers and trailers are counted, and a stall is logged.
A request that leaves before reading its whole answer (an error, a cancellation, Ctrl-C)
closes its connection, so no later request reads that answer as its own. A 429 carrying
Retry-After closes the host to every caller of the client until it passes (RFC 6585 4,
RFC 9110 10.2.3): the token, catalog and data calls share the client, so one gate covers
them all, and a request meanwhile fails fast with RateLimited, sending nothing.
"""
import asyncio
import binascii
import json as _json
import sys
from time import ticks_ms

from micropython import const

from firmware import clock, log
from firmware.backoff import retry_after_ms as _retry_after
from firmware.net import conn

_TAG = "http"
_MAX_HEADERS = const(48)
_MAX_HEADER_BYTES = const(8192)  # all header lines of one answer together
_MAX_INTERIM = const(4)  # 100 Continue, 103 Early Hints: a few at most, not a stream
_MAX_TRAILERS = const(16)
_DEFAULT_TIMEOUT_MS = const(15000)  # any single wait: connect, a write, one read
_DEFAULT_DEADLINE_MS = const(60000)  # the whole exchange, however steadily a peer trickles
_MAX_GATE_MS = const(3600000)  # a 429's Retry-After closes a host for an hour at most
_DEFAULT_MAX_BODY = const(16384)
_IN_PLACE = sys.implementation.name == "micropython"  # requests built in the read buffer
_SAFE_METHODS = ("GET", "HEAD", "PUT", "DELETE", "OPTIONS")
_UNRESERVED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"


class HttpError(conn.NetError):
    """Base of HTTP-level failures."""


class HttpProtocolError(HttpError):
    """The server's answer is not valid HTTP/1.1 (or lines/headers beyond our limits)."""


class RateLimited(HttpError):
    """The host answered 429 with Retry-After, which has not passed: the request was not
    sent. Transient: the caller keeps its data and comes back after `wait_ms`."""

    def __init__(self, msg, wait_ms):
        super().__init__(msg)
        self.wait_ms = wait_ms


class BodyTooLarge(HttpError):
    """The response body is larger than the caller allowed."""


class NotReplayed(HttpError):
    """The kept-alive connection died before the answer and the request is not safe to send
    twice; the caller decides (its outbox keeps the record)."""


def basic_auth(user, password):
    """The Authorization value for HTTP Basic; registered as a secret (it encodes one)."""
    raw = ("%s:%s" % (user, password)).encode()
    value = "Basic " + binascii.b2a_base64(raw).decode().strip()
    log.secret(value[6:])
    return value


def bearer(token):
    return "Bearer " + token


def form_encode(fields):
    """application/x-www-form-urlencoded body from a dict (UTF-8, percent-encoded)."""
    parts = []
    for k, v in fields.items():
        parts.append(_quote(str(k)) + "=" + _quote(str(v)))
    return "&".join(parts).encode()


def _quote(text):
    out = []
    for b in text.encode():
        if b in _UNRESERVED:
            out.append(chr(b))
        elif b == 0x20:
            out.append("+")
        else:
            out.append("%%%02X" % b)
    return "".join(out)


def parse_status_line(line):
    """(status, reason) from b'HTTP/1.1 200 OK'."""
    parts = bytes(line).split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise HttpProtocolError("bad status line %r" % bytes(line[:40]))
    try:
        status = int(parts[1])
    except ValueError:
        raise HttpProtocolError("bad status code %r" % parts[1][:8])
    if not 100 <= status <= 599:
        raise HttpProtocolError("status %d out of range" % status)
    try:
        reason = parts[2].decode() if len(parts) > 2 else ""
    except UnicodeError:
        reason = ""  # the reason phrase is decoration; the status code is what counts
    return status, reason


def parse_header_line(line):
    """(lower-case name, value) from b'Name: value'."""
    line = bytes(line)
    colon = line.find(b":")
    if colon <= 0 or line[:1] in (b" ", b"\t"):
        raise HttpProtocolError("bad header line %r" % line[:40])
    try:
        return line[:colon].decode().strip().lower(), line[colon + 1:].decode().strip()
    except UnicodeError:
        raise HttpProtocolError("header is not text")


def parse_chunk_size(line):
    size = bytes(line).split(b";", 1)[0].strip()
    try:
        n = int(size, 16)
    except ValueError:
        raise HttpProtocolError("bad chunk size %r" % size[:16])
    if n < 0:
        raise HttpProtocolError("negative chunk size")
    return n


class Response:
    """`body` is bytes-like: a bytearray when the answer had a Content-Length, else bytes."""

    def __init__(self, status, reason, headers, body):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body

    def json(self):
        """The body as JSON; ValueError when it is not."""
        return _json.loads(self.body)

    def retry_after_ms(self, now_unix=None):
        return _retry_after(self.headers.get("retry-after"), now_unix)


class Stream(conn.Stream):
    """conn.Stream whose over-long lines are HTTP protocol errors (HTTP and WebSocket)."""

    LineError = HttpProtocolError


class _Collect:
    """Body sink into memory, refusing more than `limit` bytes. A body of known length
    (`expect`: Content-Length) goes into one bytearray of that size: no pieces, no joined
    copy of them, so a catalog answer needs one block of its size, not three."""

    def __init__(self, limit):
        self.limit = limit
        self.parts: list = []
        self.size = 0
        self.whole = None

    def expect(self, n):
        if n:
            self.whole = bytearray(n)

    def __call__(self, chunk):
        start = self.size
        self.size += len(chunk)
        if self.size > self.limit:
            raise BodyTooLarge("response body over %d bytes" % self.limit)
        if self.whole is not None:
            self.whole[start:self.size] = chunk
        else:
            self.parts.append(bytes(chunk))

    def value(self):
        if self.whole is not None:
            return self.whole
        parts = self.parts
        if len(parts) == 1:  # no second copy of a body that came in one piece
            return parts[0]
        return b"".join(parts)


class Client:
    """Keep-alive HTTP/1.1 client. `handshakes` counts new connections (TLS handshakes on
    https), for the keep-alive benchmark and the status line. `now` is the tick clock of
    the deadlines and the 429 gate (tests inject one)."""

    def __init__(self, ca_file=None, timeout_ms=_DEFAULT_TIMEOUT_MS, max_body=_DEFAULT_MAX_BODY,
                 user_agent="esp32-firmware/1", deadline_ms=_DEFAULT_DEADLINE_MS, now=None):
        self.ca_file = ca_file
        self.timeout_ms = timeout_ms
        self.deadline_ms = deadline_ms
        self.max_body = max_body
        self.user_agent = user_agent
        self.now = now or ticks_ms
        self.handshakes = 0
        self.stalls = 0
        self._conns: dict = {}
        # host -> conn.Until: a 429 with Retry-After closes the host to every caller till then
        self._gates: dict = {}
        # tasks share the client; one request at a time keeps answers on their requests
        self._lock = asyncio.Lock()
        # ...so its connections share one read buffer, made now while the heap is whole: a
        # reconnect on a fragmented heap needs no new 1K block (bench/memory.md)
        self._buf = conn.new_buf()

    async def close(self):
        for c in self._conns.values():
            await conn.close(c.writer)
        self._conns = {}

    # Closes at once, without awaiting: also runs while a request is being cancelled.
    def _forget(self, key):
        c = self._conns.pop(key, None)
        if c is not None:
            conn.close_now(c.writer)

    def _check_gate(self, host, method, path):
        g = self._gates.get(host)
        if g is None:
            return
        left = g.remaining_ms()
        if left <= 0:
            del self._gates[host]
            return
        raise RateLimited("%s %s: %s asked to wait (429 Retry-After); %d ms left, not sent" %
                          (method, path, host, left), left)

    async def request(self, method, url, headers=None, body=None, json=None, form=None,
                      idempotent=None, timeout_ms=None, max_body=None, sink=None,
                      deadline_ms=None):
        """Send one request; returns a Response. With `sink`, body bytes go to
        sink(memoryview) as they arrive (Response.body is then b"") and no size limit
        applies. The whole exchange (connect, TLS, request, answer) ends within
        `deadline_ms` (each single wait within `timeout_ms`). Raises NetError subclasses
        (RateLimited, without sending, while the host's Retry-After runs); never returns a
        half-read response, and a request left before its whole answer was read (error,
        cancellation, Ctrl-C) takes its connection with it."""
        u = conn.parse_url(url)
        host, path = u[1], u[3]
        self._check_gate(host, method, path)  # fail fast, without queueing behind the lock
        async with self._lock:
            self._check_gate(host, method, path)  # a 429 may have come while we queued
            return await self._request(method, url, headers, body, json, form, idempotent,
                                       timeout_ms, max_body, sink, deadline_ms)

    async def _request(self, method, url, headers, body, json, form, idempotent, timeout_ms,
                       max_body, sink, deadline_ms):
        scheme, host, port, path, secure = conn.parse_url(url)
        timeout_ms = timeout_ms or self.timeout_ms
        until = conn.Until(deadline_ms or self.deadline_ms, self.now)
        ctype = None
        if json is not None:
            body, ctype = _json.dumps(json).encode(), "application/json"
        elif form is not None:
            body, ctype = form_encode(form), "application/x-www-form-urlencoded"
        elif isinstance(body, str):
            body = body.encode()
        head = self._head(method, host, port, secure, path, headers, ctype, body)
        replay_ok = idempotent if idempotent is not None else method in _SAFE_METHODS
        key = (host, port, secure)
        what = "%s %s" % (method, path)
        for attempt in (0, 1):
            c = self._conns.get(key)
            reused = c is not None
            done = False
            try:
                if c is None:
                    reader, writer = await conn.open_connection(
                        host, port, secure, self.ca_file, until.cap(timeout_ms, what))
                    self.handshakes += 1
                    c = self._conns[key] = Stream(reader, writer, self._buf)
                c.got_bytes = False
                c.deadline = until
                await conn.send(c.writer, self._message(c, head, body),
                                until.cap(timeout_ms, what))
                resp, keep = await self._read_response(c, method, timeout_ms,
                                                       max_body or self.max_body, sink)
                if c.start != c.end and c.buf is self._buf:
                    c.detach()  # bytes beyond the answer (pipelined): not for the next one
                done = True
            except Exception as e:  # the connection's state is unknown now: drop it
                self._forget(key)
                err = conn.as_net_error(e, what)
                if isinstance(err, conn.NetTimeout) and until.remaining_ms() <= 0:
                    self.stalls += 1
                    log.warn(_TAG, "%s on %s: peer stalled, no complete answer within %d ms; "
                             "connection dropped", what, host, until.ms)
                    err = conn.DeadlineExceeded("%s: no complete answer within %d ms" %
                                                (what, until.ms))
                stale = reused and c is not None and not c.got_bytes and \
                    isinstance(err, conn.Closed)
                if stale and attempt == 0:
                    if replay_ok:
                        continue
                    raise NotReplayed("%s: kept-alive connection closed before the "
                                      "answer; not replayed" % what)
                raise err
            finally:
                if not done:  # cancelled or interrupted mid-answer: the rest must not be
                    self._forget(key)  # read as the next request's answer
                elif c is not None:
                    c.deadline = None
            if resp.status == 429:
                self._close_gate(host, resp)
            if not keep:
                self._forget(key)
            return resp
        raise conn.Closed("unreachable")  # the loop always returns or raises

    # Head and body go in one write (in separate segments they meet Nagle + delayed ACK).
    # On MicroPython they are copied into the shared read buffer when they fit: it is idle
    # until the answer comes (no connection on it holds unread bytes), so a request
    # needs no block of its whole size on a fragmented heap; asyncio's writer copies what
    # the socket did not take and drain() sends it all before the answer is read. (CPython
    # 3.12's transports keep a view of unsent bytes: there, a copy.)
    def _message(self, c, head, body):
        if not body:
            return head
        n = len(head) + len(body)
        buf = self._buf
        if n > len(buf) or not _IN_PLACE or c.buf is not buf:
            return head + body
        buf[:len(head)] = head
        buf[len(head):n] = body
        return memoryview(buf)[:n]

    def _close_gate(self, host, resp):
        try:
            now_unix = clock.unix_time()
        except clock.ClockUnset:
            now_unix = None
        wait = resp.retry_after_ms(now_unix)
        if wait:
            wait = min(wait, _MAX_GATE_MS)
            self._gates[host] = conn.Until(wait, self.now)
            log.warn(_TAG, "%s answered 429: no request to it for %d s", host, wait // 1000)

    def _head(self, method, host, port, secure, path, headers, ctype, body):
        default_port = 443 if secure else 80
        hostval = host if port == default_port else "%s:%d" % (host, port)
        lines = ["%s %s HTTP/1.1" % (method, path), "Host: " + hostval,
                 "User-Agent: " + self.user_agent]
        if ctype:
            lines.append("Content-Type: " + ctype)
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append("Content-Length: %d" % len(body or b""))
        if headers:
            for k, v in headers.items():
                lines.append("%s: %s" % (k, v))
        lines.append("\r\n")
        return "\r\n".join(lines).encode()

    # Header lines (count and bytes), interim 1xx answers and trailers are all bounded: a
    # peer sending them forever meets a limit, not just the deadline.
    async def _read_headers(self, c, timeout_ms, headers, limit):
        size = count = 0
        while True:
            line = await c.readline(timeout_ms)
            if not line:
                return
            size += len(line)
            count += 1  # lines, not names: a repeated name must count too
            if count > limit or size > _MAX_HEADER_BYTES:
                raise HttpProtocolError("more than %d header lines or %d bytes" %
                                        (limit, _MAX_HEADER_BYTES))
            name, value = parse_header_line(line)
            headers[name] = value

    async def _read_response(self, c, method, timeout_ms, max_body, sink):
        interim = 0
        while True:
            status, reason = parse_status_line(await c.readline(timeout_ms))
            headers: dict = {}
            await self._read_headers(c, timeout_ms, headers, _MAX_HEADERS)
            if status >= 200 or status == 101:
                break
            interim += 1  # 1xx interim answers are skipped, a few of them
            if interim > _MAX_INTERIM:
                raise HttpProtocolError("more than %d interim 1xx answers" % _MAX_INTERIM)
        collect = None
        if sink is None:
            collect = _Collect(max_body)
            sink = collect
        keep = headers.get("connection", "").lower() != "close"
        if method == "HEAD" or status in (204, 304):
            pass
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                n = parse_chunk_size(await c.readline(timeout_ms))
                if n == 0:
                    await self._read_headers(c, timeout_ms, {}, _MAX_TRAILERS)
                    break
                if collect is not None and collect.size + n > max_body:
                    raise BodyTooLarge("response body over %d bytes" % max_body)
                await c.read_n(n, sink, timeout_ms)
                if await c.readline(timeout_ms):
                    raise HttpProtocolError("chunk not followed by CRLF")
        elif "content-length" in headers:
            try:
                n = int(headers["content-length"])
            except ValueError:
                raise HttpProtocolError("bad Content-Length")
            if n < 0:
                raise HttpProtocolError("bad Content-Length")
            if collect is not None:
                if n > max_body:
                    raise BodyTooLarge("response body of %d bytes over %d" % (n, max_body))
                collect.expect(n)
            await c.read_n(n, sink, timeout_ms)
        else:  # body until close
            keep = False
            try:
                while True:
                    if c.start == c.end:
                        await c._fill(timeout_ms)
                    await c.read_n(c.end - c.start, sink, timeout_ms)
            except conn.Closed:
                pass
        return Response(status, reason, headers, collect.value() if collect else b""), keep

    async def download(self, url, path, headers=None, timeout_ms=None, deadline_ms=None):
        """Stream a GET body to a file in buffer-sized writes (OTA), never holding it in RAM;
        returns the Response (body empty) and the byte count. Check resp.status before
        trusting the file."""
        written = [0]
        f = open(path, "wb")
        try:
            def sink(chunk):
                f.write(chunk)
                written[0] += len(chunk)

            resp = await self.request("GET", url, headers=headers, timeout_ms=timeout_ms,
                                      sink=sink, deadline_ms=deadline_ms)
        finally:
            f.close()
        return resp, written[0]
