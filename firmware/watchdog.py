"""The hardware watchdog, fed only while the loop makes progress.

`Watchdog(timeout_ms)` owns `machine.WDT` (made on `start()`, never at import). Tasks report
progress with `tick(name)`; `expect(name, within_ms, probe=None)` makes a name critical: it
must tick (or its probe's value must change, or the probe must answer None = "idle, nothing
to do") at least every `within_ms`. The health task calls `feed()`; it feeds the WDT only
while no critical name is stalled, so a hung task (or a blocked loop, which also stops the
health task) lets the WDT reset the board. With no timeout configured nothing is started and
`feed()` still reports stalls, so the host sees the same decisions.
"""
from time import ticks_diff, ticks_ms

from micropython import const

from firmware import log

_TAG = "watchdog"
STALL_S = const(600)  # default progress window of a critical task (config intervals.stall_s)


class _Watch:
    def __init__(self, within_ms, probe):
        self.within_ms = within_ms
        self.probe = probe
        self.last = ticks_ms()
        self.value = None
        self.ticks = 0


class Watchdog:
    def __init__(self, timeout_ms=None, wdt_factory=None):
        self.timeout_ms = timeout_ms
        self._factory = wdt_factory
        self.wdt = None
        self.feeds = 0
        self.withheld = 0  # feeds skipped because something stalled
        self._watches: dict = {}

    def start(self):
        """Start the hardware WDT (if configured). On the ESP32 it cannot be stopped again."""
        if self.timeout_ms is None or self.wdt is not None:
            return
        factory = self._factory
        if factory is None:
            import machine

            factory = machine.WDT
        self.wdt = factory(timeout=int(self.timeout_ms))
        log.info(_TAG, "started, timeout %d ms", self.timeout_ms)

    def expect(self, name, within_ms, probe=None):
        """`name` is critical: no progress for `within_ms` stops the feeding."""
        w = _Watch(int(within_ms), probe)
        if probe is not None:
            w.value = _sample(probe)
        self._watches[name] = w

    def tick(self, name, now=None):
        w = self._watches.get(name)
        if w is not None:
            w.last = ticks_ms() if now is None else now
            w.ticks += 1

    def stalled(self, now=None):
        """Names with no progress within their window (probes are sampled here)."""
        now = ticks_ms() if now is None else now
        out = []
        for name, w in self._watches.items():
            if w.probe is not None:
                v = _sample(w.probe)
                if v is None or v != w.value:
                    w.value = v
                    w.last = now
            if ticks_diff(now, w.last) > w.within_ms:
                out.append(name)
        return out

    def feed(self, now=None):
        """Feed the WDT unless a critical name stalled; returns the stalled names."""
        stuck = self.stalled(now)
        if stuck:
            self.withheld += 1
            if self.withheld == 1:  # once: the reset follows, no need to repeat it
                log.error(_TAG, "no progress from %s; not feeding, the board will reset",
                          ", ".join(stuck))
            return stuck
        if self.withheld:
            log.warn(_TAG, "progress again after %d withheld feeds", self.withheld)
            self.withheld = 0
        if self.wdt is not None:
            self.wdt.feed()
        self.feeds += 1
        return stuck

    def feed_every_ms(self, default_ms):
        """How often health must wake to feed: a third of the timeout, at most default_ms."""
        if self.timeout_ms is None:
            return default_ms
        return max(100, min(default_ms, int(self.timeout_ms) // 3))


# A probe that fails is a stall signal, not a crash of the health task.
def _sample(probe):
    try:
        return probe()
    except Exception as e:
        return "error: %s" % type(e).__name__
