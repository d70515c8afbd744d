"""Getting the heap back after Ctrl-C, before a stop or crash handler needs it.

The unix port delivers Ctrl-C asynchronously (MicroPython's MICROPY_ASYNC_KBD_INTR, on in
builds without a GIL): the SIGINT handler longjmps out of whatever C code runs. Cut out of a
`micropython.heap_lock()`ed section, the lock stays taken; cut out of a garbage collection,
the collector's "collecting" flag stays set. Either way every allocation after it fails with
"MemoryError: heap is locked", and so did the orderly stop and then the crash report.

`recover()` allocates nothing until it knows the heap works. heap_lock() calls that never got
their unlock are undone: nothing else changed, the app stops as usual. A collection cut short
is different: its mark bits are left half set, and the next collection would skip the
children of marked blocks and free live objects (seen as garbage attributes). So no
collection is run; the app stops at once, with one line, exit code as given: the outbox is
crash-safe on flash, only the goodbye to the cloud is lost. On the ESP32 Ctrl-C is checked
between bytecodes and cannot land inside the collector.
"""
import micropython
from micropython import const

# looked up and made now, while the heap works: later they must cost no allocation
_lock = getattr(micropython, "heap_lock", None)
_unlock = getattr(micropython, "heap_unlock", None)
_EXITS = (SystemExit(0), SystemExit(1))
_CUT = ("app: stopped at once: Ctrl-C cut a garbage collection short and the heap cannot "
        "be trusted; the outbox is kept on flash, no goodbye to the cloud")
_MAX_DEPTH = const(64)  # heap_lock() nesting is small; more means heap_unlock() wrapped


def usable():
    """True when an allocation succeeds (the heap is not locked)."""
    try:
        bytearray(8)
    except MemoryError:
        return False
    return True


def recover(code=0):
    """Call first in a KeyboardInterrupt or crash handler. Returns when the heap works (again);
    raises SystemExit(code) after one line when a collection was cut short."""
    if usable():
        return
    # heap_unlock() returns the depth left; with none left (only the collector's flag) it
    # wraps the 16-bit counter, and one heap_lock() puts it back as it was
    n = 0
    while _unlock is not None and _lock is not None and n < _MAX_DEPTH:
        n += 1
        if _unlock() > _MAX_DEPTH:
            _lock()
            break
        if usable():
            return
    print(_CUT)
    raise _EXITS[1 if code else 0]
