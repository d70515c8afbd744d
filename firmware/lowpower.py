"""Low-power duty cycle: wake, sample once, flush within a budget, deep-sleep until the next.

`run_once(app)` is the alternative to the endless loop when config `lowpower.enabled` is true.
Each wake reads every enabled sensor once (`sleep_s` is then the sampling interval), runs the
app's usual tasks (Wi-Fi, uplink, downlink, auth, health; not the sampler) until the outbox is
empty or `budget_s` is spent, and calls `machine.deepsleep()` for the rest of the period.
Readings are in the flash outbox already; what deep sleep must carry is small and lives in
RTC memory: the wake count and how many cycles in a row ended with records still queued.
After such failures the radio is only tried every 2nd, 4th, ... 16th wake (readings are still
taken, the RTC keeps time in deep sleep), so a long outage does not drain the battery.
On a port without machine.RTC/deepsleep (the unix port running main.py) the state goes to
the file `lowpower.state` in the data root and the "sleep" is a pause, then the next wake.
"""
import asyncio
import json
import time
from time import ticks_diff, ticks_ms

from micropython import const

from firmware import clock, config, log, safemode, statefile, upkeep
from firmware.board.base import BoardError

_TAG = "lowpower"
_BUDGET_S = const(30)
_SLEEP_S = const(300)
_MIN_SLEEP_MS = const(1000)
_MAX_SKIP_SHIFT = const(4)  # after failures, use the radio at least every 16th wake
_STEP_MS = const(100)
_STATE_FILE = "lowpower.state"


class FileMemory:
    """RTC memory's stand-in where the port has no machine.RTC (the unix port running
    main.py on the host): the same bytes in a file in the data root, replaced atomically."""

    def __init__(self, root):
        self.path = config.join(root, _STATE_FILE)

    def memory(self, data=None):
        if data is None:
            try:
                with open(self.path, "rb") as f:
                    return f.read()
            except OSError:
                return b""
        statefile.write(self.path, data)
        return None


def _rtc(rtc, root="."):
    if rtc is None:
        import machine

        rtc = machine.RTC() if hasattr(machine, "RTC") else FileMemory(root)
    return rtc


def _host_sleep(ms):
    # no deep sleep on this port: pause, then return so the caller runs the next wake
    time.sleep_ms(ms)


def load_state(rtc=None):
    """{"n": wakes, "fail": cycles in a row that left records queued}; fresh on bad memory."""
    try:
        raw = _rtc(rtc).memory()
        state = json.loads(raw) if raw else {}
    except (ValueError, TypeError, OSError):
        state = {}
    if not isinstance(state, dict):
        state = {}
    out = {}
    for key in ("n", "fail"):
        v = state.get(key)
        out[key] = v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0
    return out


def save_state(state, rtc=None):
    _rtc(rtc).memory(json.dumps(state).encode())


def network_due(state):
    """Use the radio on this wake? Always, unless recent cycles failed (then 1 in 2**fail)."""
    shift = min(state["fail"], _MAX_SKIP_SHIFT)
    return shift == 0 or state["n"] % (1 << shift) == 0


async def sample_once(app):
    """Read every enabled sensor once into the outbox; returns how many readings were kept."""
    enabled = app.cloud.enabled_sensors
    kept = 0
    for sid, sensor in app.board.sensors.items():
        if enabled is not None and sid not in enabled:
            continue
        try:
            value = await sensor.read()
        except BoardError as e:
            app.sensor_errors += 1
            log.warn(_TAG, "sensor %s: %s", sid, log.describe(e))
            continue
        app.append("sensor", sid, value)
        app.readings += 1
        kept += 1
    return kept


async def _wait(cond, deadline):
    while not cond():
        if deadline.expired():
            return False
        await asyncio.sleep_ms(min(_STEP_MS, max(1, deadline.remaining_ms())))
    return True


async def cycle(app, budget_ms, use_network=True):
    """One wake's work; True when the outbox ended empty (everything delivered)."""
    deadline = clock.Deadline(budget_ms)
    sampled = False
    if clock.is_set():  # the RTC kept time through deep sleep: sample at the true wake time
        await sample_once(app)
        sampled = True
    if not use_network and sampled:
        return app.outbox.pending_count() == 0
    sup = app.supervisor(sampler=False)
    runner = asyncio.create_task(sup.run_forever())
    try:
        if not sampled and await _wait(clock.is_set, deadline):
            await sample_once(app)
        return await _wait(lambda: app.outbox.pending_count() == 0, deadline)
    finally:
        sup.stop()
        try:
            await runner
        except Exception as e:  # unwinding must not keep the board awake
            log.warn(_TAG, "stopping tasks: %s", log.describe(e))


def run_once(app, budget_s=None, sleep_s=None, rtc=None, deepsleep=None):
    """Wake -> sample -> flush (at most budget_s) -> deep sleep for the rest of sleep_s.

    On the board deepsleep() does not return (the next wake boots from the top); a host
    stand-in may return, and then so does this (with the sleep it asked for, in ms)."""
    started = ticks_ms()
    lp = app.cfg.get("lowpower") or {}
    budget_s = budget_s if budget_s is not None else lp.get("budget_s", _BUDGET_S)
    sleep_s = sleep_s if sleep_s is not None else lp.get("sleep_s", _SLEEP_S)
    rtc = _rtc(rtc, app.cfg.root)
    state = load_state(rtc)
    state["n"] += 1
    use_net = network_due(state)
    try:
        drained = asyncio.run(cycle(app, int(budget_s * 1000), use_net))
    except Exception as e:  # a failed cycle still sleeps: the next wake tries again
        log.exc(_TAG, "cycle failed", e)
        drained = False
    if getattr(app, "trial", None) is not None and app.delivered:
        upkeep.confirm_update(app)  # the health task may not tick within a short wake
    if use_net or drained:
        state["fail"] = 0 if drained else state["fail"] + 1
    save_state(state, rtc)
    try:  # the wake's last delivery is on flash only at the next append: put it there now
        app.outbox.flush()
    except Exception as e:  # that record is sent again at the next wake (at-least-once)
        log.warn(_TAG, "outbox flush: %s", log.describe(e))
    safemode.healthy(app.cfg.root)  # a wake that got this far was no crash
    sleep_ms = max(_MIN_SLEEP_MS, int(sleep_s * 1000) - ticks_diff(ticks_ms(), started))
    log.info(_TAG, "wake %d: readings=%d pending=%d network=%s; sleeping %d ms", state["n"],
             app.readings, app.outbox.pending_count(), "yes" if use_net else "skipped",
             sleep_ms)
    if deepsleep is None:
        import machine

        deepsleep = getattr(machine, "deepsleep", _host_sleep)
    deepsleep(sleep_ms)
    return sleep_ms
