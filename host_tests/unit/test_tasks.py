"""The task supervisor, Wake and within_ms, on both runtimes. Counts and order only, never
durations."""
import asyncio

import support
from firmware import log
from firmware.backoff import Backoff
from firmware.tasks import Supervisor, SupervisorError, Wake, within_ms


class _Doubling:
    """A deterministic backoff (no jitter) so the chosen delays can be checked exactly."""

    def __init__(self, base, cap):
        self.base, self.cap, self.n = base, cap, 0

    def next_ms(self):
        d = min(self.cap, self.base << self.n)
        self.n += 1
        return d

    def reset(self):
        self.n = 0


def _sup(**kw):
    crashes = []
    kw.setdefault("backoff", lambda: _Doubling(1, 8))
    sup = Supervisor(on_crash=lambda name, e, d: crashes.append((name, str(e), d)), **kw)
    return sup, crashes


def _quiet(fn):
    lines = []
    log.set_sink(lines.append)
    try:
        return fn(), lines
    finally:
        log.set_sink(None)


def test_crashing_task_restarts_with_growing_delays():
    sup, crashes = _sup()
    runs = [0]

    async def flaky():
        runs[0] += 1
        if runs[0] <= 5:
            raise ValueError("boom %d" % runs[0])
        sup.stop()

    sup.add("flaky", flaky)
    _, lines = _quiet(lambda: support.run(sup.run_forever()))
    assert runs[0] == 6
    assert sup.restarts("flaky") == 5
    assert [d for _, _, d in crashes] == [1, 2, 4, 8, 8]
    assert [m for _, m, _ in crashes] == ["boom 1", "boom 2", "boom 3", "boom 4", "boom 5"]
    assert "ValueError" in sup.info("flaky").last_error
    assert sum(1 for line in lines if "flaky crashed" in line and "boom" in line) == 5


def test_long_healthy_run_resets_backoff():
    sup, crashes = _sup(healthy_ms=0)  # every run counts as healthy
    runs = [0]

    async def flaky():
        runs[0] += 1
        if runs[0] <= 3:
            raise OSError(104)
        sup.stop()

    sup.add("net", flaky)
    _quiet(lambda: support.run(sup.run_forever()))
    assert [d for _, _, d in crashes] == [1, 1, 1]


def test_crash_log_is_redacted():
    secret = "tok-SECRET-abc123"
    log.secret(secret)
    sup, _ = _sup()

    async def leaky():
        if sup.restarts("auth") == 0:
            raise RuntimeError("401 for token " + secret)
        sup.stop()

    sup.add("auth", leaky)
    try:
        _, lines = _quiet(lambda: support.run(sup.run_forever()))
    finally:
        log.forget(secret)
    assert any("auth crashed" in line for line in lines)
    assert all(secret not in line for line in lines)
    assert secret not in sup.info("auth").last_error


def test_crash_loop_does_not_starve_others():
    sup, crashes = _sup(backoff=lambda: _Doubling(0, 0))
    ticks = [0]

    async def crasher():
        raise KeyError("always")

    async def worker():
        while ticks[0] < 50:
            ticks[0] += 1
            await asyncio.sleep_ms(0)
        sup.stop()

    sup.add("crasher", crasher)
    sup.add("worker", worker)
    _quiet(lambda: support.run(sup.run_forever()))
    assert ticks[0] == 50
    assert sup.restarts("crasher") >= 10
    assert sup.restarts("worker") == 0


def test_stop_cancels_every_task_and_lets_it_clean_up():
    sup, _ = _sup()
    cleaned = []
    started = []

    def forever(name):
        async def run():
            started.append(name)
            try:
                while True:
                    await asyncio.sleep_ms(1000)
            finally:
                cleaned.append(name)

        return run

    async def stopper():
        while len(started) < 3:
            await asyncio.sleep_ms(0)
        sup.stop()

    for name in ("uplink", "downlink", "health"):
        sup.add(name, forever(name))
    sup.add("stopper", stopper)
    _quiet(lambda: support.run(sup.run_forever()))
    assert sorted(cleaned) == ["downlink", "health", "uplink"]
    assert sup.total_restarts() == 0  # cancellation is not a crash


def test_normal_return_ends_a_task_unless_periodic():
    sup, _ = _sup()
    once = [0]
    periodic = [0]

    async def one_shot():
        once[0] += 1

    async def tick():
        periodic[0] += 1
        if periodic[0] == 4:
            sup.stop()

    sup.add("once", one_shot)
    sup.add("tick", tick, period_ms=1)
    _quiet(lambda: support.run(sup.run_forever()))
    assert once[0] == 1 and sup.info("once").done
    assert periodic[0] == 4
    assert sup.total_restarts() == 0


class _BadStr(Exception):
    def __str__(self):
        raise RuntimeError("cannot even describe myself")


def test_loop_never_exits_on_any_error():
    def bad_hook(name, e, delay):
        raise ZeroDivisionError("hook")

    sup = Supervisor(backoff=lambda: _Doubling(0, 1), on_crash=bad_hook)
    kinds = (MemoryError, OSError, ValueError, TypeError, _BadStr)
    for i, kind in enumerate(kinds):
        def make(kind=kind):
            async def run():
                raise kind()
            return run
        sup.add("t%d" % i, make())
    sup.add("not-a-coroutine", lambda: None)  # awaiting None is a TypeError, also survived

    async def watchdog():
        names = ["t%d" % i for i in range(len(kinds))] + ["not-a-coroutine"]
        while any(sup.restarts(n) < 3 for n in names):
            await asyncio.sleep_ms(0)
        sup.stop()

    sup.add("watchdog", watchdog)
    _quiet(lambda: support.run(sup.run_forever()))
    assert all(sup.restarts("t%d" % i) >= 3 for i in range(len(kinds)))
    assert sup.info("t4").last_error  # even an exception that cannot print itself is named


def test_add_while_running_and_duplicate_names():
    sup, _ = _sup()
    late = []

    async def late_task():
        late.append(1)
        sup.stop()

    async def first():
        sup.add("late", late_task)
        await asyncio.sleep_ms(1000)

    sup.add("first", first)
    support.raises(SupervisorError, sup.add, "first", first)
    _quiet(lambda: support.run(sup.run_forever()))
    assert late == [1]


def test_cancelling_run_forever_cancels_the_tasks():
    sup, _ = _sup()
    cleaned = []

    async def worker():
        try:
            await asyncio.sleep_ms(10000)
        finally:
            cleaned.append(1)

    sup.add("w", worker)

    async def go():
        t = asyncio.create_task(sup.run_forever())
        for _ in range(3):
            await asyncio.sleep_ms(0)
        t.cancel()
        try:
            await t
        except asyncio.CancelledError:
            pass

    support.run(go())
    assert cleaned == [1]


def test_default_backoff_is_the_firmware_backoff():
    sup = Supervisor(base_ms=1, cap_ms=2)
    runs = [0]

    async def flaky():
        runs[0] += 1
        if runs[0] <= 3:
            raise ValueError("x")
        sup.stop()

    sup.add("f", flaky)
    _quiet(lambda: support.run(sup.run_forever()))
    assert sup.restarts("f") == 3
    assert 0 <= sup.info("f").last_delay_ms <= 2
    b = sup.info("f").backoff
    assert isinstance(b, Backoff) and b.attempts == 3  # full jitter, growing ceiling


def test_wake_set_wait_and_timeout():
    async def go():
        w = Wake()
        w.set()
        first = await w.wait(1000)
        second = await w.wait(1)  # cleared by the first wait: times out
        order = []

        async def sleeper():
            order.append(("woke", await w.wait()))

        t = asyncio.create_task(sleeper())
        await asyncio.sleep_ms(0)
        order.append("set")
        w.set()
        await t
        return first, second, order

    first, second, order = support.run(go())
    assert first is True and second is False
    assert order == ["set", ("woke", True)]


def test_a_task_holds_no_backoff_until_its_first_crash():
    made: list = []

    def backoff():
        made.append(_Doubling(0, 0))
        return made[-1]

    sup = Supervisor(backoff=backoff)
    runs = {"ok": 0, "bad": 0}

    async def ok():
        runs["ok"] += 1
        if runs["ok"] == 3:
            sup.stop()

    async def bad():
        runs["bad"] += 1
        if runs["bad"] <= 2:
            raise ValueError("x")

    sup.add("ok", ok, period_ms=0)
    sup.add("bad", bad)
    assert sup.info("ok").backoff is None and sup.info("bad").backoff is None and not made
    _quiet(lambda: support.run(sup.run_forever()))
    # the task that never crashed still holds none (heap on a small board); the one that did
    # got one at its first crash and kept it for the second
    assert sup.info("ok").backoff is None
    assert len(made) == 1 and sup.info("bad").backoff is made[0] and made[0].n == 2


def test_no_room_for_a_backoff_still_restarts_the_task():
    seen: list = []

    def on_crash(name, e, delay_ms):  # before the pause: stop here, nothing waits it out
        seen.append((name, delay_ms))
        sup.stop()

    sup = Supervisor(backoff=_no_room, on_crash=on_crash)

    async def flaky():
        raise MemoryError("full")

    sup.add("f", flaky)
    _quiet(lambda: support.run(sup.run_forever()))
    # no backoff could be made: the first pause (the supervisor's base), none kept
    assert seen == [("f", 500)] and sup.restarts("f") == 1
    assert sup.info("f").backoff is None and sup.info("f").last_delay_ms == 500


def _no_room():
    raise MemoryError("no room for a backoff")


# --- within_ms: a wait with a timeout that never loses a cancel ---------------------------------

async def _steps(cond, what, n=2000):
    # a hang guard counted in loop steps, never in time
    while not cond():
        n -= 1
        if n < 0:
            raise AssertionError("never happened: " + what)
        await asyncio.sleep_ms(1)


def test_within_ms_returns_raises_and_times_out_after_aw_unwound():
    seen: list = []

    async def value():
        return 7

    async def broken():
        raise ValueError("driver")

    async def stuck():
        try:
            await asyncio.Event().wait()
        finally:
            seen.append("unwound")

    async def go():
        assert await within_ms(value(), 1000) == 7
        try:
            await within_ms(broken(), 1000)
        except ValueError as e:
            seen.append(str(e))
        try:
            await within_ms(stuck(), 5)
        except asyncio.TimeoutError:
            seen.append("timeout")  # after stuck() ran its finally, not before

    support.run(go())
    assert seen == ["driver", "unwound", "timeout"], seen


def test_a_cancel_landing_just_after_the_timeout_is_never_lost():
    # within_ms, and Wake.wait with a timeout. asyncio.wait_for on MicroPython 1.29 turns a
    # cancel that lands while it unwinds its timed-out awaitable into TimeoutError: a loop
    # like this one (the uplink's idle wait, a sensor read) then ran on after a supervisor's
    # stop and the stop never returned
    lost: list = []
    wake = Wake()

    async def timed_wait():
        await within_ms(asyncio.Event().wait(), 2)

    async def trial(k, wait):
        timeouts: list = []

        async def waiter():
            while True:
                try:
                    if not await wait():  # Wake.wait: False when the timeout passed
                        timeouts.append(1)
                except asyncio.TimeoutError:
                    timeouts.append(1)

        t = asyncio.create_task(waiter())
        await _steps(lambda: timeouts, "a first timeout")
        n = len(timeouts)
        await _steps(lambda: len(timeouts) > n, "a second timeout")  # in step with the timer
        for _ in range(k):
            await asyncio.sleep_ms(0)
        t.cancel()
        try:
            await _steps(t.done, "the cancel landing", 200)
        except AssertionError:
            lost.append((wait, k))
            t.cancel()

    async def go():
        for i in range(60):
            await trial(i % 6, timed_wait)
            await trial(i % 6, lambda: wake.wait(2))

    support.run(go())
    assert not lost, "cancels lost at steps %s" % lost
