"""The downlink and auth tasks, and the hooks the adapter calls: what the cloud drives into
the device.

- downlink  polls the command catalog and applies new desired values (firmware/desired.py)
- auth      renews the token before `renew_after`; after the first token, and after every
            broker reconnect (link_up), the physical command state is reported again so the
            cloud can reconcile
- on_desired, link_up: the adapter's hooks (firmware/clouds/base.py)
`Downlink` is a part of firmware/app.py's App (a mixin: App's own state, no object of its own).
"""
import asyncio

from micropython import const

from firmware import clock, log
from firmware.backoff import Backoff
from firmware.board.base import BoardError
from firmware.desired import apply_desired

MYPY = False
if MYPY:  # the type checker only (MicroPython has no typing module)
    from typing import Any

_TAG = "app"
_UPLINK_BASE_MS = const(1000)
_UPLINK_CAP_MS = const(120000)


class Downlink:
    # App's, or another part's (annotations only: no per-object cost)
    board: "Any"
    cloud: "Any"
    outbox: "Any"
    cfg: "Any"
    desired: "Any"
    link: "Any"
    wake: "Any"
    applied: "Any"
    _append: "Any"
    _clock_ready: "Any"

    def on_desired(self, cmd):
        status = apply_desired(self.board, self.outbox, self.desired, cmd.get("id"),
                               cmd.get("desired_id"), cmd.get("value"), seq=cmd.get("seq"),
                               expires_at=_expiry(cmd.get("expires_at")))
        if status != "duplicate":
            log.info(_TAG, "command %s desired %s: %s", cmd.get("id"), cmd.get("desired_id"),
                     status)
            self.applied += 1
            self.wake.set()

    async def downlink(self):
        await self._clock_ready()
        poll_ms = int(self.cfg.get("intervals.catalog_poll_s") * 1000)
        backoff = Backoff(_UPLINK_BASE_MS, _UPLINK_CAP_MS)
        while True:
            try:
                wait = await self.cloud.poll_catalog(self.on_desired)
                backoff.reset()
                log.recovered("catalog", _TAG, "catalog poll: working again")
            except Exception as e:  # a poll that failed is simply tried again later
                log.failing("catalog", _TAG, "catalog poll", log.describe(e))
                wait = backoff.next_ms()
            await asyncio.sleep_ms(max(poll_ms, wait))

    async def auth(self):
        await self._clock_ready()
        backoff = Backoff(_UPLINK_BASE_MS, _UPLINK_CAP_MS)
        first = True
        while True:
            if self.cloud.token_due():
                try:
                    wait = await self.cloud.authenticate()
                except Exception as e:
                    log.failing("auth", _TAG, "auth", log.describe(e))
                    wait = backoff.next_ms()
                if self.cloud.token_due():
                    await asyncio.sleep_ms(max(wait, backoff.next_ms()))
                    continue
                backoff.reset()
                log.recovered("auth", _TAG, "auth: token issued again")
                if first:  # (re)connected: let the cloud reconcile the physical state
                    first = False
                    self.report_command_states()
            renew_at = self.cloud.renew_at
            await asyncio.sleep_ms(max(1000, renew_at.remaining_ms() if renew_at else 60000))

    def link_up(self, first):
        """A broker session opened (MQTT transports): wake the uplink; after a reconnect,
        report the physical command state again so the cloud can reconcile."""
        self.link.set()
        if not first:
            self.report_command_states()

    def report_command_states(self):
        for cid, act in self.board.actuators.items():
            try:
                self._append("command", cid, act.value())
            except BoardError as e:
                log.warn(_TAG, "command %s state unknown: %s", cid, log.describe(e))


def _expiry(value):
    """Unix seconds from an ISO 8601 UTC string or a number; None when absent/unreadable."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        return clock.parse_iso8601(value)
    return None
