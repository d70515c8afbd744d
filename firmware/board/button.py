"""A physical button or wall switch on a GPIO, debounced, reporting through base.Switch.

The pin IRQ only notes the time of the edge and sets a flag (no allocation, safe as a hard
IRQ); the switch's task waits on the flag, lets the contact settle for `debounce_ms`, and
reports the level only if it differs from the last stable one, so a bouncing contact gives
one change and a glitch that comes back gives none. `poll(now)` is that decision, separate
from time so tests can script edges and ticks.
Config: `command` (cloud command id it reports as), `pin`, `pull` (default up),
`active_low` (default true: pressed/closed pulls the pin to ground), `debounce_ms`
(default 30), `mode` ("level": report the contact, a wall switch; "toggle": each press
flips the linked command, a push button).
"""
import asyncio
from time import ticks_diff, ticks_ms

from micropython import const

from firmware.board.base import BoardConfigError, Switch

_DEBOUNCE_MS = const(30)


class Button(Switch):
    def __init__(self, cfg, board, pin, ticks=ticks_ms):
        super().__init__(cfg, board)
        self.pin = pin
        self.invert = 1 if cfg.get("active_low", True) else 0
        self.debounce_ms = cfg.get("debounce_ms", _DEBOUNCE_MS)
        if isinstance(self.debounce_ms, bool) or not isinstance(self.debounce_ms, int) or \
                not 0 <= self.debounce_ms <= 10000:
            raise BoardConfigError("switch %s: debounce_ms must be 0..10000, got %r"
                                   % (self.command_id, self.debounce_ms))
        mode = cfg.get("mode", "level")
        if mode not in ("level", "toggle"):
            raise BoardConfigError("switch %s: mode must be level or toggle, got %r"
                                   % (self.command_id, mode))
        self.toggle = mode == "toggle"
        self._ticks = ticks
        self._edge = ticks()
        self._dirty = False
        self._stable = self._level()
        self._state = 0  # toggle mode without a linked command
        self.changes = 0
        flag = getattr(asyncio, "ThreadSafeFlag", None)
        self._flag = flag() if flag is not None else asyncio.Event()
        pin.irq(handler=self._irq, trigger=pin.IRQ_RISING | pin.IRQ_FALLING)

    def _level(self):
        return self.pin.value() ^ self.invert

    # IRQ context: store a small int and set a flag, nothing else
    def _irq(self, pin):
        self._edge = self._ticks()
        self._dirty = True
        self._flag.set()

    def poll(self, now):
        """After the contact has been quiet for debounce_ms, report a changed stable level.
        Returns True when a change was reported."""
        if not self._dirty or ticks_diff(now, self._edge) < self.debounce_ms:
            return False
        self._dirty = False
        level = self._level()
        if level == self._stable:
            return False  # bounced back: nothing happened
        self._stable = level
        self.changes += 1
        if not self.toggle:
            self.changed(level)
        elif level:  # a press flips; the release says nothing
            self._state = 0 if self.value() else 1
            self.changed(self._state)
        return True

    def value(self):
        if not self.toggle:
            return self._stable
        act = self.board.actuators.get(self.command_id)
        return act.value() if act is not None else self._state

    def task(self):
        return self._run

    async def _run(self):
        while True:
            while not self._dirty:
                await self._flag.wait()
                if isinstance(self._flag, asyncio.Event):
                    self._flag.clear()
            wait = self.debounce_ms - ticks_diff(self._ticks(), self._edge)
            if wait > 0:
                await asyncio.sleep_ms(wait)
            else:
                self.poll(self._ticks())
