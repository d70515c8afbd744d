"""Random and mutated server byte streams into the WebSocket reader: only named errors escape."""
import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.net import conn, http, ws
from support import StepReader

GOOD = [b"\x81\x05hello", b"\x01\x03abc\x89\x00\x80\x02de", b"\x82\x7e\x00\x80" + b"z" * 128,
        b"\x88\x02\x03\xe8"]


class Writer:
    def write(self, data):
        pass

    async def drain(self):
        pass

    def close(self):
        pass

    async def wait_closed(self):
        pass


def feed(data, step):
    sock = ws.WebSocket(http.Stream(StepReader(data, step), Writer()), 4096, 1000)

    async def run():
        for _ in range(4):
            await sock.recv()

    try:
        asyncio.run(run())
    except conn.NetError:
        pass  # WsError, WsClosed, Closed...: the named errors are the contract


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400), st.integers(1, 64))
def test_random_bytes(data, step):
    feed(data, step)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(GOOD), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)),
                                       max_size=5), st.integers(1, 64))
def test_mutated_frames(base, flips, step):
    data = bytearray(base)
    for pos, val in flips:
        data[pos % len(data)] = val
    feed(bytes(data), step)
