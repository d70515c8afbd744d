"""The sim board: plausible sensors, obedient (or, on request, stubborn) actuators, and a
physical switch that flips by itself. It runs the whole firmware on the host and in tests.

Every sim object draws from its own xorshift32 generator, seeded from config `seed` or from
`random.getrandbits`, so a seeded run gives the same values on CPython and MicroPython.
Test knobs are plain attributes (also settable from config): `fail_next` (sensor and
actuator: the next N calls raise SensorError / ActuatorError), `refuse_next` (actuator: the
next N applies raise Rejected), `stuck` (actuator ignores writes, so the observed value
differs from the requested one).
"""
import asyncio
import random

from micropython import const

from firmware.board.base import (
    Actuator,
    ActuatorError,
    Rejected,
    Sensor,
    SensorError,
    Switch,
)

_MASK32 = const(0xFFFFFFFF)
_UNIT = const(1 << 24)

# quantity -> (start, step, min, max, decimals)
_DEFAULTS = {
    "temperature": (21.0, 0.2, 15.0, 30.0, 1),
    "humidity": (50.0, 1.0, 20.0, 80.0, 0),
    "level": (50.0, 5.0, 0.0, 100.0, 0),
}


class _Rng:
    """xorshift32: tiny, deterministic for a seed, identical on every runtime."""

    def __init__(self, seed=None):
        if seed is None:
            seed = random.getrandbits(32)
        self.s = (int(seed) & _MASK32) or 0x9E3779B9

    # uniform in [0, 1)
    def unit(self):
        s = self.s
        s ^= (s << 13) & _MASK32
        s ^= s >> 17
        s ^= (s << 5) & _MASK32
        self.s = s
        return (s >> 8) / _UNIT


class SimSensor(Sensor):
    """A bounded random walk: config `quantity` (temperature, humidity, level) picks the
    defaults; `start`, `step`, `min`, `max`, `decimals`, `seed` override them."""

    def __init__(self, cfg):
        super().__init__(cfg)
        d = _DEFAULTS.get(cfg.get("quantity", "temperature"), _DEFAULTS["temperature"])
        self.lo = float(cfg.get("min", d[2]))
        self.hi = float(cfg.get("max", d[3]))
        if self.lo > self.hi:
            self.lo, self.hi = self.hi, self.lo
        self.step = abs(float(cfg.get("step", d[1])))
        self.decimals = int(cfg.get("decimals", d[4]))
        self.v = min(self.hi, max(self.lo, float(cfg.get("start", d[0]))))
        self.rng = _Rng(cfg.get("seed"))
        self.fail_next = int(cfg.get("fail_next", 0))
        self.reads = 0

    async def read(self):
        await asyncio.sleep_ms(0)  # a real bus read yields; so does this one
        self.reads += 1
        if self.fail_next > 0:
            self.fail_next -= 1
            raise SensorError("sim sensor %s: injected read failure" % (self.id,))
        v = self.v + (self.rng.unit() * 2 - 1) * self.step
        # reflect at the bounds so the walk stays inside without sticking to an edge
        if v > self.hi:
            v = 2 * self.hi - v
        if v < self.lo:
            v = 2 * self.lo - v
        self.v = min(self.hi, max(self.lo, v))
        if self.decimals <= 0:
            return int(round(self.v))
        return round(self.v, self.decimals)


class SimActuator(Actuator):
    """Holds the value it was given (starting at config `initial`, else the safe value)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self._v = self.config_value("initial", self.safe_value)
        self.fail_next = int(cfg.get("fail_next", 0))
        self.refuse_next = int(cfg.get("refuse_next", 0))
        self.stuck = bool(cfg.get("stuck", False))
        self.writes = 0

    def apply(self, value):
        if self.refuse_next > 0:
            self.refuse_next -= 1
            raise Rejected("sim command %s: injected refusal" % (self.id,))
        return super().apply(value)

    def _write(self, v):
        if self.fail_next > 0:
            self.fail_next -= 1
            raise ActuatorError("sim command %s: injected hardware failure" % (self.id,))
        self.writes += 1
        if not self.stuck:
            self._v = v

    def value(self):
        return self._v

    # the physical side moved it (the linked switch), not the cloud
    def force(self, v):
        self._v = v


class SimSwitch(Switch):
    """A toggle that flips every `flip_every_s` seconds (0/absent: only on `flip()`). Linked
    to an actuator with the same command id, it moves that actuator's observed state."""

    def __init__(self, cfg, board):
        super().__init__(cfg, board)
        self.flip_every_ms = int(float(cfg.get("flip_every_s", 0)) * 1000)
        self._state = 1 if cfg.get("initial") else 0
        self.flips = 0

    def value(self):
        act = self.board.actuators.get(self.command_id)
        return act.value() if act is not None else self._state

    def flip(self):
        """Toggle it by hand, as a person at the device would; returns the new state."""
        new = 0 if self.value() else 1
        self._state = new
        self.flips += 1
        act = self.board.actuators.get(self.command_id)
        if act is not None and hasattr(act, "force"):
            act.force(new)  # a wall toggle overrides whatever the cloud set
        self.board.local.post(self.command_id, new)
        return new

    def task(self):
        if self.flip_every_ms <= 0:
            return None
        return self._run

    async def _run(self):
        while True:
            await asyncio.sleep_ms(self.flip_every_ms)
            self.flip()


# the driver interface make_board() looks up
def sensor(cfg):
    return SimSensor(cfg)


def actuator(cfg):
    return SimActuator(cfg)


def switch(cfg, board):
    return SimSwitch(cfg, board)
