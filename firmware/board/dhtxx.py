"""DHT11 / DHT22 temperature and humidity through MicroPython's built-in `dht` module.

One `Chip` per data pin holds the `dht` object the factory made; a temperature entry and a
humidity entry on that pin share it, and a measurement younger than the chip's minimum gap
(DHT22 2 s, DHT11 1 s: asking sooner returns stale data or times out) is reused.
Config: `quantity` ("temperature" in degC, or "humidity" in %RH), `decimals` (default 1).
"""
from time import ticks_diff, ticks_ms

from micropython import const

from firmware.board.base import BoardConfigError, Sensor, SensorError

_GAP_DHT22_MS = const(2000)
_GAP_DHT11_MS = const(1000)
# the ranges the parts can measure; outside them a reading is a decoding fault, not weather
_LIMITS = {"dht22": (-40.0, 80.0), "dht11": (-20.0, 60.0)}


class Chip:
    def __init__(self, dev, model):
        self.dev = dev
        self.model = model
        self.gap_ms = _GAP_DHT22_MS if model == "dht22" else _GAP_DHT11_MS
        self._at = None  # ticks of the last good measurement

    # Measure unless the last good measurement is recent; returns (temperature, humidity).
    def sample(self, now=None):
        now = ticks_ms() if now is None else now
        if self._at is None or ticks_diff(now, self._at) >= self.gap_ms:
            try:
                self.dev.measure()  # bit-banged, ~5 ms with interrupts off; raises on timeout
            except Exception as e:  # OSError(ETIMEDOUT), checksum error
                self._at = None
                raise SensorError("%s: no valid answer (%s)" % (self.model, e))
            self._at = now
        t = self.dev.temperature()
        h = self.dev.humidity()
        lo, hi = _LIMITS[self.model]
        if not (lo <= t <= hi and 0 <= h <= 100):
            self._at = None
            raise SensorError("%s: implausible reading %s degC %s %%RH" % (self.model, t, h))
        return t, h


class DHTSensor(Sensor):
    def __init__(self, cfg, chip):
        super().__init__(cfg)
        self.chip = chip
        self.quantity = cfg.get("quantity", "temperature")
        if self.quantity not in ("temperature", "humidity"):
            raise BoardConfigError("sensor %s: a DHT measures temperature or humidity, not %r"
                                   % (self.id, self.quantity))
        self.decimals = int(cfg.get("decimals", 1))

    async def read(self):
        t, h = self.chip.sample()
        return round(t if self.quantity == "temperature" else h, self.decimals)
