"""Outputs: a relay or plain GPIO (0/1, optionally active-low) and PWM (duty in %).

The factory makes the pin an output already at the safe level (`safe_level`, `safe_duty`),
so nothing switches on for a moment at boot; base.Board.safe_all then applies the safe value
through the driver as for any actuator. Values come through base.Actuator.check: a value
outside [min, max] is Rejected, never clamped.
Config: relay/gpio `pin`, `active_low` (default false: 1 drives the pin high),
`safe_value` (default 0); pwm `pin`, `freq` (Hz, default 1000), `min`/`max` (within 0..100,
defaults 0 and 100), `invert` (duty counted from the low side), `safe_value` (default min).
Both: `fallback_after_failures` (see base.Board.link_failed).
"""
from micropython import const

from firmware.board.base import Actuator, ActuatorError, BoardConfigError

PWM_FREQ = const(1000)
_FULL = const(65535)
_ON = (True, 1, "1", "on", "true", "yes")


def safe_level(cfg):
    """The pin level of the configured safe value (before the actuator exists)."""
    v = cfg.get("safe_value", 0)
    on = 1 if (v.strip().lower() if isinstance(v, str) else v) in _ON else 0
    return on ^ (1 if cfg.get("active_low") else 0)


def pwm_cfg(cfg):
    """The entry with PWM's defaults: a level 0..100 %; a range beyond that is a config error."""
    cfg = dict(cfg)
    cfg["kind"] = "level"
    lo = cfg.setdefault("min", 0)
    hi = cfg.setdefault("max", 100)
    for v in (lo, hi):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 100:
            raise BoardConfigError("command %s: pwm min/max are duty %% within 0..100, got %r"
                                   % (cfg.get("id"), v))
    return cfg


def duty_u16(percent, invert=False):
    d = int(percent * _FULL / 100 + 0.5)
    return _FULL - d if invert else d


def safe_duty(cfg):
    v = cfg.get("safe_value", cfg["min"])
    try:
        v = float(v)
    except (TypeError, ValueError):
        v = 0.0  # Actuator.__init__ will reject it with a config error naming the key
    return duty_u16(min(100.0, max(0.0, v)), cfg.get("invert"))


class PinOutput(Actuator):
    """Relay or GPIO: `kind` is switch (0/1, on/off)."""

    def __init__(self, cfg, pin):
        if cfg.get("kind", "switch") != "switch":
            raise BoardConfigError("command %s: a relay/gpio output is a switch (0/1)"
                                   % (cfg.get("id"),))
        super().__init__(cfg)
        self.pin = pin
        self.invert = 1 if cfg.get("active_low") else 0

    def _write(self, v):
        try:
            self.pin.value(v ^ self.invert)
        except OSError as e:
            raise ActuatorError("command %s: %s" % (self.id, e))

    def value(self):
        return self.pin.value() ^ self.invert


class PwmOutput(Actuator):
    """PWM duty in percent of the period."""

    def __init__(self, cfg, pwm):
        super().__init__(cfg)
        self.pwm = pwm
        self.invert = bool(cfg.get("invert"))

    def _write(self, v):
        try:
            self.pwm.duty_u16(duty_u16(v, self.invert))
        except (OSError, ValueError) as e:
            raise ActuatorError("command %s: %s" % (self.id, e))

    # read back from the timer: 0.01 % is finer than the hardware's 16-bit step shows
    def value(self):
        d = self.pwm.duty_u16()
        if self.invert:
            d = _FULL - d
        pct = round(d * 100 / _FULL, 2)
        return int(pct) if pct == int(pct) else pct
