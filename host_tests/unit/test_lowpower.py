"""The low-power duty cycle on both runtimes: RTC-memory state, wake -> sample -> flush ->
deep sleep with the machine shim (deepsleep records the call), radio skipping after failures.
"""
import machine

import support
from firmware import clock, config, log, lowpower, safemode, upkeep
from firmware.app import App
from firmware.board.factory import make_board
from firmware.clouds import Adapter
from firmware.outbox import Outbox

_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


class _Result:
    def __init__(self):
        self.ok: list = []
        self.dead: list = []
        self.failed = False
        self.wait_ms = 0


class _Cloud(Adapter):
    """An adapter that accepts every record (or, offline, fails every send like a dead link)."""

    batch_max = 10
    renewals = 0

    def __init__(self, offline=False):
        self.offline = offline
        self.enabled_sensors = None
        self.renew_at = clock.Deadline(3600000)
        self.sends = 0
        self.received: list = []

    async def send(self, records):
        self.sends += 1
        if self.offline:
            raise OSError(113)  # EHOSTUNREACH
        r = _Result()
        for rec in records:
            r.ok.append(rec.message_id)
            self.received.append((rec.message_id, rec.source))
        return r

    async def poll_catalog(self, on_desired):
        return 3600000

    def token_due(self):
        return False

    async def authenticate(self):
        return 0

    def background(self):
        return []


def _quiet(fn):
    lines = []
    log.set_sink(lines.append)
    try:
        return fn(), lines
    finally:
        log.set_sink(None)


def _app(root, cloud, lp=None, sensors=2):
    support.write(root + "/ca.pem", _PEM)
    raw = {"cloud": {"platform": "realer", "api_url": "https://127.0.0.1:1", "device_id": 1,
                     "client_id": "cdv_lowpower", "client_secret": "lp-secret-0001",
                     "ca_file": "ca.pem"},
           "board": "sim", "lowpower": lp or {"enabled": True, "budget_s": 5, "sleep_s": 60},
           "sensors": [{"id": 1, "driver": "sim"}, {"id": 2, "driver": "sim",
                                                     "quantity": "humidity"}][:sensors]}
    (cfg, _) = _quiet(lambda: config.validate(raw, root))
    board = make_board("sim", raw["sensors"], [], [])
    outbox = Outbox(config.join(root, "outbox"), max_records=1000)
    return App(cfg, board, outbox, support.made(cloud))


def _fresh_rtc():
    machine.RTC().memory(b"")
    return machine.RTC()


def test_state_survives_in_rtc_memory_and_garbage_reads_fresh():
    rtc = _fresh_rtc()
    assert lowpower.load_state(rtc) == {"n": 0, "fail": 0}
    lowpower.save_state({"n": 7, "fail": 2}, rtc)
    assert lowpower.load_state(machine.RTC()) == {"n": 7, "fail": 2}  # another handle
    for junk in (b"\xff\x00garbage", b"[1, 2]", b'{"n": -3, "fail": true}', b'{"n": "x"}'):
        rtc.memory(junk)
        assert lowpower.load_state(rtc) == {"n": 0, "fail": 0}, junk


def test_radio_is_used_every_wake_until_failures_then_sparingly():
    assert all(lowpower.network_due({"n": n, "fail": 0}) for n in range(1, 9))
    due = [n for n in range(1, 17) if lowpower.network_due({"n": n, "fail": 2})]
    assert due == [4, 8, 12, 16]
    due = [n for n in range(1, 40) if lowpower.network_due({"n": n, "fail": 9})]
    assert due == [16, 32]  # capped: at least every 16th wake


def test_one_wake_samples_flushes_and_sleeps_for_the_rest_of_the_period():
    root = support.tmpdir("lp")
    try:
        rtc = _fresh_rtc()
        cloud = _Cloud()
        app = _app(root, cloud)
        support.write(root + "/bootcount", "2\n")  # this boot was counted by boot.py
        sleeps = []
        (ms, lines) = _quiet(lambda: lowpower.run_once(app, rtc=rtc, deepsleep=sleeps.append))
        assert sleeps == [ms] and 1000 <= ms <= 60000
        assert sorted(s for _, s in cloud.received) == [1, 2]  # each sensor read once
        assert app.readings == 2 and app.outbox.pending_count() == 0
        assert lowpower.load_state(rtc) == {"n": 1, "fail": 0}
        assert safemode.boots(root) == 0  # a wake that reached its sleep was no crash
        assert any("wake 1" in x and "sleeping" in x for x in lines)
    finally:
        support.rmtree(root)


def test_the_last_delivery_of_a_wake_is_on_flash_before_the_deep_sleep():
    # one reading per wake: its delivery empties the outbox, which the outbox leaves for the
    # next append (bench/outbox-wear.md); deep sleep loses RAM, so the wake flushes it first,
    # else every next wake would send the previous reading again
    root = support.tmpdir("lp")
    try:
        rtc = _fresh_rtc()
        cloud = _Cloud()
        for wake in range(3):
            app = _app(root, cloud, sensors=1)
            _quiet(lambda app=app: lowpower.run_once(app, rtc=rtc, deepsleep=lambda ms: None))
            assert app.outbox.pending_count() == 0
            assert Outbox(config.join(root, "outbox")).pending_count() == 0, wake
        ids = [mid for mid, _ in cloud.received]
        assert len(ids) == 3 and len(set(ids)) == 3, ids  # each reading sent once
    finally:
        support.rmtree(root)


def test_outage_keeps_readings_skips_the_radio_then_delivers_everything_once():
    root = support.tmpdir("lp")
    try:
        rtc = _fresh_rtc()
        cloud = _Cloud(offline=True)
        sleeps = []
        crashes = []
        last = [None]

        def wake():
            # every wake boots afresh: a new App over the same flash outbox and RTC memory
            app = _app(root, cloud)
            _, lines = _quiet(lambda: lowpower.run_once(app, budget_s=0.2, rtc=rtc,
                                                        deepsleep=sleeps.append))
            crashes.extend(x for x in lines if "crashed" in x)
            last[0] = app
            return lowpower.load_state(rtc)

        assert wake() == {"n": 1, "fail": 1} and last[0].outbox.pending_count() == 2
        assert wake() == {"n": 2, "fail": 2} and last[0].outbox.pending_count() == 4
        sends = cloud.sends
        assert sends >= 2
        assert wake() == {"n": 3, "fail": 2}  # 3 % 4: radio skipped, still sampled
        assert cloud.sends == sends and last[0].outbox.pending_count() == 6
        cloud.offline = False
        assert wake() == {"n": 4, "fail": 0}  # 4 % 4: radio on, outage over
        assert last[0].outbox.pending_count() == 0
        ids = [mid for mid, _ in cloud.received]
        assert len(ids) == 8 and len(set(ids)) == 8
        assert len(sleeps) == 4
        assert crashes == []
    finally:
        support.rmtree(root)


def test_disabled_and_failing_sensors_in_a_wake():
    root = support.tmpdir("lp")
    try:
        cloud = _Cloud()
        app = _app(root, cloud)
        cloud.enabled_sensors = [2]
        app.board.sensors[2].fail_next = 1
        (kept, lines) = _quiet(lambda: support.run(lowpower.sample_once(app)))
        assert kept == 0 and app.sensor_errors == 1 and app.outbox.pending_count() == 0
        assert any("sensor 2" in x for x in lines)
        (kept, _) = _quiet(lambda: support.run(lowpower.sample_once(app)))
        assert kept == 1 and [r.source for r in app.outbox.pending(10)] == [2]
    finally:
        support.rmtree(root)


def test_file_memory_stands_in_for_rtc_memory():
    root = support.tmpdir("lp")
    try:
        mem = lowpower.FileMemory(root)
        assert lowpower.load_state(mem) == {"n": 0, "fail": 0}
        lowpower.save_state({"n": 3, "fail": 1}, mem)
        assert lowpower.load_state(lowpower.FileMemory(root)) == {"n": 3, "fail": 1}
        import os

        assert sorted(os.listdir(root)) == ["lowpower.state"]
    finally:
        support.rmtree(root)


def test_default_deepsleep_is_machine_deepsleep():
    root = support.tmpdir("lp")
    try:
        _fresh_rtc()
        app = _app(root, _Cloud())
        before = len(machine.deepsleep_calls)
        e = _quiet(lambda: support.raises(machine.ResetRequested, lowpower.run_once, app,
                                          sleep_s=30))[0]
        assert "deepsleep" in str(e)
        assert len(machine.deepsleep_calls) == before + 1
        assert 1000 <= machine.deepsleep_calls[-1] <= 30000
    finally:
        support.rmtree(root)


def _wake_with_trial(root, cloud):
    app = _app(root, cloud)
    calls = []
    app.trial = "2.0"  # what build() finds when boot.py started a slot on trial
    real = upkeep.confirm_update
    upkeep.confirm_update = lambda a: calls.append(a.trial)
    try:
        _quiet(lambda: lowpower.run_once(app, budget_s=0.2, rtc=_fresh_rtc(),
                                         deepsleep=lambda ms: None))
    finally:
        upkeep.confirm_update = real
    return calls


def test_a_wake_that_delivered_confirms_an_ota_trial():
    root = support.tmpdir("lp")
    try:
        assert _wake_with_trial(root, _Cloud(offline=True)) == []  # nothing accepted yet
        assert _wake_with_trial(root, _Cloud()) == ["2.0"]
    finally:
        support.rmtree(root)
