"""The HTTP client against scripted connections (both runtimes): a request left mid-answer
drops its connection, the overall deadline ends a trickling peer (an injected clock steps two
seconds per byte, nothing sleeps), header/1xx/trailer limits, and the per-host 429 gate that
every caller of one client (token, catalog, data) meets without sending a byte."""
import asyncio

from test_realer_https import Cfg

import support
from firmware import log
from firmware.clouds import realer_https as rh
from firmware.net import conn, http
from firmware.outbox import Record

_STALL = "stall"  # the peer sends nothing until the request is cancelled
_TRICKLE = "trickle"  # from here on one byte per read, each two (fake) seconds apart


class FakeClock:
    def __init__(self):
        self.t = 1000

    def __call__(self):
        return self.t


class Reader:
    def __init__(self, script, clock=None):
        self.script = list(script)
        self.clock = clock
        self.stalled = asyncio.Event()
        self.reads = 0
        self.trickle = False

    async def readinto(self, mv):
        self.reads += 1
        await asyncio.sleep_ms(0)
        if self.trickle:
            self.clock.t += 2000
            mv[0] = 0x78
            return 1
        while self.script and isinstance(self.script[0], str):  # a mark, not bytes
            mark = self.script.pop(0)  # consumed: after the cancel the next bytes flow
            if mark == _TRICKLE:
                self.trickle = True
                return await self.readinto(mv)
            self.stalled.set()
            await asyncio.Event().wait()
        if not self.script:
            return 0
        data = self.script[0]
        n = min(len(mv), len(data))
        mv[:n] = data[:n]
        if n == len(data):
            self.script.pop(0)
        else:
            self.script[0] = data[n:]
        return n


class Writer:
    def __init__(self):
        self.sent = []
        self.closed = False

    def write(self, data):
        if self.closed:
            raise OSError(32)
        self.sent.append(bytes(data))

    async def drain(self):
        pass

    def close(self):
        self.closed = True

    async def wait_closed(self):
        pass


class Peers:
    """Stands in for conn.open_connection: each new connection takes the next script."""

    def __init__(self, *scripts, clock=None, connect_ms=0):
        self.scripts = list(scripts)
        self.clock = clock
        self.connect_ms = connect_ms
        self.opened = []  # (reader, writer) per connection, in order

    async def open(self, host, port, secure, ca_file, timeout_ms):
        if self.clock is not None:
            self.clock.t += self.connect_ms
        pair = (Reader(self.scripts.pop(0), self.clock), Writer())
        self.opened.append(pair)
        return pair

    def sent(self):
        return sum(len(w.sent) for _, w in self.opened)


def _with(peers, fn):
    saved = conn.open_connection
    conn.open_connection = peers.open
    lines: list = []
    log.set_sink(lines.append)
    try:
        return fn(), lines
    finally:
        conn.open_connection = saved
        log.set_sink(None)


def _ok(body=b"fresh"):
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body


def test_a_request_cancelled_mid_body_takes_its_connection_along():
    # the rest of the cancelled answer, then a stale answer, must never reach the next request
    first = [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", _STALL,
             b"defghijHTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nstale"]
    peers = Peers(first, [_ok()])
    client = http.Client()

    async def main():
        task = asyncio.create_task(client.request("POST", "http://h/data", json={"a": 1}))
        await peers_ready(peers)
        await peers.opened[0][0].stalled.wait()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        return await client.request("POST", "http://h/logout", json={})

    resp, _ = _with(peers, lambda: support.run(main()))
    assert (resp.status, resp.body) == (200, b"fresh")
    assert len(peers.opened) == 2 and peers.opened[0][1].closed
    assert b"POST /logout" in peers.opened[1][1].sent[0]


async def peers_ready(peers):
    for _ in range(1000):  # loop steps, not time: the request opens its connection
        if peers.opened:
            return
        await asyncio.sleep_ms(0)
    raise AssertionError("the request never connected")


def test_a_trickling_peer_meets_the_overall_deadline_and_a_stall_is_logged():
    clock = FakeClock()
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"
    peers = Peers([head, _TRICKLE], [_ok()], clock=clock)
    client = http.Client(deadline_ms=60000, max_body=200000, now=clock)

    async def main():
        err = await support.araises(conn.DeadlineExceeded,
                                    client.request("GET", "http://h/catalog"))
        return err, await client.request("GET", "http://h/catalog")

    (err, resp), lines = _with(peers, lambda: support.run(main()))
    reader, writer = peers.opened[0]
    assert reader.reads <= 32  # each read was 2 s: the 60 s deadline ended it, not the body
    assert writer.closed and client.stalls == 1
    assert isinstance(err, conn.NetTimeout)  # transient for every caller
    stalls = [ln for ln in lines if "stalled" in ln]
    assert len(stalls) == 1 and "GET /catalog" in stalls[0] and " W " in stalls[0]
    assert resp.status == 200 and len(peers.opened) == 2  # the next request is fine


class Socket:
    closed = False

    def close(self):
        self.closed = True


class MpWriter(Writer):
    """MicroPython's asyncio Stream: close() does nothing, wait_closed() closes `s`."""

    def __init__(self):
        super().__init__()
        self.s = Socket()

    def close(self):
        pass

    async def wait_closed(self):
        self.s.close()


def test_a_dropped_connection_closes_its_socket_at_once_on_micropython():
    # an answer with Connection: close, then a new request: the old socket must be closed
    # before (not when the GC finalises it), or the board holds two TLS sessions
    answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    peers = Peers([answer], [_ok()])
    peers_open = peers.open

    async def open_mp(*args):
        reader, _ = await peers_open(*args)
        writer = MpWriter()
        peers.opened[-1] = (reader, writer)
        return reader, writer

    peers.open = open_mp
    client = http.Client()

    async def main():
        first = await client.request("GET", "http://h/a")
        closed_before_next = peers.opened[0][1].s.closed
        second = await client.request("GET", "http://h/b")
        return first, closed_before_next, second

    (first, closed_before_next, second), _ = _with(peers, lambda: support.run(main()))
    assert first.status == 200 and second.status == 200 and len(peers.opened) == 2
    assert closed_before_next, "the dropped connection's socket is still open"


def test_a_connect_that_used_the_whole_deadline_sends_nothing():
    clock = FakeClock()
    peers = Peers([_ok()], clock=clock, connect_ms=61000)
    client = http.Client(deadline_ms=60000, now=clock)
    _with(peers, lambda: support.raises(conn.DeadlineExceeded, support.run,
                                        client.request("GET", "http://h/x")))
    assert peers.sent() == 0 and peers.opened[0][1].closed


def _read(data):
    c = http.Stream(support.StepReader(data, 64), None)
    return support.run(http.Client()._read_response(c, "GET", 1000, 1000, None))


def test_interim_answers_trailers_and_header_bytes_are_bounded():
    cont = b"HTTP/1.1 100 Continue\r\n\r\n"
    assert _read(cont * 2 + _ok(b"x"))[0].status == 200  # a few are fine
    support.raises(http.HttpProtocolError, _read, cont * 50 + _ok(b"x"))
    trailers = b"T: v\r\n" * 40  # one name again and again counts as 40 lines
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n"
    assert _read(chunked + b"T: 1\r\n\r\n")[0].body == b"a"
    support.raises(http.HttpProtocolError, _read, chunked + trailers + b"\r\n")
    many = b"HTTP/1.1 200 OK\r\n" + b"Set-Cookie: a=b\r\n" * 60 + b"\r\n"
    support.raises(http.HttpProtocolError, _read, many)
    fat = b"".join(b"H%d: %s\r\n" % (i, b"v" * 600) for i in range(20))  # 20 lines, 12K
    support.raises(http.HttpProtocolError, _read, b"HTTP/1.1 200 OK\r\n" + fat + b"\r\n")


def _too_many(seconds=30):
    return b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: %d\r\nContent-Length: 0\r\n\r\n" \
        % seconds


def test_after_429_with_retry_after_nothing_goes_to_that_host_until_it_expires():
    clock = FakeClock()
    peers = Peers([_too_many(), _ok(b"late")], [_ok(b"other")], clock=clock)
    client = http.Client(now=clock)

    def run():
        assert support.run(client.request("POST", "http://h/data", json={})).status == 429
        sent = peers.sent()
        clock.t += 29999
        for method, path in (("POST", "/token"), ("GET", "/catalog"), ("POST", "/data")):
            e = support.raises(http.RateLimited, support.run,
                               client.request(method, "http://h" + path))
            assert 0 < e.wait_ms <= 1 and isinstance(e, conn.NetError)
        assert peers.sent() == sent  # nothing went out
        assert support.run(client.request("GET", "http://other/x")).body == b"other"
        clock.t += 1
        return support.run(client.request("GET", "http://h/catalog"))

    resp, lines = _with(peers, run)
    assert resp.body == b"late"
    assert any("429" in ln and "30 s" in ln for ln in lines)


def test_a_429_without_retry_after_closes_nothing():
    peers = Peers([b"HTTP/1.1 429 X\r\nContent-Length: 0\r\n\r\n" + _ok()])
    client = http.Client(now=FakeClock())
    resps, _ = _with(peers, lambda: [support.run(client.request("GET", "http://h/a"))
                                     for _ in range(2)])
    assert [r.status for r in resps] == [429, 200]


def test_realer_token_catalog_and_data_all_wait_out_the_429_and_keep_the_record():
    clock = FakeClock()
    token = b'{"access_token": "tok-1", "renew_after": 3600}'
    script = [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(token) + token,
              _too_many(), b"HTTP/1.1 201 Created\r\nContent-Length: 32\r\n\r\n"
              b'{"code":2000,"status":"created"}']
    peers = Peers(script, clock=clock)
    cloud = rh.RealerHttps(Cfg(), http.Client(now=clock))
    rec = Record("1-1", "sensor", 7, "5", 1777025700)

    def run():
        res = support.run(cloud.send([rec]))
        assert not res.ok and res.failed  # the 429: kept
        sent = peers.sent()
        clock.t += 10000
        support.raises(http.RateLimited, support.run, cloud.send([rec]))
        support.raises(http.RateLimited, support.run, cloud.poll_catalog(None))
        support.raises(http.RateLimited, support.run, cloud.authenticate(force=True))
        assert peers.sent() == sent
        clock.t += 20000
        return support.run(cloud.send([rec]))

    res, _ = _with(peers, run)
    assert res.ok == ["1-1"]
