"""Random and mutated HTTP responses into the client's parser: only its named errors escape."""
import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.net import conn, http
from support import StepReader

GOOD = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 429 Too Many\r\nRetry-After: 3\r\nContent-Length: 2\r\n\r\n{}",
]


def parse(data, step):
    c = http.Stream(StepReader(data, step), None)
    try:
        asyncio.run(http.Client()._read_response(c, "GET", 1000, 4096, None))
    except (conn.NetError, asyncio.TimeoutError):
        pass  # named errors (and the read timeout the client maps) are the contract


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600), st.integers(1, 64))
def test_random_bytes(data, step):
    parse(data, step)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(GOOD), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)),
                                       max_size=6), st.integers(1, 64), st.integers(0, 80))
def test_mutated_responses(base, flips, step, cut):
    data = bytearray(base)
    for pos, val in flips:
        if data:
            data[pos % len(data)] = val
    parse(bytes(data[:len(data) - cut] if cut < len(data) else data), step)
