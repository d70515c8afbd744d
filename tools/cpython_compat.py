"""Give CPython the few MicroPython APIs the firmware uses, so firmware code stays pure
MicroPython: installed by host_tests/conftest.py and by the host tools that run firmware
modules (config checks, Improv); MicroPython has all of these natively. `micropython` here is
the stand-in module (host_tests/shims/micropython.py re-exports it for the test paths).
"""
import asyncio
import gc
import sys
import time
import traceback

_PERIOD = 1 << 30  # MicroPython's tick counters wrap at 2**30 on every port
_HALF = _PERIOD // 2


def _ticks_ms():
    return int(time.monotonic() * 1000) % _PERIOD


def _ticks_us():
    return int(time.monotonic() * 1000000) % _PERIOD


def _ticks_add(t, delta):
    return (t + delta) % _PERIOD


def _ticks_diff(a, b):
    return ((a - b + _HALF) % _PERIOD) - _HALF


def _print_exception(e, file=sys.stdout):
    file.write("".join(traceback.format_exception(type(e), e, e.__traceback__)))


async def _sleep_ms(ms):
    await asyncio.sleep(ms / 1000)


async def _readinto(self, buf):
    data = await self.read(len(buf))
    buf[:len(data)] = data
    return len(data)


# the `micropython` module's functions the firmware calls, as CPython no-ops
def const(x):
    return x


def native(f):
    return f


viper = native


def heap_lock():
    return 0


def heap_unlock():
    return 0


def mem_info(*a):
    pass


def mem_peak():
    return 0


def schedule(fn, arg):
    fn(arg)


def alloc_emergency_exception_buf(n):
    pass


def _micropython_module():
    mod = type(sys)("micropython")
    for name in ("const", "native", "viper", "heap_lock", "heap_unlock", "mem_info", "mem_peak",
                 "schedule", "alloc_emergency_exception_buf"):
        setattr(mod, name, globals()[name])
    return mod


def install():
    try:
        import micropython  # noqa: F401  (the test shim, when host_tests/shims is on the path)
    except ImportError:
        sys.modules["micropython"] = _micropython_module()
    for name, fn in (("ticks_ms", _ticks_ms), ("ticks_us", _ticks_us), ("ticks_cpu", _ticks_us),
                     ("ticks_add", _ticks_add), ("ticks_diff", _ticks_diff),
                     ("sleep_ms", lambda ms: time.sleep(ms / 1000)),
                     ("sleep_us", lambda us: time.sleep(us / 1e6))):
        if not hasattr(time, name):
            setattr(time, name, fn)
    if not hasattr(sys, "print_exception"):
        sys.print_exception = _print_exception
    if not hasattr(asyncio, "sleep_ms"):
        asyncio.sleep_ms = _sleep_ms
    if not hasattr(asyncio.StreamReader, "readinto"):
        asyncio.StreamReader.readinto = _readinto
    if not hasattr(gc, "mem_free"):
        gc.mem_free = lambda: 1 << 20
        gc.mem_alloc = lambda: 0
