"""Actuator safety and sensor failure handling, on both runtimes: safe levels from the first
moment, range rejection (never clamping), fallback, and the sampler's backoff on a failing
sensor (one log line per outage, one on recovery)."""
import asyncio
import json

import support
from firmware import app as app_mod
from firmware import config, log
from firmware.board import esp32, sim
from firmware.board.base import BoardConfigError, Rejected
from firmware.board.factory import make_board
from firmware.clouds import Adapter
from firmware.desired import DesiredState, apply_desired
from firmware.outbox import Outbox

COMMANDS = [
    {"id": 3, "driver": "relay", "pin": 23, "active_low": True, "fallback_after_failures": 3},
    {"id": 4, "driver": "pwm", "pin": 25, "min": 10, "max": 80, "safe_value": 20,
     "fallback_after_failures": 5},
    {"id": 5, "driver": "gpio", "pin": 22},
]


def _quiet(fn):
    lines = []
    log.set_sink(lines.append)
    try:
        return fn(), lines
    finally:
        log.set_sink(None)


def _board():
    esp32.forget()
    return make_board("esp32", [], COMMANDS)


def _drive_all_away(b):
    b.actuators[3].apply(1)
    b.actuators[4].apply(70)
    b.actuators[5].apply(1)


def _states(b):
    return [b.actuators[i].value() for i in (3, 4, 5)]


def test_outputs_are_safe_from_construction_and_after_safe_all():
    b = _board()
    # before anyone applied anything: pins already at the safe level
    assert b.actuators[3].pin.value() == 1  # active-low relay off
    assert b.actuators[4].pwm.duty_u16() == 13107  # 20 %
    assert b.actuators[5].pin.value() == 0
    _drive_all_away(b)
    assert _states(b) == [1, 70, 1]
    assert b.safe_all() == []
    assert _states(b) == [0, 20, 0]


def test_build_applies_safe_values_before_anything_networked():
    root = support.tmpdir("safety")
    try:
        support.write(root + "/ca.pem",
                      "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
        raw = {"cloud": {"platform": "realer", "api_url": "https://127.0.0.1:1",
                         "device_id": 1, "client_id": "cdv_safety",
                         "client_secret": "safety-secret-01", "ca_file": "ca.pem"},
               "board": "esp32", "commands": COMMANDS,
               "wifi": {"ssid": "lab", "password": "lab-password"}}
        support.write(root + "/config.json", json.dumps(raw))
        esp32.forget()
        a, _ = _quiet(lambda: app_mod.build(root))
        assert _states(a.board) == [0, 20, 0]
        assert a.board.actuators[3].pin.value() == 1
        assert a.outbox.pending_count() == 0  # nothing sent, nothing queued
    finally:
        support.rmtree(root)


def test_out_of_range_desired_values_are_rejected_not_clamped():
    b = _board()
    pwm = b.actuators[4]
    pwm.apply(50)
    for bad in (81, 9.99, 100, -5, "nan", "fast"):
        support.raises(Rejected, pwm.apply, bad)
        assert pwm.value() == 50 and pwm.pwm.duty_u16() == 32768
    root = support.tmpdir("reject")
    try:
        outbox = Outbox(config.join(root, "outbox"))
        state = DesiredState(root)
        status, _ = _quiet(lambda: apply_desired(b, outbox, state, 4, "d-1", "95"))
        assert status == "rejected"
        rec = outbox.pending(10)[0]
        assert (rec.report_status, rec.value) == ("rejected", "50")  # what the output does
        status, _ = _quiet(lambda: apply_desired(b, outbox, state, 4, "d-2", "80"))
        assert status == "applied" and pwm.value() == 80
    finally:
        support.rmtree(root)


def test_fallback_sets_every_actuator_safe_and_says_why():
    b = _board()
    _drive_all_away(b)
    failed, lines = _quiet(lambda: b.fallback("token revoked"))
    assert failed == [] and _states(b) == [0, 20, 0]
    assert len(lines) == 1 and "fallback" in lines[0] and "token revoked" in lines[0]


def test_fallback_reports_an_actuator_that_failed_to_go_safe():
    b = make_board("sim", [], [{"id": 1, "safe_value": 0}, {"id": 2, "safe_value": 0}])
    b.actuators[1].apply(1)
    b.actuators[2].apply(1)
    b.actuators[2].fail_next = 1
    failed, lines = _quiet(lambda: b.fallback("watchdog"))
    assert failed == [2] and b.actuators[1].value() == 0
    assert "failed" in lines[0] and "2" in lines[0]


def test_fallback_after_consecutive_cloud_failures_per_command():
    b = _board()
    _drive_all_away(b)
    went, lines = _quiet(lambda: [b.link_failed("uplink: timeout") for _ in range(2)])
    assert went == [[], []] and _states(b) == [1, 70, 1] and lines == []
    went, lines = _quiet(lambda: b.link_failed("uplink: timeout"))
    assert went == [3] and _states(b) == [0, 70, 1]
    assert len(lines) == 1 and "3 cloud failures" in lines[0] and "timeout" in lines[0]
    b.actuators[3].apply(1)  # a wall switch turns it back on during the outage
    went, _ = _quiet(lambda: [b.link_failed("x") for _ in range(2)])
    assert went == [[], [4]] and _states(b) == [1, 20, 1]  # once per outage; gpio never
    _quiet(lambda: [b.link_failed("x") for _ in range(10)])
    assert _states(b) == [1, 20, 1]
    b.link_ok()
    b.actuators[4].apply(60)
    went, _ = _quiet(lambda: [b.link_failed("y") for _ in range(5)])
    assert went == [[], [], [3], [], [4]] and _states(b) == [0, 20, 1]


def test_fallback_after_failures_must_be_a_positive_count():
    for bad in (0, -1, 2.5, True, "3"):
        cmd = {"id": 3, "driver": "relay", "pin": 23, "fallback_after_failures": bad}
        esp32.forget()
        e = support.raises(BoardConfigError, make_board, "esp32", [], [cmd])
        assert "fallback_after_failures" in str(e)


def test_link_failed_logs_an_actuator_that_would_not_go_safe():
    b = make_board("sim", [], [{"id": 1, "fallback_after_failures": 1}])
    b.actuators[1].apply(1)
    b.actuators[1].fail_next = 1
    went, lines = _quiet(lambda: b.link_failed("broker gone"))
    assert went == [] and b.actuators[1].value() == 1
    assert any("did not go safe" in line and "ActuatorError" in line for line in lines)


# --- the sampler: a failing sensor is logged once and retried with backoff ----------------

class _Cloud(Adapter):
    batch_max = 10
    enabled_sensors = None


class _Broken(sim.SimSensor):
    """Raises what a buggy driver raises (not a BoardError) until `healthy` is set."""

    def __init__(self, cfg, exc):
        super().__init__(cfg)
        self.exc = exc
        self.healthy = False
        self.attempts = 0

    async def read(self):
        self.attempts += 1
        if not self.healthy:
            if self.exc is None:
                await asyncio.Event().wait()  # hangs: only the timeout ends it
            raise self.exc
        return await super().read()


def _sampler_run(bad, until):
    root = support.tmpdir("sampler")
    try:
        board = make_board("sim", [{"id": 1, "interval_s": 0.005, "seed": 3}], [])
        board.sensors[2] = bad
        outbox = Outbox(config.join(root, "outbox"), max_records=100000)
        cfg = config.Config({"cloud": {}, "intervals": {"catalog_poll_s": 60}}, root, [])
        a = app_mod.App(cfg, board, outbox, support.made(_Cloud()))

        async def go():
            t = asyncio.create_task(a.sampler())
            steps = 0
            while not until(a):
                steps += 1
                if steps > 20000:  # a hang guard only
                    raise AssertionError("condition never reached")
                await asyncio.sleep_ms(1)
            t.cancel()
            await asyncio.sleep_ms(0)

        _, lines = _quiet(lambda: support.run(go()))
        return a, lines
    finally:
        support.rmtree(root)


def test_failing_sensor_is_logged_once_and_others_keep_their_pace():
    bad = _Broken({"id": 2, "interval_s": 0.005}, ValueError("bus stuck"))
    a, lines = _sampler_run(bad, lambda a: bad.attempts >= 4 and a.readings >= 20)
    warn = [line for line in lines if "sensor 2" in line]
    assert len(warn) == 1 and "bus stuck" in warn[0] and "backoff" in warn[0], warn
    assert a.sensor_errors == bad.attempts >= 4  # retried, counted, never fatal
    assert a.readings >= 20  # sensor 1 went on


def test_recovery_is_logged_once_and_readings_resume():
    bad = _Broken({"id": 2, "interval_s": 0.005}, None)
    bad.timeout_s = 0.005  # a hung read becomes a failure after this

    def until(a):
        if bad.attempts >= 3:
            bad.healthy = True
        return bad.healthy and any(str(r.source) == "2" for r in a.outbox.pending(10000))

    a, lines = _sampler_run(bad, until)
    mine = [line for line in lines if "sensor 2" in line]
    assert len(mine) == 2, mine
    assert "TimeoutError" in mine[0]
    assert "recovered after" in mine[1]
