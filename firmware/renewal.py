"""The renewal tasks (app.py runs them as `downlink` and `auth`): the command catalog polled
and its new desired values applied (firmware/desired.py, through the app's `on_desired`), and
the token renewed before the adapter's `renew_at`."""
import asyncio

from micropython import const

from firmware import log
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
