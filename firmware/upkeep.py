"""The upkeep tasks (app.py runs them as `downlink`, `auth` and `health`): what keeps the
device in service while the sampler and the uplink move data.
- downlink  polls the command catalog and applies its new desired values (firmware/desired.py,
            through the app's `on_desired`)
- auth      renews the token before the adapter's `renew_at`
- health    feeds the watchdog while the loop progresses (firmware/watchdog.py), cancels a
            send attempt that never returns (firmware/uplink.py), confirms an OTA update on
            trial after the first accepted delivery, marks the boot healthy for safe mode,
            and logs one status line every `intervals.status_s`
One module, not one per task: a module costs 0.1-0.2K of heap on the frozen image
(bench/memory.md).
"""
import asyncio
import gc

from micropython import const

from firmware import clock, log, uplink
from firmware.backoff import Backoff
from firmware.sensing import clock_ready

_TAG = "app"
_BASE_MS = const(1000)
_CAP_MS = const(120000)


async def downlink(app):
    await clock_ready()
    poll_ms = int(app.cfg.get("intervals.catalog_poll_s") * 1000)
    backoff = Backoff(_BASE_MS, _CAP_MS)
    while True:
        try:
            wait = await app.cloud.poll_catalog(app.on_desired)
            backoff.reset()
            log.recovered("catalog", _TAG, "catalog poll: working again")
        except Exception as e:  # a poll that failed is simply tried again later
            log.failing("catalog", _TAG, "catalog poll", log.describe(e))
            wait = backoff.next_ms()
        await asyncio.sleep_ms(max(poll_ms, wait))


async def auth(app):
    await clock_ready()
    backoff = Backoff(_BASE_MS, _CAP_MS)
    first = True
    while True:
        if app.cloud.token_due():
            try:
                wait = await app.cloud.authenticate()
            except Exception as e:
                log.failing("auth", _TAG, "auth", log.describe(e))
                wait = backoff.next_ms()
            if app.cloud.token_due():
                await asyncio.sleep_ms(max(wait, backoff.next_ms()))
                continue
            backoff.reset()
            log.recovered("auth", _TAG, "auth: token issued again")
            if first:  # (re)connected: let the cloud reconcile the physical state
                first = False
                app.report_command_states()
        renew_at = app.cloud.renew_at
        await asyncio.sleep_ms(max(1000, renew_at.remaining_ms() if renew_at else 60000))


async def health(app):
    """Feeds the watchdog while every critical task progresses (firmware/watchdog.py),
    marks the boot healthy for safe mode after a while, logs the status line."""
    from firmware import safemode

    every_ms = int(app.cfg.get("intervals.status_s") * 1000)
    dog = app.watchdog
    step_ms = dog.feed_every_ms(every_ms) if dog is not None else every_ms
    if dog is not None:
        dog.start()
    status = clock.Deadline(every_ms)
    healthy = clock.Deadline(safemode.HEALTHY_AFTER_MS)
    marked = False
    while True:
        # a stuck send is seen within a quarter of its limit
        await asyncio.sleep_ms(max(1, min(step_ms, status.remaining_ms(),
                                          app.send_limit_ms // 4)))
        uplink.check(app)
        if dog is not None:
            dog.feed()
        if app.trial is not None and app.delivered:
            confirm_update(app)
        if not marked and healthy.expired():
            marked = True  # crashed boots stop counting once a boot ran this long
            try:
                safemode.healthy(app.cfg.root)
            except OSError as e:
                log.warn(_TAG, "boot counter: %s", log.describe(e))
        if not status.expired():
            continue
        status = clock.Deadline(every_ms)
        gc.collect()
        st = app.outbox.stats()
        wifi = app.wifi
        log.info("status", "readings=%d delivered=%d pending=%d dead=%d applied=%d "
                 "renewals=%d%s%s free=%d %s", app.readings, app.delivered,
                 app.outbox.pending_count(), st.get("dead", 0), app.applied,
                 app.cloud.renewals, _transport_status(app.cloud),
                 " wifi=" + wifi.status() if wifi is not None and wifi.station else "",
                 gc.mem_free(), log.link())


def confirm_update(app):
    """The cloud accepted data on this boot: keep the app (or image) on OTA trial."""
    from firmware.ota import slots

    try:
        slots.confirm(app.cfg.root)
        if slots.image_pending(app.cfg.root):
            from firmware.ota import image

            image.confirm_trial(app.cfg.root)
        log.info("ota", "update %s confirmed", app.trial)
    except Exception as e:  # a flash or partition error: the trial rules decide
        log.warn("ota", "confirm %s: %s", app.trial, log.describe(e))
    app.trial = None


def _transport_status(cloud):
    mode = getattr(cloud, "mode", None)  # optional in the contract
    if mode is None:
        return ""
    return " mode=%s credentials=%d" % (mode, cloud.credentials)
