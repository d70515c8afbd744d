"""A connection being opened is closed wherever a cancel lands (both runtimes): in the TCP
connect, between the connect and its caller (asyncio.wait_for can lose a result that way), in
the TLS handshake / first write, while waiting for the peer's first answer. The supervisor, the
uplink's health task and the MQTT session loop cancel tasks that may be connecting; a socket
such a cancel dropped stayed open (on the board: a TLS session's memory) until the GC found
it, and on the unix port's plain sockets for good. Each test sweeps the cancel over every
step of the loop (sleep_ms(0) between start and cancel, 0, 1, 2, ... steps) against a local
peer that reads and never answers, and waits until the peer saw every connection end."""
import asyncio

from test_stall_bounds import _server

import support
from firmware.net import conn, http, mqtt, ws

_BOUND_MS = 10000  # bounds a failure only: a closed socket's end reaches the peer at once
# Each wait of the clients: short, as CPython 3.11's wait_for loses a cancel that lands as
# its awaitable ends, and the client then runs on until its next wait times out (closing
# the socket all the same). A step the machine makes this slow ends in that error instead.
_TIMEOUT_MS = 500


class Peer:
    """Accepts, reads everything, never answers; counts connections still open."""

    def __init__(self):
        self.accepted = 0
        self.open = 0
        self.got = 0

    async def serve(self, reader, writer):
        self.accepted += 1
        self.open += 1
        try:
            while True:
                data = await reader.read(512)
                if not data:
                    break
                self.got += len(data)
        except Exception:  # a reset is an end too
            pass
        finally:
            self.open -= 1
            try:
                writer.close()
                await writer.wait_closed()
            except Exception:
                pass


async def _all_ended(peer, what):
    waited = 0
    while peer.open and waited < _BOUND_MS:
        await asyncio.sleep_ms(10)
        waited += 10
    if peer.open:
        raise AssertionError("%s: %d of %d connections still open at the peer" %
                             (what, peer.open, peer.accepted))


async def _sweep(start, steps, until_done=False):
    """Cancels start() after 0, 1, ... steps; returns (peer, steps at which start() had
    finished by itself). A result that came is closed as its caller would."""
    peer = Peer()
    server, port = await _server(peer.serve)
    finished = []
    try:
        for k in range(steps):
            t = asyncio.create_task(start(port))
            for _ in range(k):
                await asyncio.sleep_ms(0)
            t.cancel()
            try:
                got = await t
            except BaseException:  # CancelledError, or the error the cancel turned into
                got = None
            if got is not None:
                finished.append(k)
                await (got.close() if hasattr(got, "close") else conn.close(got[1]))
                if until_done:
                    break
            await _all_ended(peer, "cancelled after %d steps" % k)
    finally:
        server.close()
    return peer, finished


def test_open_connection_cancelled_at_any_step_leaves_no_socket():
    async def start(port):
        return await conn.open_connection("127.0.0.1", port, False, None, _TIMEOUT_MS)

    peer, finished = support.run(_sweep(start, 60, until_done=True))
    assert finished, "the sweep never reached a finished connect: %d accepted" % peer.accepted
    assert peer.accepted >= 2, peer.accepted


def test_mqtt_connect_cancelled_at_any_step_leaves_no_socket():
    async def start(port):
        c = mqtt.Client("mqtt://127.0.0.1:%d" % port, "dev", timeout_ms=_TIMEOUT_MS)
        await c.connect()  # the peer never sends CONNACK
        return c

    peer, finished = support.run(_sweep(start, 30))
    assert not finished
    assert peer.got > 0, "no cancel landed after the CONNECT was written"


def test_websocket_connect_cancelled_at_any_step_leaves_no_socket():
    async def start(port):
        return await ws.connect("ws://127.0.0.1:%d/ws" % port, timeout_ms=_TIMEOUT_MS)

    peer, finished = support.run(_sweep(start, 30))
    assert not finished
    assert peer.got > 0, "no cancel landed after the upgrade request was written"


def test_http_request_cancelled_at_any_step_leaves_no_socket():
    client = http.Client(timeout_ms=_TIMEOUT_MS)

    async def start(port):
        await client.request("POST", "http://127.0.0.1:%d/x" % port, body=b"reading")

    peer, finished = support.run(_sweep(start, 30))
    assert not finished and not client._conns
    assert peer.got > 0, "no cancel landed after the request was written"
