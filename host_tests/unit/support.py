"""Helpers every dual-runtime test may use: identical on CPython and the MicroPython unix port.

No pytest fixtures in unit tests (MicroPython has no pytest): use these instead.
"""
import os
import sys

IS_MICROPYTHON = sys.implementation.name == "micropython"
_counter = [0]


def run(coro):
    """Run one coroutine to completion on a fresh event loop."""
    import asyncio

    return asyncio.run(coro)


def tmpdir(tag="t"):
    """Make a new empty directory under /tmp and return its path."""
    while True:
        _counter[0] += 1
        path = "/tmp/fwtest-%d-%s-%d-%d" % (os.getpid() if hasattr(os, "getpid") else 0, tag,
                                           _counter[0], _rand())
        try:
            os.mkdir(path)
            return path
        except OSError:
            continue


def _rand():
    return int.from_bytes(os.urandom(3), "little")


def rmtree(path):
    try:
        names = os.listdir(path)
    except OSError:
        return
    for name in names:
        full = path + "/" + name
        if os.stat(full)[0] & 0x4000:
            rmtree(full)
        else:
            os.remove(full)
    os.rmdir(path)


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def raises(exc_type, fn, *args, **kwargs):
    """Call fn and return the exception it raised; fail if it raised nothing or another type."""
    try:
        fn(*args, **kwargs)
    except exc_type as e:
        return e
    raise AssertionError("expected %s" % exc_type.__name__)


async def araises(exc_type, coro):
    try:
        await coro
    except exc_type as e:
        return e
    raise AssertionError("expected %s" % exc_type.__name__)


class StepReader:
    """A stream stand-in with async readinto that hands out canned bytes `step` at a time,
    the way a socket delivers them (for parser tests of the network clients)."""

    def __init__(self, data, step=7):
        self.data = data
        self.pos = 0
        self.step = step

    async def readinto(self, mv):
        n = min(len(mv), self.step, len(self.data) - self.pos)
        mv[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


def made(adapter):
    """App's make_cloud for an adapter a test built already: the app's hooks (on_desired,
    on_link_up, on_reached, ota) land on it as its constructor would have stored them."""
    from firmware.clouds import Adapter

    def make(cfg, **hooks):
        Adapter.__init__(adapter, **hooks)
        return adapter
    return make
