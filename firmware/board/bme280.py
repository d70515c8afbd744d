"""BME280 temperature, pressure and humidity over I2C, with the datasheet's compensation.

`BME280(i2c, address)` owns one chip: it checks the chip id, reads the factory trimming
parameters once, and measures in forced mode (one conversion per request, the chip sleeps
in between: the datasheet's "weather monitoring" setting, oversampling x1, filter off).
The compensation is the integer form of Bosch's BME280 datasheet (section 4.2.3): 32-bit
temperature in 0.01 degC, 64-bit pressure in Pa/256 (Q24.8), 32-bit humidity in %RH/1024
(Q22.10); MicroPython's long ints carry the 64-bit steps.
`BME280Sensor` is one cloud sensor on a chip. Config: `i2c` {`scl`, `sda`, `id` (default
0), `freq` (default 100000)}, `address` (0x76 default, 0x77 with SDO high), `quantity`
(temperature degC, humidity %RH, pressure hPa), `decimals` (default 2).
"""
import asyncio
import struct

from micropython import const

from firmware.board.base import BoardConfigError, Sensor, SensorError

ADDRESS = const(0x76)
CHIP_ID = const(0x60)
_REG_CALIB_TP = const(0x88)  # 26 bytes: T1..T3, P1..P9, (unused), H1
_REG_CALIB_H = const(0xE1)  # 7 bytes: H2..H6
_REG_ID = const(0xD0)
_REG_CTRL_HUM = const(0xF2)
_REG_STATUS = const(0xF3)
_REG_CTRL_MEAS = const(0xF4)
_REG_DATA = const(0xF7)  # press[3], temp[3], hum[2]
_FORCED_X1 = const(0b00100101)  # osrs_t x1, osrs_p x1, forced mode
_MEASURING = const(0x08)
_MEASURE_MS = const(10)  # x1/x1/x1 takes at most 9.3 ms (datasheet 9.1)
_POLLS = const(10)
_SKIPPED_TP = const(0x80000)  # the value a skipped or unfinished T/P conversion reads
_SKIPPED_H = const(0x8000)


def _s8(b):
    return b - 256 if b > 127 else b


class Calibration:
    """The trimming parameters, from the raw bytes at 0x88 (26) and 0xE1 (7)."""

    def __init__(self, tp, h):
        (self.T1, self.T2, self.T3, self.P1, self.P2, self.P3, self.P4, self.P5, self.P6,
         self.P7, self.P8, self.P9, self.H1) = struct.unpack("<HhhHhhhhhhhhxB", tp)
        self.H2 = struct.unpack("<h", h[0:2])[0]
        self.H3 = h[2]
        # H4 and H5 are 12-bit signed values sharing register 0xE5 (datasheet table 16)
        self.H4 = (_s8(h[3]) << 4) | (h[4] & 0x0F)
        self.H5 = (_s8(h[5]) << 4) | (h[4] >> 4)
        self.H6 = _s8(h[6])


def _cdiv(a, b):
    """C's signed integer division (truncates toward zero; Python's // floors)."""
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def t_fine(c, adc_t):
    var1 = (((adc_t >> 3) - (c.T1 << 1)) * c.T2) >> 11
    d = (adc_t >> 4) - c.T1
    var2 = (((d * d) >> 12) * c.T3) >> 14
    return var1 + var2


def temperature_centi(tf):
    """Temperature in 0.01 degC from t_fine."""
    return (tf * 5 + 128) >> 8


def pressure_q24_8(c, tf, adc_p):
    """Pressure in Pa/256; 0 when the calibration would divide by zero."""
    var1 = tf - 128000
    var2 = var1 * var1 * c.P6
    var2 += (var1 * c.P5) << 17
    var2 += c.P4 << 35
    var1 = ((var1 * var1 * c.P3) >> 8) + ((var1 * c.P2) << 12)
    var1 = (((1 << 47) + var1) * c.P1) >> 33
    if var1 == 0:
        return 0
    p = 1048576 - adc_p
    p = _cdiv(((p << 31) - var2) * 3125, var1)
    var1 = (c.P9 * (p >> 13) * (p >> 13)) >> 25
    var2 = (c.P8 * p) >> 19
    return ((p + var1 + var2) >> 8) + (c.P7 << 4)


def humidity_q22_10(c, tf, adc_h):
    """Relative humidity in %RH/1024, limited to 0..100 %."""
    v = tf - 76800
    v = ((((adc_h << 14) - (c.H4 << 20) - (c.H5 * v)) + 16384) >> 15) * \
        (((((((v * c.H6) >> 10) * (((v * c.H3) >> 11) + 32768)) >> 10) + 2097152) * c.H2
          + 8192) >> 14)
    v -= ((((v >> 15) * (v >> 15)) >> 7) * c.H1) >> 4
    v = 0 if v < 0 else v
    v = 419430400 if v > 419430400 else v
    return v >> 12


class BME280:
    def __init__(self, i2c, address=ADDRESS):
        self.i2c = i2c
        self.address = address
        self.cal = None  # read on first use: a chip missing at boot may be plugged in later
        self._data = bytearray(8)
        self._one = bytearray(1)

    def _read(self, reg, n):
        return self.i2c.readfrom_mem(self.address, reg, n)

    def _setup(self):
        chip = self._read(_REG_ID, 1)[0]
        if chip != CHIP_ID:
            raise SensorError("bme280 at 0x%02x: chip id 0x%02x, not a BME280 (0x60)"
                              % (self.address, chip))
        self.cal = Calibration(self._read(_REG_CALIB_TP, 26), self._read(_REG_CALIB_H, 7))

    async def measure(self):
        """One forced conversion: (temperature degC, pressure Pa, humidity %RH)."""
        try:
            if self.cal is None:
                self._setup()
            self.i2c.writeto_mem(self.address, _REG_CTRL_HUM, b"\x01")  # osrs_h x1
            self.i2c.writeto_mem(self.address, _REG_CTRL_MEAS, bytes((_FORCED_X1,)))
            for _ in range(_POLLS):
                await asyncio.sleep_ms(_MEASURE_MS)
                self.i2c.readfrom_mem_into(self.address, _REG_STATUS, self._one)
                if not self._one[0] & _MEASURING:
                    break
            else:
                raise SensorError("bme280 at 0x%02x: conversion did not finish"
                                  % (self.address,))
            self.i2c.readfrom_mem_into(self.address, _REG_DATA, self._data)
        except OSError as e:  # ENODEV / ETIMEDOUT: unplugged or a stuck bus
            self.cal = None  # a replaced chip has other trimming values
            raise SensorError("bme280 at 0x%02x: %s" % (self.address, e))
        return self.compensate(self._data)

    def compensate(self, d):
        """The 8 data bytes from 0xF7 -> (degC, Pa, %RH) as floats."""
        adc_p = (d[0] << 12) | (d[1] << 4) | (d[2] >> 4)
        adc_t = (d[3] << 12) | (d[4] << 4) | (d[5] >> 4)
        adc_h = (d[6] << 8) | d[7]
        if adc_t == _SKIPPED_TP or adc_p == _SKIPPED_TP or adc_h == _SKIPPED_H:
            raise SensorError("bme280 at 0x%02x: measurement skipped" % (self.address,))
        c = self.cal
        tf = t_fine(c, adc_t)
        return (temperature_centi(tf) / 100, pressure_q24_8(c, tf, adc_p) / 256,
                humidity_q22_10(c, tf, adc_h) / 1024)


_INDEX = {"temperature": 0, "pressure": 1, "humidity": 2}


class BME280Sensor(Sensor):
    def __init__(self, cfg, chip):
        super().__init__(cfg)
        self.chip = chip
        q = cfg.get("quantity", "temperature")
        if q not in _INDEX:
            raise BoardConfigError("sensor %s: a bme280 measures temperature, pressure or "
                                   "humidity, not %r" % (self.id, q))
        self.index = _INDEX[q]
        self.decimals = int(cfg.get("decimals", 2))

    async def read(self):
        v = (await self.chip.measure())[self.index]
        if self.index == 1:
            v /= 100  # Pa -> hPa
        return round(v, self.decimals)
