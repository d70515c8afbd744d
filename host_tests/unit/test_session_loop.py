"""The broker session loop both MQTT adapters run (firmware/clouds/__init__.py: mqtt_session),
both runtimes, against a scripted adapter and a client whose run() connects, drops and
reconnects on the test's word: each round opens (told whether a session just ended), holds the
session with the adapter's prepare and up hooks while its tend runs, and always ends it (runner
cancelled, client disconnected), whether tend returned, raised or the task was cancelled. Loop
steps only, no time."""
import asyncio

import support
from firmware.clouds import mqtt_session


class _Client:
    """net.mqtt.Client's part the loop uses: run(prepare, on_connect) connects (prepare
    first), waits for a drop and connects again until cancelled or stopped; disconnect(),
    stop()."""

    def __init__(self, name):
        self.name = name
        self.connects = 0
        self.connected = False
        self.disconnects = 0
        self.runs = 0
        self.run_ended = 0
        self.drop = asyncio.Event()

        self.deaf = 0  # cancels run() loses, as MicroPython's wait_for can (tasks.within_ms)
        self._stopping = False

    async def run(self, prepare=None, on_connect=None):
        self.runs += 1
        self._stopping = False
        try:
            while not self._stopping:
                try:
                    await prepare(self)
                    self.connects += 1
                    self.connected = True
                    await on_connect(self)
                    await self.drop.wait()
                except asyncio.CancelledError:
                    if not self.deaf:
                        raise
                    self.deaf -= 1  # lost: as a timeout, which run() retries
                self.drop.clear()
                self.connected = False
        finally:
            self.run_ended += 1

    async def disconnect(self):
        self.disconnects += 1
        self.connected = False

    async def stop(self):
        self._stopping = True
        await self.disconnect()


class _Adapter:
    """The hooks, scripted: `opens` is what session_open returns round by round (None: the
    adapter paused); each session's tend waits for `end` (or raises `fail`)."""

    def __init__(self, opens):
        self.opens = list(opens)
        self.calls: list = []  # (hook, client name)
        self.end = asyncio.Event()
        self.fail = None
        self.no_more = asyncio.Event()  # session_open ran out of script

    async def session_open(self, ended):
        if not self.opens:
            self.calls.append(("open", "-", ended))
            self.no_more.set()
            await asyncio.Event().wait()  # the test cancels the loop here
        client = self.opens.pop(0)
        self.calls.append(("open", client.name if client else None, ended))
        await asyncio.sleep_ms(0)
        return client

    async def session_prepare(self, client):
        self.calls.append(("prepare", client.name))

    async def session_up(self, client):
        self.calls.append(("up", client.name, client.connects))

    async def session_tend(self, client):
        self.calls.append(("tend", client.name))
        await self.end.wait()
        self.end.clear()
        if self.fail is not None:
            raise self.fail


async def _steps(cond, what, n=200):
    for _ in range(n):
        if cond():
            return
        await asyncio.sleep_ms(0)
    raise AssertionError("never happened: " + what)


def test_a_session_is_held_while_tend_runs_reconnects_on_a_drop_and_ends_cleanly():
    a, b = _Client("a"), _Client("b")
    ad = _Adapter([None, a, b])
    out = {}

    async def main():
        task = asyncio.create_task(mqtt_session(ad))
        await _steps(lambda: a.connects == 1, "the first session connected")
        a.drop.set()  # the connection drops: run() reconnects, the loop holds on
        await _steps(lambda: a.connects == 2, "the reconnect")
        out["held"] = (a.runs, a.disconnects, list(ad.calls))
        ad.end.set()  # tend returns: this session ends, the next round opens `b`
        await _steps(lambda: b.connects == 1, "the second session connected")
        out["a_after"] = (a.run_ended, a.disconnects)
        ad.end.set()
        await _steps(lambda: ad.no_more.is_set(), "the third round")
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    support.run(main())
    runs, disconnects, calls = out["held"]
    assert runs == 1 and disconnects == 0  # one runner for both connects; still held
    # a paused round (None) starts over; prepare before every connect, up after it
    assert calls == [("open", None, False), ("open", "a", False), ("tend", "a"),
                     ("prepare", "a"), ("up", "a", 1), ("prepare", "a"), ("up", "a", 2)], calls
    assert out["a_after"] == (1, 1)  # the runner cancelled and the client disconnected
    # the round after a session says it ended; the one after that does not
    assert ad.calls[7:] == [("open", "b", True), ("tend", "b"), ("prepare", "b"), ("up", "b", 1),
                            ("open", "-", True)], ad.calls
    assert (b.run_ended, b.disconnects) == (1, 1)


def test_a_failing_tend_or_a_cancel_still_ends_the_session():
    a, b = _Client("a"), _Client("b")
    ad = _Adapter([a, b])
    ad.fail = ValueError("tend broke")
    out = {}

    async def main():
        task = asyncio.create_task(mqtt_session(ad))
        await _steps(lambda: a.connects == 1, "connected")
        ad.end.set()  # tend raises: the loop ends with it (the supervisor restarts it)
        try:
            await task
        except ValueError as e:
            out["raised"] = str(e)
        out["a"] = (a.run_ended, a.disconnects)
        task = asyncio.create_task(mqtt_session(ad))  # restarted
        await _steps(lambda: b.connects == 1, "connected again")
        task.cancel()  # shutdown
        try:
            await task
        except asyncio.CancelledError:
            out["cancelled"] = True
        out["b"] = (b.run_ended, b.disconnects)

    support.run(main())
    assert out["raised"] == "tend broke"
    assert out["a"] == (1, 1)  # the runner ended and the client disconnected
    # a restarted loop's first round is no "ended" one (Realer would fall back to HTTPS)
    assert ("open", "b", False) in ad.calls, ad.calls
    assert out["cancelled"] and out["b"] == (1, 1)


def test_a_session_whose_cancel_was_lost_still_ends_before_the_next():
    # MicroPython's wait_for turns a cancel that lands while it unwinds a timed-out read into
    # a TimeoutError, and run() retries those: the runner would go on connecting beside the
    # next session's (a third TLS session on the board). The loop stops the client as well.
    a, b = _Client("a"), _Client("b")
    a.deaf = 1
    ad = _Adapter([a, b])
    out = {}

    async def main():
        task = asyncio.create_task(mqtt_session(ad))
        await _steps(lambda: a.connects == 1, "the first session connected")
        ad.end.set()
        await _steps(lambda: b.connects == 1, "the second session connected")
        await _steps(lambda: a.run_ended, "the first runner ended")
        out["a"] = (a.connects, a.connected)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    support.run(main())
    assert out["a"] == (1, False), out["a"]  # it did not connect again
