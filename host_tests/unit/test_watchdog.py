"""The progress watchdog, on both runtimes: unit rules with explicit tick times, then the
app's health task with the shim machine.WDT and a sensor that hangs (feeding must stop)."""
import asyncio
from time import ticks_add, ticks_ms

import machine

import support
from firmware import clock, config, log
from firmware.app import App
from firmware.board.factory import make_board
from firmware.clouds import Adapter
from firmware.outbox import Outbox
from firmware.watchdog import Watchdog


def _quiet(fn):
    lines = []
    log.set_sink(lines.append)
    try:
        return fn(), lines
    finally:
        log.set_sink(None)


class _ShimWDT:
    """Collects the WDTs the watchdog makes (through the machine shim's constructor)."""

    def __init__(self):
        self.made = []

    def __call__(self, timeout):
        w = machine.WDT(timeout=timeout)
        self.made.append(w)
        return w


def test_without_timeout_no_wdt_is_started_but_stalls_are_still_seen():
    dog = Watchdog(None)
    before = len(machine.WDT.instances)
    dog.start()
    assert dog.wdt is None and len(machine.WDT.instances) == before
    dog.expect("uplink", 1000)
    later = ticks_add(ticks_ms(), 1001)
    (stuck, _) = _quiet(lambda: dog.feed(now=later))
    assert stuck == ["uplink"] and dog.withheld == 1 and dog.feeds == 0


def test_start_makes_the_machine_wdt_with_the_timeout_once():
    before = len(machine.WDT.instances)
    dog = Watchdog(8000)
    _quiet(dog.start)
    _quiet(dog.start)
    assert len(machine.WDT.instances) == before + 1
    assert dog.wdt is machine.WDT.instances[-1] and dog.wdt.timeout == 8000
    dog.feed()
    dog.feed()
    assert dog.wdt.feeds == 2


def test_feeding_stops_when_a_critical_task_stops_ticking_and_resumes_after():
    made = _ShimWDT()
    dog = Watchdog(5000, wdt_factory=made)
    _quiet(dog.start)
    wdt = made.made[0]
    dog.expect("uplink", 1000)
    dog.expect("wifi", 1000)
    dog.tick("uplink")
    dog.tick("wifi")
    assert dog.feed(now=ticks_ms()) == [] and wdt.feeds == 1
    later = ticks_add(ticks_ms(), 1500)
    dog.tick("wifi", later)  # wifi still ticks; uplink is stuck
    (stuck, lines) = _quiet(lambda: dog.feed(now=later))
    assert stuck == ["uplink"] and wdt.feeds == 1
    (stuck, lines2) = _quiet(lambda: dog.feed(now=later))
    assert stuck == ["uplink"] and wdt.feeds == 1 and dog.withheld == 2
    assert sum(1 for x in lines + lines2 if "no progress from uplink" in x) == 1  # said once
    dog.tick("uplink")
    dog.tick("wifi")
    (stuck, lines) = _quiet(lambda: dog.feed(now=ticks_ms()))
    assert stuck == [] and wdt.feeds == 2 and dog.withheld == 0
    assert any("progress again" in x for x in lines)


def test_unknown_names_tick_harmlessly():
    dog = Watchdog(None)
    dog.tick("nobody")
    assert dog.feed() == [] and dog.feeds == 1


def test_probe_change_counts_as_progress_and_none_means_idle():
    value = [0]
    dog = Watchdog(None)
    dog.expect("sampler", 1000, lambda: value[0])
    t1 = ticks_add(ticks_ms(), 1500)
    value[0] = 1  # a reading happened
    assert dog.stalled(now=t1) == []
    t2 = ticks_add(t1, 1500)  # and then nothing more
    assert dog.stalled(now=t2) == ["sampler"]
    value[0] = None  # nothing to do (clock unset): idle is not a stall
    assert dog.stalled(now=ticks_add(t2, 5000)) == []


def test_a_failing_probe_is_a_stall_not_a_crash():
    def broken():
        raise OSError(5)

    dog = Watchdog(None)
    dog.expect("sampler", 1000, broken)
    assert dog.stalled(now=ticks_ms()) == []
    assert dog.stalled(now=ticks_add(ticks_ms(), 2000)) == ["sampler"]


def test_feed_interval_is_a_third_of_the_timeout():
    assert Watchdog(None).feed_every_ms(10000) == 10000
    assert Watchdog(3000).feed_every_ms(10000) == 1000
    assert Watchdog(60000).feed_every_ms(10000) == 10000
    assert Watchdog(30).feed_every_ms(10000) == 100


# --- the app's health task, with the shim WDT -------------------------------------------

_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


class _Offline(Adapter):
    """A cloud that is never reachable: the app's network tasks back off; only health,
    the sampler and the watchdog matter here."""

    batch_max = 10
    enabled_sensors = None
    renewals = 0

    def __init__(self, cfg, **hooks):
        super().__init__(**hooks)
        self.renew_at = clock.Deadline(3600000)

    async def send(self, records):
        raise OSError(113)

    async def poll_catalog(self, on_desired):
        return 3600000

    def token_due(self):
        return False

    async def authenticate(self):
        return 0

    def background(self):
        return []


def _app(root, hang_after, stall_s=0.3):
    support.write(root + "/ca.pem", _PEM)
    raw = {"cloud": {"platform": "realer", "api_url": "https://127.0.0.1:1", "device_id": 1,
                     "client_id": "cdv_watchdog", "client_secret": "wd-secret-0001",
                     "ca_file": "ca.pem"},
           "board": "sim", "watchdog_s": 5,
           "intervals": {"status_s": 0.01, "stall_s": stall_s, "catalog_poll_s": 60},
           "sensors": [{"id": 1, "driver": "sim", "interval_s": 0.01}]}
    (cfg, _) = _quiet(lambda: config.validate(raw, root))
    board = make_board("sim", raw["sensors"], [], [])
    outbox = Outbox(config.join(root, "outbox"), max_records=100000)
    app = App(cfg, board, outbox, _Offline)
    sensor = board.sensors[1]
    read = sensor.read

    async def maybe_hang():
        if sensor.reads >= hang_after:
            await asyncio.Event().wait()  # a driver stuck on its bus, forever
        return await read()

    sensor.read = maybe_hang
    return app


def _run_until(app, cond):
    sup = app.supervisor()

    failed = []

    async def judge():
        steps = 3000  # a hang guard only (counts steps, so a slow machine is no risk)
        try:
            while not cond():
                steps -= 1
                if steps < 0:
                    failed.append("condition never reached")
                    break
                await asyncio.sleep_ms(1)
        finally:
            sup.stop()  # also on an error here: the supervisor would restart this task

    sup.add("judge", judge)
    (_, lines) = _quiet(lambda: support.run(sup.run_forever()))
    assert not failed and sup.restarts("judge") == 0, (failed, lines[-20:])
    return sup


def test_health_feeds_the_wdt_while_the_sampler_progresses():
    root = support.tmpdir("wd")
    try:
        # a stall window far above any scheduling delay of a loaded CI machine
        app = _app(root, hang_after=10 ** 9, stall_s=30)
        sup = _run_until(app, lambda: app.watchdog.wdt is not None and
                         app.watchdog.wdt.feeds >= 20 and app.readings >= 20)
        assert app.watchdog.wdt.timeout == 5000
        assert app.watchdog.withheld == 0
        assert sup.total_restarts() == 0
    finally:
        support.rmtree(root)


def test_a_stuck_sampler_stops_the_feeding():
    root = support.tmpdir("wd")
    try:
        app = _app(root, hang_after=3)
        seen = {}

        def cond():
            dog = app.watchdog
            if dog.withheld >= 3 and "feeds" not in seen:
                seen["feeds"] = dog.wdt.feeds  # first moments without feeding
            return dog.withheld >= 10

        _run_until(app, cond)
        dog = app.watchdog
        assert app.readings == 3  # the fourth read never returned
        assert dog.stalled() == ["sampler"]
        assert dog.wdt.feeds == seen["feeds"]  # no feed since it stalled: the WDT will bite
        assert dog.wdt.feeds >= 1  # it was fed while the sampler still worked
    finally:
        support.rmtree(root)
