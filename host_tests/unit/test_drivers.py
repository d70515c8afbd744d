"""ESP32 drivers over the host shims (machine, dht, onewire, ds18x20), on both runtimes:
conversions, calibration, outputs, the debounce decision, and the esp32 factory."""
import asyncio

import dht
import ds18x20
import machine
import micropython

import support
from firmware.board import analog, button, esp32, outputs
from firmware.board.base import BoardConfigError, Rejected, SensorError
from firmware.board.factory import make_board


def _board(sensors=(), commands=(), switches=()):
    esp32.forget()
    return make_board("esp32", list(sensors), list(commands), list(switches))


def _read(sensor):
    return support.run(sensor.read())


def _ds(b, sid):
    s = b.sensors[sid]
    s.convert_ms = 1  # the real 750 ms wait would only slow the test down
    return s


def _fails(sensor):
    return support.raises(SensorError, lambda: _read(sensor))


# --- DHT -----------------------------------------------------------------------------------

def test_dht22_entries_on_one_pin_share_one_measurement():
    b = _board([{"id": 1, "driver": "dht22", "pin": 15, "quantity": "temperature"},
                {"id": 2, "driver": "dht22", "pin": 15, "quantity": "humidity"}])
    dht.frames[15] = [dht.frame(0x02, 0x8C, 0x01, 0x5F)]  # 65.2 %RH, 35.1 degC
    assert _read(b.sensors[1]) == 35.1
    assert _read(b.sensors[2]) == 65.2  # within the 2 s gap: the same measurement
    chip = b.sensors[1].chip
    assert chip is b.sensors[2].chip and chip.dev.measures == 1
    # the next one after the gap; below zero the sign bit is set
    dht.frames[15] = [dht.frame(0x01, 0xF4, 0x80, 0x65)]
    t, h = chip.sample(now=chip._at + 1999)
    assert t > 35 and chip.dev.measures == 1
    t, h = chip.sample(now=chip._at + 2000)
    assert abs(t + 10.1) < 1e-6 and abs(h - 50.0) < 1e-6 and chip.dev.measures == 2
    assert _read(b.sensors[1]) == -10.1


def test_dht22_timeout_checksum_and_implausible_values_are_sensor_errors():
    b = _board([{"id": 1, "driver": "dht22", "pin": 16}])
    s = b.sensors[1]
    dht.frames[16] = []
    assert "no valid answer" in str(_fails(s))
    bad = bytearray(dht.frame(0x02, 0x8C, 0x01, 0x5F))
    bad[4] ^= 1
    dht.frames[16] = [bytes(bad)]
    _fails(s)
    dht.frames[16] = [dht.frame(0x03, 0xE9, 0x01, 0x00)]  # 100.1 %RH
    assert "implausible" in str(_fails(s))
    dht.frames[16] = [dht.frame(0x01, 0x90, 0x00, 0xD7)]  # recovers at once: 40 %, 21.5 degC
    assert _read(s) == 21.5


def test_dht11_conversion_and_config_errors():
    b = _board([{"id": 1, "driver": "dht11", "pin": 17, "quantity": "humidity", "decimals": 0}])
    dht.frames[17] = [dht.frame(45, 0, 23, 4)]
    assert _read(b.sensors[1]) == 45
    assert b.sensors[1].chip.dev.temperature() == 23.4
    e = support.raises(BoardConfigError, _board,
                       [{"id": 1, "driver": "dht22", "pin": 18, "quantity": "pressure"}])
    assert "pressure" in str(e)
    e = support.raises(BoardConfigError, _board, [{"id": 1, "driver": "dht22"}])
    assert "pin" in str(e)


# --- DS18B20 -------------------------------------------------------------------------------

ROM_A = bytes.fromhex("28ff641e8c1603c1")
ROM_B = bytes.fromhex("28aa00bb11cc22de")


def test_ds18b20_single_sensor_found_by_scan():
    ds18x20.buses[5] = {ROM_A: ds18x20.scratchpad(21.5)}
    s = _ds(_board([{"id": 1, "driver": "ds18b20", "pin": 5}]), 1)
    assert _read(s) == 21.5
    ds18x20.buses[5] = {ROM_A: ds18x20.scratchpad(-10.0625)}
    s.decimals = 4
    assert _read(s) == -10.0625
    assert s.bus.conversions == 2


def test_ds18b20_rom_picks_one_of_several_and_errors_are_named():
    ds18x20.buses[4] = {ROM_A: ds18x20.scratchpad(19.25), ROM_B: ds18x20.scratchpad(60.5)}
    b = _board([{"id": 1, "driver": "ds18b20", "pin": 4, "rom": "28aa00bb11cc22de"},
                {"id": 2, "driver": "ds18b20", "pin": 13}])
    _ds(b, 1)
    _ds(b, 2)
    assert _read(b.sensors[1]) == 60.5
    ds18x20.buses[13] = {ROM_A: ds18x20.scratchpad(1.0), ROM_B: ds18x20.scratchpad(2.0)}
    assert "set `rom`" in str(_fails(b.sensors[2]))
    ds18x20.buses[4] = {ROM_B: ds18x20.scratchpad(60.5, corrupt=True)}
    assert "CRC" in str(_fails(b.sensors[1]))
    ds18x20.buses[4] = {ROM_B: ds18x20.scratchpad(85.0)}  # power-on value: no conversion
    assert "no conversion" in str(_fails(b.sensors[1]))
    ds18x20.buses[4] = {}
    _fails(b.sensors[1])  # unplugged
    e = support.raises(BoardConfigError, _board,
                       [{"id": 1, "driver": "ds18b20", "pin": 4, "rom": "28ff"}])
    assert "16 hex digits" in str(e)


# --- ADC -----------------------------------------------------------------------------------

def test_adc_attenuation_scale_and_offset():
    b = _board([{"id": 1, "driver": "adc", "pin": 34, "atten": 6, "scale": 2, "offset": -1,
                 "decimals": 3}])
    s = b.sensors[1]
    assert s.adc.atten_value == machine.ADC.ATTN_6DB
    s.adc.set_raw(32768)  # the shim's read_uv: 1650025 uV
    assert _read(s) == round(1.650025 * 2 - 1, 3)
    assert _board([{"id": 2, "driver": "adc", "pin": 35}]).sensors[2].adc.atten_value == \
        machine.ADC.ATTN_11DB


def test_adc_two_point_calibration_and_raw_source():
    s = _board([{"id": 1, "driver": "adc", "pin": 36,
                 "cal": [[0.5, 0], [2.5, 100]], "decimals": 1}]).sensors[1]
    s.adc.set_raw(32768)
    assert _read(s) == 57.5  # (1.650025 - 0.5) / 2.0 * 100
    s.adc.set_raw(0)
    assert _read(s) == -25.0  # extrapolates below the lower point
    r = _board([{"id": 2, "driver": "adc", "pin": 39, "source": "raw",
                 "cal": [[1000, 0], [65000, 100]], "samples": 16}]).sensors[2]
    r.adc.set_raw(33000)
    assert _read(r) == 50.0


class _NoisyADC:
    """An ADC input whose successive conversions differ (the ESP32's are noisy)."""

    def __init__(self, uv):
        self.uv = list(uv)
        self.reads = 0

    def read_uv(self):
        self.reads += 1
        return self.uv.pop(0)


def test_adc_averages_its_samples_per_reading():
    adc = _NoisyADC([1000000, 1200000, 1100000, 1300000])
    s = analog.AnalogSensor({"id": 1, "samples": 4, "scale": 100, "decimals": 1}, adc)
    assert _read(s) == 115.0 and adc.reads == 4


def test_adc_calibration_maths_and_config_errors():
    assert analog.calibration({"cal": [[1, 10], [3, 30]]}) == (10.0, 0.0)
    assert analog.calibration({"scale": 0.5, "offset": 3}) == (0.5, 3.0)
    assert analog.calibration({}) == (1.0, 0.0)
    for bad, word in (({"atten": 3}, "atten"), ({"cal": [[1, 0], [1, 5]]}, "different"),
                      ({"cal": [[1, 0]]}, "cal"), ({"cal": [[0, 0], [1, 1]], "scale": 2}, "either"),
                      ({"scale": "x"}, "scale"), ({"samples": 0}, "samples"),
                      ({"source": "amps"}, "source")):
        cfg = {"id": 9, "driver": "adc", "pin": 32}
        cfg.update(bad)
        e = support.raises(BoardConfigError, _board, [cfg])
        assert word in str(e), (bad, str(e))


# --- digital input -------------------------------------------------------------------------

def test_digital_input_with_pull_and_invert():
    b = _board([{"id": 1, "driver": "digital", "pin": 26, "pull": "up", "invert": True},
                {"id": 2, "driver": "digital", "pin": 27}])
    door, pir = b.sensors[1], b.sensors[2]
    assert door.pin.pull == machine.Pin.PULL_UP
    door.pin.set_input(1)
    assert _read(door) == 0
    door.pin.set_input(0)  # contact closed to ground
    assert _read(door) == 1
    pir.pin.set_input(1)
    assert _read(pir) == 1
    e = support.raises(BoardConfigError, _board,
                       [{"id": 1, "driver": "digital", "pin": 26, "pull": "sideways"}])
    assert "pull" in str(e)


# --- outputs -------------------------------------------------------------------------------

def test_relay_active_low_is_off_from_the_start_and_reads_back():
    b = _board(commands=[{"id": 3, "driver": "relay", "pin": 23, "active_low": True},
                         {"id": 4, "driver": "gpio", "pin": 22, "safe_value": "on"}])
    relay, led = b.actuators[3], b.actuators[4]
    assert relay.pin.value() == 1 and relay.value() == 0  # off = high on an active-low module
    assert led.pin.value() == 1 and led.value() == 1
    assert relay.apply("on") == 1 and relay.pin.value() == 0
    assert relay.apply(0) == 0 and relay.pin.value() == 1
    support.raises(Rejected, relay.apply, 2)
    assert relay.pin.value() == 1
    e = support.raises(BoardConfigError, _board,
                       commands=[{"id": 3, "driver": "relay", "pin": 23, "kind": "level"}])
    assert "switch" in str(e)


def test_pwm_duty_percent_range_and_invert():
    b = _board(commands=[{"id": 5, "driver": "pwm", "pin": 25, "freq": 500, "max": 80},
                         {"id": 6, "driver": "pwm", "pin": 21, "invert": True,
                          "safe_value": 25}])
    fan, lamp = b.actuators[5], b.actuators[6]
    assert fan.pwm.freq() == 500 and fan.pwm.duty_u16() == 0
    assert fan.apply("50") == 50 and fan.pwm.duty_u16() == 32768
    assert fan.apply(12.5) == 12.5 and fan.pwm.duty_u16() == 8192
    e = support.raises(Rejected, fan.apply, 90)
    assert "above max" in e.reason and fan.pwm.duty_u16() == 8192  # rejected, not clamped
    support.raises(Rejected, fan.apply, -1)
    assert lamp.pwm.duty_u16() == 65535 - 16384 and lamp.value() == 25
    assert lamp.apply(100) == 100 and lamp.pwm.duty_u16() == 0
    assert outputs.duty_u16(100) == 65535 and outputs.duty_u16(0) == 0
    e = support.raises(BoardConfigError, _board,
                       commands=[{"id": 5, "driver": "pwm", "pin": 25, "max": 150}])
    assert "0..100" in str(e)


# --- button: the debounce decision with scripted edges and ticks ---------------------------

class _Clock:
    def __init__(self):
        self.now = 0

    def __call__(self):
        return self.now


def _button(cfg, board=None):
    clk = _Clock()
    board = board or _board()
    pin = machine.Pin(cfg.get("pin", 4), machine.Pin.IN, machine.Pin.PULL_UP)
    pin.value(1)  # released: the pull-up holds it high
    return button.Button(cfg, board, pin, ticks=clk), clk, board


def _edge(btn, clk, at, level):
    clk.now = at
    btn.pin.set_input(level)


def test_bounces_give_one_change_after_the_contact_settles():
    btn, clk, board = _button({"command": 3, "pin": 4, "debounce_ms": 30})
    assert btn.value() == 0
    for at, level in ((0, 0), (4, 1), (7, 0), (11, 1), (15, 0)):  # a bouncy press
        _edge(btn, clk, at, level)
    assert not btn.poll(30)  # 15 ms since the last edge: still settling
    assert btn.poll(45)
    assert btn.value() == 1 and board.local.pending() == 1
    assert not btn.poll(100)  # nothing new


def test_a_glitch_that_comes_back_reports_nothing():
    btn, clk, board = _button({"command": 3, "pin": 4, "debounce_ms": 20})
    _edge(btn, clk, 1000, 0)
    _edge(btn, clk, 1003, 1)
    assert not btn.poll(1030) and btn.changes == 0 and board.local.pending() == 0


def test_toggle_mode_flips_the_linked_relay_on_each_press():
    board = _board(commands=[{"id": 3, "driver": "relay", "pin": 23}])
    btn, clk, _ = _button({"command": 3, "pin": 4, "mode": "toggle"}, board)
    relay = board.actuators[3]

    def press(at):
        _edge(btn, clk, at, 0)
        btn.poll(at + 100)
        _edge(btn, clk, at + 200, 1)
        btn.poll(at + 300)

    press(0)
    assert relay.value() == 1 and btn.value() == 1
    press(1000)
    assert relay.value() == 0
    assert btn.changes == 4  # presses and releases are changes; only presses flip

    async def drained():
        return await board.local.wait()

    assert support.run(drained()) == [(3, 0)]


def test_irq_handler_does_not_allocate():
    btn, clk, _ = _button({"command": 3, "pin": 4})
    clk.now = 5
    micropython.heap_lock()
    try:
        btn._irq(btn.pin)
    finally:
        micropython.heap_unlock()
    assert btn._dirty and btn._edge == 5


def test_button_task_reports_through_local_changes():
    b = _board(commands=[{"id": 3, "driver": "relay", "pin": 23}],
               switches=[{"command": 3, "pin": 14, "debounce_ms": 5}])
    btn = b.switches[0]
    assert btn.pin.pull == machine.Pin.PULL_UP and btn.value() == 0
    name, factory = b.background()[0]
    assert name == "switch-3"

    async def go():
        t = asyncio.create_task(factory())
        await asyncio.sleep_ms(0)
        btn.pin.set_input(0)  # pressed: pulled to ground
        got = await b.local.wait()
        t.cancel()
        await asyncio.sleep_ms(0)
        return got

    assert support.run(go()) == [(3, 1)]
    assert b.actuators[3].value() == 1  # a wall switch drives its relay


def test_factory_config_errors_name_the_entry():
    for entry, word in (({"id": 1, "driver": "relay", "pin": 2}, "not a sensor"),
                        ({"id": 1, "driver": "dht22", "pin": True}, "GPIO")):
        e = support.raises(BoardConfigError, _board, [entry])
        assert word in str(e), str(e)
    e = support.raises(BoardConfigError, _board, (), [{"id": 1, "driver": "adc", "pin": 2}])
    assert "not a command" in str(e)
    e = support.raises(BoardConfigError, _board, (), (),
                       [{"command": 1, "driver": "adc", "pin": 2}])
    assert "input driver" in str(e)
    e = support.raises(BoardConfigError, _board, (), (),
                       [{"command": 1, "pin": 2, "debounce_ms": -1}])
    assert "debounce_ms" in str(e)
