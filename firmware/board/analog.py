"""Analog input through `machine.ADC`: attenuation, averaging, and calibration to units.

The input is the pin voltage in volts from `read_uv()` (the ESP32 port corrects it with the
chip's eFuse calibration), or with `"source": "raw"` the 0..65535 `read_u16()` count. It is
turned into the reported value by either
- `scale` and `offset`: value = input * scale + offset (defaults 1 and 0), or
- `cal`: two points [[input1, value1], [input2, value2]] measured on the real sensor; the
  line through them maps the input (and extrapolates beyond them).
Other keys: `atten` in dB (0, 2.5, 6, 11; default 11 = the full ~0.15..2.45 V range),
`samples` averaged per reading (1..64, default 4), `decimals` (default 2).
"""
from micropython import const

from firmware.board.base import BoardConfigError, Sensor, SensorError

_MAX_SAMPLES = const(64)
_ATTEN = {0: "ATTN_0DB", 2.5: "ATTN_2_5DB", 6: "ATTN_6DB", 11: "ATTN_11DB"}


def atten_const(cfg, adc_cls):
    """The machine.ADC constant for config `atten` (dB)."""
    name = _ATTEN.get(cfg.get("atten", 11))
    if name is None:
        raise BoardConfigError("sensor %s: atten must be one of 0, 2.5, 6, 11 (dB), got %r"
                               % (cfg.get("id"), cfg.get("atten")))
    return getattr(adc_cls, name)


def _num(cfg, key, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise BoardConfigError("sensor %s: %s must be a number, got %r" % (cfg.get("id"), key, v))
    return float(v)


def calibration(cfg):
    """(scale, offset) from `scale`/`offset` or from the two `cal` points."""
    cal = cfg.get("cal")
    if cal is None:
        return (_num(cfg, "scale", cfg.get("scale", 1)), _num(cfg, "offset", cfg.get("offset", 0)))
    if "scale" in cfg or "offset" in cfg:
        raise BoardConfigError("sensor %s: give either cal or scale/offset, not both"
                               % (cfg.get("id"),))
    try:
        (x1, y1), (x2, y2) = cal
    except (TypeError, ValueError):
        raise BoardConfigError("sensor %s: cal must be [[input1, value1], [input2, value2]]"
                               % (cfg.get("id"),))
    x1, y1, x2, y2 = (_num(cfg, "cal", v) for v in (x1, y1, x2, y2))
    if x1 == x2:
        raise BoardConfigError("sensor %s: the two cal points need different inputs"
                               % (cfg.get("id"),))
    scale = (y2 - y1) / (x2 - x1)
    return scale, y1 - x1 * scale


class AnalogSensor(Sensor):
    def __init__(self, cfg, adc):
        super().__init__(cfg)
        self.adc = adc
        self.raw = cfg.get("source", "volts") == "raw"
        if cfg.get("source", "volts") not in ("volts", "raw"):
            raise BoardConfigError("sensor %s: source must be volts or raw" % (self.id,))
        self.samples = cfg.get("samples", 4)
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or \
                not 1 <= self.samples <= _MAX_SAMPLES:
            raise BoardConfigError("sensor %s: samples must be 1..%d" % (self.id, _MAX_SAMPLES))
        self.scale, self.offset = calibration(cfg)
        self.decimals = int(cfg.get("decimals", 2))

    # The averaged input: volts, or the raw 16-bit count.
    def input(self):
        total = 0
        try:
            for _ in range(self.samples):
                total += self.adc.read_u16() if self.raw else self.adc.read_uv()
        except OSError as e:
            raise SensorError("adc sensor %s: %s" % (self.id, e))
        if self.raw:
            return total / self.samples
        return total / self.samples / 1000000

    def convert(self, x):
        return round(x * self.scale + self.offset, self.decimals)

    async def read(self):
        return self.convert(self.input())
