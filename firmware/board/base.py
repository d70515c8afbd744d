"""The small interface every board speaks: sensors, actuators, local inputs.

A `Board` holds `sensors` and `actuators` by cloud id and the physical `switches`; the tasks
never see pins or buses. Drivers plug in through the registry in firmware/board/factory.py,
which builds a `Board` from config; this module knows neither.
"""
import asyncio

from micropython import const

from firmware import log

_TAG = "board"
_DEFAULT_INTERVAL_S = const(60)
_DEFAULT_TIMEOUT_S = const(10)


class BoardError(Exception):
    """Base of every board error."""


class BoardConfigError(BoardError):
    """The sensors/commands/switches config cannot be turned into a board; names the entry."""


class SensorError(BoardError):
    """A sensor could not be read (bus error, CRC, timeout); the sampler logs and goes on."""


class ActuatorError(BoardError):
    """The actuator hardware failed while applying a value."""


class Rejected(BoardError):
    """The value is not valid for this actuator (type, range); `reason` says why."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def value_text(value):
    """The cloud's string form of a reading or actuator value: `1`/`0` for booleans, integers
    as they are, floats with at most 6 significant digits (ESP32 floats are single precision,
    so more digits would only show noise)."""
    if value is True:
        return "1"
    if value is False:
        return "0"
    if isinstance(value, float):
        if value == int(value) and abs(value) < 1e15:
            return str(int(value))
        return "%.6g" % value
    return str(value)


def _id(cfg, what):
    if not isinstance(cfg, dict) or "id" not in cfg:
        raise BoardConfigError("%s entry %r has no id: give it the cloud id" % (what, cfg))
    return cfg["id"]


class Sensor:
    """One cloud sensor. Subclasses implement `read()`."""

    def __init__(self, cfg):
        self.id = _id(cfg, "sensor")
        self.interval_s = cfg.get("interval_s", _DEFAULT_INTERVAL_S)
        # a read taking longer is a failure (the sampler gives up on it and backs off)
        self.timeout_s = cfg.get("timeout_s", _DEFAULT_TIMEOUT_S)
        self.cfg = cfg

    # A number, bool or str; raises SensorError when the hardware does not answer.
    async def read(self):
        raise NotImplementedError


_ON = ("1", "on", "true", "yes")
_OFF = ("0", "off", "false", "no")


class Actuator:
    """One cloud command. `kind` "switch" takes 0/1 (also on/off, true/false); any other kind
    takes a number within [min, max]. Subclasses implement `_write(v)` and `value()`."""

    def __init__(self, cfg):
        self.id = _id(cfg, "command")
        self.kind = cfg.get("kind", "switch")
        if self.kind == "switch":
            self.min, self.max = 0, 1
        else:
            self.min = cfg.get("min")
            self.max = cfg.get("max")
        self.cfg = cfg
        self.safe_value = self.config_value("safe_value",
                                            self.min if self.min is not None else 0)
        # consecutive cloud failures after which this actuator goes safe (None: never)
        n = cfg.get("fallback_after_failures")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise BoardConfigError("command %s: fallback_after_failures must be a whole "
                                   "number >= 1, got %r" % (self.id, n))
        self.fallback_after = n

    # A value from config that must pass check(): a bad one is a config error, said so.
    def config_value(self, key, default):
        try:
            return self.check(self.cfg.get(key, default))
        except Rejected as e:
            raise BoardConfigError("command %s: %s is invalid (%s)" % (self.id, key, e.reason))

    # Turns what the cloud sent (often a string) into the value to write, or says why not.
    def check(self, value):
        if self.kind == "switch":
            if isinstance(value, bool):
                return 1 if value else 0
            text = str(value).strip().lower()
            if text in _ON:
                return 1
            if text in _OFF:
                return 0
            raise Rejected("command %s is a switch: %r is not 0/1/on/off" % (self.id, value))
        if isinstance(value, bool):
            raise Rejected("command %s wants a number, got %r" % (self.id, value))
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise Rejected("command %s wants a number, got %r" % (self.id, value))
        if v != v or v in (float("inf"), float("-inf")):
            raise Rejected("command %s: %r is not a finite number" % (self.id, value))
        if self.min is not None and v < self.min:
            raise Rejected("command %s: %s is below min %s" % (self.id, value, self.min))
        if self.max is not None and v > self.max:
            raise Rejected("command %s: %s is above max %s" % (self.id, value, self.max))
        return int(v) if v == int(v) else v

    # Applies a value and returns the observed physical value (Rejected / ActuatorError).
    def apply(self, value):
        self._write(self.check(value))
        return self.value()

    def safe(self):
        """Apply the configured safe value (boot, lost authorization, shutdown)."""
        return self.apply(self.safe_value)

    def _write(self, v):
        raise NotImplementedError

    # The observed physical value, read back from the hardware where it can be.
    def value(self):
        raise NotImplementedError


class LocalChanges:
    """Physical input changes waiting for the local task: the latest value per command id.

    Bursts coalesce (only the newest state is reported, which is what the cloud reconciles
    to), so memory stays bounded however fast a switch bounces. `post` is cheap and may be
    called from a scheduled (soft) pin interrupt: the wake-up uses ThreadSafeFlag where the
    port has it.
    """

    def __init__(self):
        flag = getattr(asyncio, "ThreadSafeFlag", None)
        self._flag = flag() if flag is not None else asyncio.Event()
        self._pending: dict = {}

    def post(self, command_id, value):
        self._pending[command_id] = value
        self._flag.set()

    def pending(self):
        return len(self._pending)

    # Waits for at least one change and returns [(command_id, value), ...].
    async def wait(self):
        while not self._pending:
            await self._flag.wait()
            if isinstance(self._flag, asyncio.Event):
                self._flag.clear()
        # a post between these two lines lands in the dict we already hold, so none is lost
        items = self._pending
        self._pending = {}
        return list(items.items())


class Switch:
    """A physical input that reports through a cloud command id without desired_id. When an
    actuator has that id, the switch drives it (a wall toggle on a relay)."""

    def __init__(self, cfg, board):
        self.id = cfg.get("id", cfg.get("command"))
        self.command_id = cfg.get("command", self.id)
        if self.command_id is None:
            raise BoardConfigError("switch entry %r needs `command`: the cloud command id it "
                                   "reports as" % (cfg,))
        self.board = board
        self.cfg = cfg

    def value(self):
        raise NotImplementedError

    # A coroutine factory the supervisor runs for this input (a poll or a schedule), or None.
    def task(self):
        return None

    # Called by drivers when the input changed to `value`: move the actuator, tell the task.
    def changed(self, value):
        act = self.board.actuators.get(self.command_id)
        if act is not None:
            try:
                value = act.apply(value)
            except BoardError:
                pass  # report what the input says; the actuator's failure shows in its value
        self.board.local.post(self.command_id, value)


class Board:
    """Sensors and actuators by cloud id, switches, and the local change queue."""

    def __init__(self, kind):
        self.kind = kind
        self.sensors: dict = {}
        self.actuators: dict = {}
        self.switches: list = []
        self.local = LocalChanges()
        self._failures = 0

    def safe_all(self):
        """Put every actuator in its safe state; returns the ids that failed to go safe."""
        failed = []
        for act in self.actuators.values():
            try:
                act.safe()
            except BoardError:
                failed.append(act.id)
        return failed

    def fallback(self, reason):
        """Every actuator to its safe value because `reason` (lost cloud, lost authorization,
        a watchdog decision); logged once here. Returns the ids that failed to go safe."""
        failed = self.safe_all()
        log.warn(_TAG, "fallback: all commands to safe values (%s)%s", reason,
                 "; failed: %s" % (failed,) if failed else "")
        return failed

    def link_failed(self, reason):
        """One more consecutive cloud failure: actuators whose `fallback_after_failures` is
        reached go safe, each once per outage. Returns the ids that went safe now."""
        self._failures += 1
        now = []
        for act in self.actuators.values():
            n = act.fallback_after
            if n is None or self._failures != n:
                continue
            try:
                act.safe()
                now.append(act.id)
            except BoardError as e:
                log.error(_TAG, "fallback: command %s did not go safe: %s", act.id,
                          log.describe(e))
        if now:
            log.warn(_TAG, "fallback: commands %s to safe values after %d cloud failures (%s)",
                     now, self._failures, reason)
        return now

    def link_ok(self):
        """The cloud answered: the failure count starts again (actuators stay where they are
        until the cloud or a switch moves them)."""
        self._failures = 0

    # (name, coroutine factory) pairs the supervisor should run, e.g. switch schedules.
    def background(self):
        out = []
        for sw in self.switches:
            fn = sw.task()
            if fn is not None:
                out.append(("switch-%s" % sw.id, fn))
        return out

