"""The task supervisor: runs the firmware's cooperative tasks and keeps them running.

Each named task is a coroutine factory run inside one asyncio task. If it raises (anything
but cancellation), the supervisor logs why (redacted, via log.exc), counts the restart, waits
that task's own backoff and starts it again; other tasks never notice. A task that returns
normally stays finished unless it was added with `period_ms`, in which case it runs again
after that pause. Nothing a task does can make `run_forever()` return; only `stop()` can.
`within_ms` is the wait with a timeout for the loops a stop must end (see there).
"""
import asyncio
import gc
from time import ticks_diff, ticks_ms

from micropython import const

from firmware import log

_TAG = "tasks"
_BASE_MS = const(500)
_CAP_MS = const(60000)
_HEALTHY_MS = const(60000)  # a run this long before crashing resets the backoff


def _backoff(base_ms, cap_ms):
    from firmware.backoff import Backoff  # imported here: tests may supply their own

    return Backoff(base_ms, cap_ms)


class SupervisorError(Exception):
    """Misuse of the supervisor (a name added twice)."""


class _Task:
    def __init__(self, name, factory, period_ms):
        self.name = name
        self.factory = factory
        self.period_ms = period_ms
        # made at the first crash: a task that never crashes (every one, normally) holds none
        # (about 50 bytes of heap each on the frozen image; bench/memory.md)
        self.backoff = None
        self.task = None
        self.runs = 0
        self.restarts = 0
        self.last_error = None
        self.last_delay_ms = 0
        self.done = False


class Supervisor:
    """`add(name, factory)` then `await run_forever()`; `stop()` ends it from anywhere.

    `on_crash(name, exc, delay_ms)` is called after each crash is logged (health counts them).
    `backoff` makes a fresh per-task backoff object with `next_ms()` and `reset()` (at a
    task's first crash: `info(name).backoff` is None until then).
    """

    def __init__(self, base_ms=_BASE_MS, cap_ms=_CAP_MS, healthy_ms=_HEALTHY_MS,
                 on_crash=None, backoff=None):
        self._make_backoff = backoff or (lambda: _backoff(base_ms, cap_ms))
        self.healthy_ms = healthy_ms
        self.on_crash = on_crash
        self._tasks: dict = {}
        self._running = False
        self._stopped = asyncio.Event()

    def add(self, name, factory, period_ms=None):
        """Register a task; if the supervisor is already running, it starts at once."""
        if name in self._tasks:
            raise SupervisorError("task %r is already supervised" % (name,))
        t = _Task(name, factory, period_ms)
        self._tasks[name] = t
        if self._running:
            t.task = asyncio.create_task(self._run(t))
        return t

    def names(self):
        return list(self._tasks)

    def restarts(self, name):
        return self._tasks[name].restarts

    def info(self, name):
        return self._tasks[name]

    def total_restarts(self):
        return sum(t.restarts for t in self._tasks.values())

    def start(self):
        """Start every registered task without waiting (run_forever calls this)."""
        if self._running:
            return
        self._running = True
        self._stopped = asyncio.Event()
        for t in self._tasks.values():
            if t.task is None and not t.done:
                t.task = asyncio.create_task(self._run(t))

    async def run_forever(self):
        self.start()
        try:
            await self._stopped.wait()
        finally:
            self.stop()  # also when run_forever itself is cancelled
            # the task that called stop() could not cancel itself; this one can. Then let
            # them all unwind (their finally blocks close sockets and files).
            for t in list(self._tasks.values()):
                task = t.task
                t.task = None
                if task is None:
                    continue
                if not task.done():
                    task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass

    def stop(self):
        """Cancel every task; run_forever() returns once they have unwound. A supervised task
        may call it: its own cancellation is left to run_forever (MicroPython refuses a task
        cancelling itself)."""
        self._running = False
        try:
            me = asyncio.current_task()
        except RuntimeError:
            me = None
        for t in self._tasks.values():
            if t.task is not None and t.task is not me:
                t.task.cancel()
        self._stopped.set()

    async def _run(self, t):
        while self._running:
            t.runs += 1
            started = ticks_ms()
            try:
                await t.factory()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the point of a supervisor: nothing escapes
                delay = self._crashed(t, e, ticks_diff(ticks_ms(), started))
            else:
                if not self._running:
                    return  # it called stop(); it has not "finished" for a later start()
                if t.period_ms is None:
                    t.done = True
                    log.info(_TAG, "%s finished", t.name)
                    return
                if t.backoff is not None:
                    t.backoff.reset()
                delay = t.period_ms
            await asyncio.sleep_ms(delay)

    # Log, count and pick the pause; must never raise itself, whatever `e` is.
    def _crashed(self, t, e, ran_ms):
        t.restarts += 1
        if ran_ms >= self.healthy_ms and t.backoff is not None:
            t.backoff.reset()
        try:
            if t.backoff is None:  # its first crash
                t.backoff = self._make_backoff()
            delay = int(t.backoff.next_ms())
        except Exception:
            # a broken backoff: the longest pause; no room to make one (a MemoryError crash):
            # the first pause, and another try at the next crash
            delay = _CAP_MS if t.backoff is not None else _BASE_MS
        t.last_delay_ms = delay
        try:
            t.last_error = log.describe(e)
            log.exc(_TAG, "%s crashed (restart %d in %s)" % (t.name, t.restarts,
                                                             log.duration(delay)), e)
        except Exception:
            t.last_error = type(e).__name__
            log.error(_TAG, "%s crashed: %s (restart in %s)", t.name, t.last_error,
                      log.duration(delay))
        if self.on_crash is not None:
            try:
                self.on_crash(t.name, e, delay)
            except Exception as e2:
                log.error(_TAG, "on_crash hook failed: %s", type(e2).__name__)
        gc.collect()  # a MemoryError crash deserves a clean heap before the retry
        return delay


class Wake:
    """A wake-up call between tasks (the sampler wakes the uplink): `set()` from anywhere,
    `await wait(timeout_ms)` returns True when woken, False when the timeout passed. One task
    waits on a Wake."""

    def __init__(self):
        self._ev = asyncio.Event()
        self._called = False  # set() was called (the Event is also set by a wait's timer)

    def set(self):
        self._called = True
        self._ev.set()

    def is_set(self):
        return self._called

    def clear(self):
        """Forget a call made before now (older news than what the caller is about to do)."""
        self._called = False
        self._ev.clear()

    async def wait(self, timeout_ms=None):
        # the timeout is a timer that sets the Event, not asyncio.wait_for: the waiter awaits
        # only the Event, so a cancel always reaches it (within_ms says why), and an idle
        # uplink holds one small task while it waits, less than wait_for's two
        timer = None
        if timeout_ms is not None and not self._called:
            timer = asyncio.create_task(self._ring(timeout_ms))
        try:
            await self._ev.wait()
        finally:
            if timer is not None:
                timer.cancel()
        woke = self._called
        self.clear()
        return woke

    async def _ring(self, ms):
        await asyncio.sleep_ms(ms)
        self._ev.set()


async def within_ms(aw, timeout_ms):
    """`await aw` for at most timeout_ms, else aw is cancelled, has unwound, and
    asyncio.TimeoutError is raised. Not asyncio.wait_for: on MicroPython (1.29) a cancel that
    reaches it after its timeout fired, while aw unwinds, is lost and becomes TimeoutError, so
    a task being stopped ran on (a supervisor's stop hung, about 1 run in 60 of
    test_watchdog under load). The caller here only ever awaits an Event, and an Event's
    waiter always gets its cancel. It costs a second task and an Event per call, so the
    network layer's per-read timeouts keep wait_for (within_ms there cost Realer MQTT its
    56K floor, bench/memory.md); Wake.wait has a lighter timer of its own."""
    ended = asyncio.Event()
    out: list = []  # [result], or [None, exception] once aw ended

    async def run():
        try:
            out.append(await aw)
        except BaseException as e:  # its cancel included: handed to the caller
            out.extend((None, e))
        ended.set()

    async def ring():
        await asyncio.sleep_ms(timeout_ms)
        ended.set()

    runner = asyncio.create_task(run())
    timer = asyncio.create_task(ring())
    try:
        await ended.wait()
        if not out:  # the timer rang first
            ended.clear()
            runner.cancel()
            await ended.wait()
            raise asyncio.TimeoutError
        if len(out) > 1:
            raise out[1]
        return out[0]
    finally:
        timer.cancel()
        runner.cancel()  # this task was cancelled: aw goes with it (nothing when it ended)
