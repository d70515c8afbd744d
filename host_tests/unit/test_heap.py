"""firmware/heap.py on both runtimes: Ctrl-C (a KeyboardInterrupt) raised inside a
heap_lock()ed section leaves the heap locked on MicroPython; recover() gives it back before
a stop or crash handler allocates. The collection cut short by an asynchronous SIGINT is in
host_tests/system/test_sigint_heap.py (it needs a real signal)."""
import micropython

import support
from firmware import heap


def test_ctrl_c_inside_heap_locked_sections_leaves_a_heap_that_recover_unlocks():
    kbd = KeyboardInterrupt()  # made before the lock: raising it then allocates nothing
    was = None
    try:
        micropython.heap_lock()
        micropython.heap_lock()  # nested, as a locked hot path inside another
        raise kbd
    except KeyboardInterrupt:
        was = heap.usable()  # stores a bool: nothing to allocate
        heap.recover()
    assert heap.usable() and bytearray(64)
    if support.IS_MICROPYTHON:
        assert was is False  # the interrupt really left it locked


def test_recover_on_a_working_heap_changes_nothing():
    heap.recover()
    heap.recover(1)
    assert heap.usable() and [0] * 100
