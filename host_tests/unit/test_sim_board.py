"""The board interface and the sim board, on both runtimes."""
import asyncio

import support
from firmware.board import base, factory, sim
from firmware.board.base import (
    ActuatorError,
    BoardConfigError,
    Rejected,
    SensorError,
    value_text,
)
from firmware.board.factory import make_board

SENSORS = [
    {"id": 7, "driver": "sim", "interval_s": 10, "quantity": "temperature", "seed": 1},
    {"id": 8, "driver": "sim", "interval_s": 30, "quantity": "humidity", "seed": 2},
]
COMMANDS = [
    {"id": 3, "driver": "sim", "kind": "switch", "min": 0, "max": 1, "safe_value": 0},
    {"id": 4, "driver": "sim", "kind": "level", "min": 0, "max": 100, "safe_value": 10},
]


def _board(switches=()):
    return make_board("sim", SENSORS, COMMANDS, list(switches))


def _read_many(sensor, n):
    async def go():
        out = []
        for _ in range(n):
            out.append(await sensor.read())
        return out

    return support.run(go())


def test_factory_builds_by_cloud_id():
    b = _board()
    assert sorted(b.sensors) == [7, 8]
    assert sorted(b.actuators) == [3, 4]
    assert b.sensors[7].interval_s == 10 and b.sensors[8].interval_s == 30
    assert isinstance(b.sensors[7], sim.SimSensor)
    assert b.actuators[3].value() == 0 and b.actuators[4].value() == 10


def test_temperature_and_humidity_walk_stays_plausible():
    b = _board()
    temps = _read_many(b.sensors[7], 300)
    hums = _read_many(b.sensors[8], 300)
    assert all(15.0 <= t <= 30.0 for t in temps)
    assert all(20 <= h <= 80 and isinstance(h, int) for h in hums)
    assert len(set(temps)) > 10  # it moves
    # a walk: consecutive readings differ by at most one step (plus rounding)
    assert all(abs(a - b) <= 0.2 + 0.051 for a, b in zip(temps, temps[1:]))
    assert abs(temps[0] - 21.0) <= 0.25


def test_seeded_sensor_is_deterministic():
    a = sim.SimSensor({"id": 1, "seed": 12345, "start": 0, "min": -5, "max": 5, "step": 1})
    b = sim.SimSensor({"id": 1, "seed": 12345, "start": 0, "min": -5, "max": 5, "step": 1})
    c = sim.SimSensor({"id": 1, "seed": 54321, "start": 0, "min": -5, "max": 5, "step": 1})
    ra, rb, rc = _read_many(a, 50), _read_many(b, 50), _read_many(c, 50)
    assert ra == rb
    assert ra != rc
    assert all(-5 <= v <= 5 for v in ra)


def test_known_xorshift_sequence_same_on_both_runtimes():
    r = sim._Rng(1)
    # xorshift32(13, 17, 5) from state 1: 270369, 67634689, 2647435461
    r.unit()
    assert r.s == 270369
    r.unit()
    assert r.s == 67634689
    r.unit()
    assert r.s == 2647435461
    assert 0.0 <= r.unit() < 1.0


def test_sensor_fail_next_raises_then_recovers():
    s = sim.SimSensor({"id": 9, "fail_next": 2})

    async def go():
        await support.araises(SensorError, s.read())
        await support.araises(SensorError, s.read())
        return await s.read()

    v = support.run(go())
    assert 15.0 <= v <= 30.0


def test_switch_actuator_accepts_cloud_spellings():
    a = _board().actuators[3]
    assert a.apply("1") == 1
    assert a.apply("off") == 0
    assert a.apply(True) == 1
    assert a.apply("false") == 0
    for bad in ("2", "maybe", None, 0.5):
        support.raises(Rejected, a.apply, bad)
    assert a.value() == 0


def test_level_actuator_range_and_types():
    a = _board().actuators[4]
    assert a.apply("42") == 42
    assert a.apply(12.5) == 12.5
    e = support.raises(Rejected, a.apply, 101)
    assert "above max" in e.reason
    support.raises(Rejected, a.apply, -1)
    support.raises(Rejected, a.apply, "nan")
    support.raises(Rejected, a.apply, "inf")
    support.raises(Rejected, a.apply, True)
    support.raises(Rejected, a.apply, [1])
    assert a.value() == 12.5


def test_actuator_knobs_refuse_fail_stuck_and_safe():
    a = _board().actuators[4]
    a.refuse_next = 1
    support.raises(Rejected, a.apply, 50)
    assert a.apply(50) == 50
    a.fail_next = 1
    support.raises(ActuatorError, a.apply, 60)
    assert a.value() == 50
    a.stuck = True
    assert a.apply(70) == 50  # the observed value, not the requested one
    a.stuck = False
    assert a.safe() == 10


def test_config_knobs_and_bad_initial():
    a = sim.SimActuator({"id": 5, "kind": "level", "min": 0, "max": 9, "refuse_next": 1,
                         "initial": 4})
    assert a.value() == 4
    support.raises(Rejected, a.apply, 5)
    e = support.raises(BoardConfigError, sim.SimActuator,
                       {"id": 6, "kind": "level", "min": 0, "max": 9, "safe_value": 20})
    assert "safe_value" in str(e)


def test_safe_all_reports_failures():
    b = _board()
    b.actuators[3].apply(1)
    b.actuators[4].apply(90)
    b.actuators[4].fail_next = 1
    assert b.safe_all() == [4]
    assert b.actuators[3].value() == 0 and b.actuators[4].value() == 90


def test_factory_rejects_bad_config():
    e = support.raises(BoardConfigError, make_board, "esp8266", [], [])
    assert "sim or esp32" in str(e)
    e = support.raises(BoardConfigError, make_board, "esp32", [{"id": 1, "driver": "dht99"}], [])
    assert "dht99" in str(e) and "sim" in str(e)
    # as in config.py, a sensor or command without driver is sim, even on the esp32 board
    b = make_board("esp32", [{"id": 1}], [{"id": 2}])
    assert isinstance(b.sensors[1], sim.SimSensor) and isinstance(b.actuators[2], sim.SimActuator)
    # a switch on the esp32 board defaults to the gpio input driver, not plugged in here
    e = support.raises(BoardConfigError, make_board, "esp32", [], [], [{"command": 2, "pin": 4}],
                       {"sim": sim})
    assert "gpio" in str(e)
    e = support.raises(BoardConfigError, make_board, "sim", ["temp"], [])
    assert "object" in str(e)
    e = support.raises(BoardConfigError, make_board, "sim", [{"interval_s": 5}], [])
    assert "no id" in str(e)
    e = support.raises(BoardConfigError, make_board, "sim", [], [{"id": 3}, {"id": 3}])
    assert "twice" in str(e)
    e = support.raises(BoardConfigError, make_board, "sim", [], [], [{"driver": "sim"}])
    assert "command" in str(e)


class _FakeDriver:
    """A driver plugged in through the registry, as the esp32 drivers will be."""

    def __init__(self):
        self.made = []

    def sensor(self, cfg):
        self.made.append(cfg["id"])
        return sim.SimSensor(cfg)

    def actuator(self, cfg):
        self.made.append(cfg["id"])
        return sim.SimActuator(cfg)

    def switch(self, cfg, board):
        return sim.SimSwitch(cfg, board)


def test_registry_plugs_in_drivers_for_esp32():
    drv = _FakeDriver()
    drivers = {"sim": "firmware.board.sim", "dht22": drv}
    b = make_board("esp32", [{"id": 1, "driver": "dht22"}, {"id": 2, "driver": "sim"}],
                   [{"id": 3, "driver": "dht22"}], [], drivers)
    assert drv.made == [1, 3]
    assert sorted(b.sensors) == [1, 2]
    assert drivers["sim"] is sim  # module name resolved once, on first use
    factory.register("fake-test-driver", drv)
    try:
        b = make_board("esp32", [{"id": 11, "driver": "fake-test-driver"}], [])
        assert 11 in b.sensors and drv.made[-1] == 11
    finally:
        del factory.DRIVERS["fake-test-driver"]


def test_switch_flip_moves_actuator_and_notifies_local():
    b = _board([{"id": 30, "command": 3, "driver": "sim"}])
    sw = b.switches[0]
    assert b.background() == []  # no schedule configured

    async def go():
        assert sw.flip() == 1
        got = await b.local.wait()
        assert got == [(3, 1)]
        assert b.actuators[3].value() == 1
        sw.flip()
        sw.flip()  # a burst coalesces to the latest state
        return await b.local.wait()

    assert support.run(go()) == [(3, 1)]
    assert b.actuators[3].value() == 1 and sw.flips == 3


def test_unlinked_switch_reports_its_own_state():
    b = _board([{"command": 99, "driver": "sim"}])
    sw = b.switches[0]
    assert sw.value() == 0
    sw.flip()
    assert sw.value() == 1 and b.local.pending() == 1


def test_scheduled_switch_flips_by_itself():
    b = _board([{"id": 30, "command": 3, "flip_every_s": 0.001}])
    bg = b.background()
    assert [name for name, _ in bg] == ["switch-30"]

    async def go():
        t = asyncio.create_task(bg[0][1]())
        seen = []
        while len(seen) < 3:
            seen.extend(await b.local.wait())
        t.cancel()
        await asyncio.sleep_ms(0)
        return seen

    seen = support.run(go())
    assert len(seen) >= 3 and all(cid == 3 and v in (0, 1) for cid, v in seen)
    assert b.switches[0].flips >= 3


def test_local_wait_blocks_until_a_post():
    lc = base.LocalChanges()

    async def go():
        order = []

        async def waiter():
            order.append(("got", await lc.wait()))

        t = asyncio.create_task(waiter())
        for _ in range(3):
            await asyncio.sleep_ms(0)
        order.append("posting")
        lc.post(5, 1)
        lc.post(6, 0)
        await t
        return order

    order = support.run(go())
    assert order[0] == "posting"
    assert sorted(order[1][1]) == [(5, 1), (6, 0)]


def test_value_text():
    assert value_text(True) == "1" and value_text(False) == "0"
    assert value_text(21.5) == "21.5"
    assert value_text(21.0) == "21"
    assert value_text(1 / 3) == "0.333333"
    assert value_text(7) == "7"
    assert value_text("on") == "on"
