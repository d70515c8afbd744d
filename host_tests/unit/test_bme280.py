"""BME280 compensation against Bosch's datasheet example and a float reference, and the
driver over the shim I2C bus with a fake chip (register map), on both runtimes."""
import struct

import machine

import support
from firmware.board import bme280
from firmware.board.base import BoardConfigError, SensorError

# The datasheet's worked example (trimming values, raw readings and results)
DS_T = (27504, 26435, -1000)
DS_P = (36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000)
DS_ADC_T = 519888
DS_ADC_P = 415148
# trimming values as a real chip carries them (humidity included)
CHIP_H = (75, 362, 0, 313, 50, 30)


def _tp_bytes(t=DS_T, p=DS_P, h1=CHIP_H[0]):
    return struct.pack("<HhhHhhhhhhhhxB", *(t + p + (h1,)))


def _h_bytes(h2, h3, h4, h5, h6):
    # H4 = E4[7:0] << 4 | E5[3:0], H5 = E6[7:0] << 4 | E5[7:4] (12-bit signed each)
    return struct.pack("<hB", h2, h3) + bytes(((h4 >> 4) & 0xFF, (h4 & 0x0F) | ((h5 & 0x0F) << 4),
                                               (h5 >> 4) & 0xFF, h6 & 0xFF))


def _cal(h=CHIP_H):
    return bme280.Calibration(_tp_bytes(h1=h[0]), _h_bytes(*h[1:]))


def _ref_humidity(tf, adc_h, h):
    """The datasheet's double-precision humidity formula, as an independent reference."""
    h1, h2, h3, h4, h5, h6 = h
    v = tf - 76800.0
    v = (adc_h - (h4 * 64.0 + h5 / 16384.0 * v)) * \
        (h2 / 65536.0 * (1.0 + h6 / 67108864.0 * v * (1.0 + h3 / 67108864.0 * v)))
    v = v * (1.0 - h1 * v / 524288.0)
    return min(100.0, max(0.0, v))


def _ref_pressure(tf, adc_p):
    p1, p2, p3, p4, p5, p6, p7, p8, p9 = DS_P
    var1 = tf / 2.0 - 64000.0
    var2 = var1 * var1 * p6 / 32768.0
    var2 = var2 + var1 * p5 * 2.0
    var2 = var2 / 4.0 + p4 * 65536.0
    var1 = (p3 * var1 * var1 / 524288.0 + p2 * var1) / 524288.0
    var1 = (1.0 + var1 / 32768.0) * p1
    p = 1048576.0 - adc_p
    p = (p - var2 / 4096.0) * 6250.0 / var1
    return p + (p9 * p * p / 2147483648.0 + p * p8 / 32768.0 + p7) / 16.0


def test_datasheet_example_temperature_and_pressure():
    c = _cal()
    tf = bme280.t_fine(c, DS_ADC_T)
    assert tf == 128422
    assert bme280.temperature_centi(tf) == 2508  # 25.08 degC
    p = bme280.pressure_q24_8(c, tf, DS_ADC_P) / 256
    assert abs(p - 100653.27) < 0.05, p  # the datasheet's 100653.27 Pa


def test_pressure_matches_float_reference_across_range():
    c = _cal()
    for adc_t in (400000, 480000, 519888, 560000):
        tf = bme280.t_fine(c, adc_t)
        for adc_p in (250000, 350000, 415148, 500000):
            got = bme280.pressure_q24_8(c, tf, adc_p) / 256
            ref = _ref_pressure(tf, adc_p)
            assert abs(got - ref) < 0.5, (adc_t, adc_p, got, ref)


def test_humidity_matches_float_reference_and_clamps():
    c = _cal()
    tf = bme280.t_fine(c, DS_ADC_T)
    seen = []
    for adc_h in (22000, 26000, 30000, 34000, 38000):
        got = bme280.humidity_q22_10(c, tf, adc_h) / 1024
        ref = _ref_humidity(tf, adc_h, CHIP_H)
        assert abs(got - ref) < 0.05, (adc_h, got, ref)
        seen.append(got)
    assert seen == sorted(seen) and 10 < seen[0] < seen[-1] < 100
    assert bme280.humidity_q22_10(c, tf, 0) == 0
    assert bme280.humidity_q22_10(c, tf, 65535) == 100 * 1024


def test_signed_nibble_packing_of_h4_h5():
    h = (75, -300, 7, -1000, -2000, -12)
    c = _cal(h)
    assert (c.H1, c.H2, c.H3, c.H4, c.H5, c.H6) == h
    c = _cal(CHIP_H)
    assert (c.H1, c.H2, c.H3, c.H4, c.H5, c.H6) == CHIP_H
    assert (c.T1, c.T2, c.T3) == DS_T and (c.P1, c.P9) == (DS_P[0], DS_P[8])


def test_c_division_truncates_toward_zero():
    assert bme280._cdiv(7, 2) == 3 and bme280._cdiv(-7, 2) == -3
    assert bme280._cdiv(7, -2) == -3 and bme280._cdiv(-7, -2) == 3


class FakeChip:
    """A BME280 register map: calibration at 0x88/0xE1, id at 0xD0, data at 0xF7. A forced
    measurement clears the measuring bit after `busy_polls` status reads."""

    def __init__(self, adc_t, adc_p, adc_h, chip_id=0x60, busy_polls=1):
        self.regs = bytearray(256)
        self.regs[0x88:0x88 + 26] = _tp_bytes()
        self.regs[0xE1:0xE1 + 7] = _h_bytes(*CHIP_H[1:])
        self.regs[0xD0] = chip_id
        self.set_adc(adc_t, adc_p, adc_h)
        self.busy_polls = busy_polls
        self._busy = 0
        self.writes = []

    def set_adc(self, adc_t, adc_p, adc_h):
        self.regs[0xF7:0xFF] = bytes((adc_p >> 12, (adc_p >> 4) & 0xFF, (adc_p & 0xF) << 4,
                                      adc_t >> 12, (adc_t >> 4) & 0xFF, (adc_t & 0xF) << 4,
                                      adc_h >> 8, adc_h & 0xFF))

    def read(self, reg, n):
        if reg == 0xF3:
            busy = self._busy > 0
            self._busy -= 1
            return bytes((0x08 if busy else 0,))
        return bytes(self.regs[reg:reg + n])

    def write(self, reg, buf):
        self.writes.append((reg, bytes(buf)))
        if reg == 0xF4 and buf[0] & 3 == 1:
            self._busy = self.busy_polls


def _with_chip(chip, fn):
    machine.I2C.devices = {0x76: chip}
    try:
        return fn(machine.I2C(0))
    finally:
        machine.I2C.devices = {}


def test_driver_over_i2c_reads_all_three_quantities():
    chip = FakeChip(DS_ADC_T, DS_ADC_P, 30000, busy_polls=2)

    def go(bus):
        dev = bme280.BME280(bus)
        sensors = [bme280.BME280Sensor({"id": i, "quantity": q}, dev)
                   for i, q in ((1, "temperature"), (2, "pressure"), (3, "humidity"))]

        async def read_all():
            out = []
            for s in sensors:
                out.append(await s.read())
            return out

        return support.run(read_all())

    t, p, h = _with_chip(chip, go)
    assert t == 25.08
    assert p == 1006.53  # hPa
    tf = 128422
    assert abs(h - _ref_humidity(tf, 30000, CHIP_H)) < 0.06
    # forced mode each time: ctrl_hum before ctrl_meas, x1 oversampling
    assert chip.writes[:2] == [(0xF2, b"\x01"), (0xF4, b"\x25")]
    assert len(chip.writes) == 6


def test_wrong_chip_missing_chip_and_skipped_measurement():
    def read(bus, addr=0x76):
        return support.run(bme280.BME280Sensor({"id": 1}, bme280.BME280(bus, addr)).read())

    e = _with_chip(FakeChip(DS_ADC_T, DS_ADC_P, 30000, chip_id=0x58),
                   lambda bus: support.raises(SensorError, lambda: read(bus)))
    assert "0x58" in str(e)
    e = _with_chip(FakeChip(DS_ADC_T, DS_ADC_P, 30000),
                   lambda bus: support.raises(SensorError, lambda: read(bus, 0x77)))
    assert "0x77" in str(e)
    e = _with_chip(FakeChip(0x80000, DS_ADC_P, 30000),
                   lambda bus: support.raises(SensorError, lambda: read(bus)))
    assert "skipped" in str(e)
    e = _with_chip(FakeChip(DS_ADC_T, DS_ADC_P, 30000, busy_polls=1000),
                   lambda bus: support.raises(SensorError, lambda: read(bus)))
    assert "did not finish" in str(e)


def test_chip_plugged_in_after_a_failure_is_set_up_again():
    chip = FakeChip(DS_ADC_T, DS_ADC_P, 30000)

    def go(bus):
        dev = bme280.BME280(bus)
        s = bme280.BME280Sensor({"id": 1}, dev)
        machine.I2C.devices = {}
        support.raises(SensorError, lambda: support.run(s.read()))
        machine.I2C.devices = {0x76: chip}
        return support.run(s.read())

    assert _with_chip(chip, go) == 25.08


def test_bad_quantity_is_a_config_error():
    e = support.raises(BoardConfigError, bme280.BME280Sensor, {"id": 4, "quantity": "wind"},
                       None)
    assert "wind" in str(e)
