"""The sensing tasks (app.py runs them as `sampler` and `local`): readings at each sensor's
interval and physical input changes into the outbox, each waking the uplink; and the wait for
a true wall clock that every task with timestamps or tokens starts with."""
import asyncio

from micropython import const

from firmware import clock, log
from firmware.backoff import Backoff
from firmware.tasks import within_ms

_TAG = "app"
_IDLE_WAKE_MS = const(30000)
_SENSOR_RETRY_MS = const(1000)  # first retry of a failing sensor, doubling from there
_SENSOR_RETRY_MIN_MS = const(100)


async def clock_ready():
    waited = 0
    while not clock.is_set():  # readings need a true timestamp; NTP comes with Wi-Fi
        waited += 1
        if waited == 10:  # say why nothing happens (each waiting task: logged once)
            log.failing("clock", _TAG, "clock", "not set after 10 s; nothing is sampled "
                        "or sent until it is", "; fix: it comes from NTP once Wi-Fi is "
                        "up: check wifi.ssid, wifi.password and that the network reaches "
                        "an NTP server")
        await asyncio.sleep_ms(1000)
    log.recovered("clock", _TAG, "clock: set")


# A failing sensor (error, driver bug or timeout) is logged once, then retried on its own
# backoff, capped at twice its interval so the watchdog still sees the sampler progress;
# its recovery is logged once. Other sensors keep their pace.
async def sampler(app):
    await clock_ready()
    due = {sid: clock.Deadline(0) for sid in app.board.sensors}
    failing: dict = {}  # sid -> Backoff while that sensor fails
    while True:
        enabled = app.cloud.enabled_sensors
        for sid, sensor in app.board.sensors.items():
            if not due[sid].expired():
                continue
            interval_ms = int(sensor.interval_s * 1000)
            due[sid] = clock.Deadline(interval_ms)
            if enabled is not None and sid not in enabled:
                continue  # the cloud's sensor catalog does not list it
            try:
                value = await within_ms(sensor.read(), int(sensor.timeout_s * 1000))
            except Exception as e:  # BoardError, a driver bug, asyncio.TimeoutError
                app.sensor_errors += 1
                b = failing.get(sid)
                if b is None:
                    b = failing[sid] = Backoff(min(_SENSOR_RETRY_MS, interval_ms),
                                               2 * interval_ms)
                    log.warn(_TAG, "sensor %s: %s; retrying with backoff, quiet until it "
                             "recovers", sid, log.describe(e))
                due[sid] = clock.Deadline(max(_SENSOR_RETRY_MIN_MS, b.next_ms()))
                continue
            b = failing.pop(sid, None)
            if b is not None:
                log.info(_TAG, "sensor %s: recovered after %d failed reads", sid, b.attempts)
            app.append("sensor", sid, value)
            app.readings += 1
        nxt = min(d.remaining_ms() for d in due.values()) if due else _IDLE_WAKE_MS
        await asyncio.sleep_ms(max(50, nxt))


async def local(app):
    await clock_ready()
    while True:
        for cid, value in await app.board.local.wait():
            log.info(_TAG, "local change on command %s -> %s", cid, value)
            app.append("command", cid, value)
