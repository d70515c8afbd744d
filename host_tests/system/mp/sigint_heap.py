# Ctrl-C during garbage collection, through firmware.app.main's own stop path. argv[1]: a data
# root with a sim-board config. The supervisor is replaced by a loop that does almost nothing
# but collect (over many small objects, so each collection takes a while): a SIGINT then
# nearly always lands inside a collection, which the unix port leaves with the heap locked.
# Prints "ready" when it runs and, at the end, "rc=N heap_was_locked=0|1".
# With argv[2] = a path to main.py instead: the app crashes inside a heap_lock()ed section
# and main.py's crash handler must still report it.
import asyncio
import gc
import sys

from firmware import app

try:
    from firmware import heap
except ImportError:  # the firmware before heap.recover(): the test shows what then happens
    heap = None


class _Sup:
    def names(self):
        return []

    def stop(self):
        pass

    async def run_forever(self):
        junk = [[i] for i in range(20000)]
        print("ready")
        while junk:
            gc.collect()
            await asyncio.sleep_ms(0)


if len(sys.argv) > 2:
    import micropython

    err = ValueError("boom")  # made before the lock: raising it allocates nothing

    def _broken(root=None):
        micropython.heap_lock()
        raise err

    app.main = _broken
    with open(sys.argv[2]) as f:
        code = f.read()
    exec(code, {"__name__": "__main__"})  # main.py's _run() calls app.main() and exits 1

app.App.supervisor = lambda self, sampler=True: _Sup()
hit = [0]
if heap is not None:
    _real = heap.recover

    def _spy():  # allocates nothing before it knows: the heap may be locked here
        try:
            bytearray(16)
        except MemoryError:
            hit[0] = 1
        _real()

    heap.recover = _spy
rc = app.main(sys.argv[1])
print("rc=%d heap_was_locked=%d" % (rc, hit[0]))
