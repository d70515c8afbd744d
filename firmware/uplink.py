"""The uplink task: drains the outbox through the adapter; a record leaves only on the
cloud's acceptance (SendResult.ok) or as a dead letter, never on a network fault.

Each send attempt runs as its own task so the health task can cancel one that never returns
(check_uplink); after a failure the uplink backs off, and the backoff ends as soon as any
task reaches the cloud (the adapter's on_reached) or the Wi-Fi station comes back.
`Uplink` is a part of firmware/app.py's App (a mixin: App's own state, no object of its own).
"""
import asyncio

from micropython import const

from firmware import clock, log
from firmware.backoff import Backoff

MYPY = False
if MYPY:  # the type checker only (MicroPython has no typing module)
    from typing import Any

_TAG = "app"
_UPLINK_BASE_MS = const(1000)
_UPLINK_CAP_MS = const(120000)
_IDLE_WAKE_MS = const(30000)
_LINK_CHECK_MS = const(1000)  # how often a backing-off uplink looks at the Wi-Fi station


class SendStuck(Exception):
    """The health task cancelled a send attempt that never returned (a stalled peer, not a
    cloud that said no); the uplink keeps the records and backs off as for a network fault."""


class Uplink:
    # App's, set by App.__init__ (annotations only: no per-object cost)
    board: "Any"
    cloud: "Any"
    outbox: "Any"
    wifi: "Any"
    link: "Any"
    wake: "Any"
    delivered: "Any"
    sends: "Any"
    stuck_sends: "Any"
    send_limit_ms: "Any"
    _attempt: "Any"

    async def uplink(self):
        backoff = Backoff(_UPLINK_BASE_MS, _UPLINK_CAP_MS)
        while True:
            records = self.outbox.pending(self.cloud.batch_max)
            if not records:
                await self.wake.wait(_IDLE_WAKE_MS)
                continue
            if self.wifi is not None and not self.wifi.up.is_set():
                await self.wifi.up.wait()  # senders wait for the station (design practice 7)
            self.link.clear()  # a success before this attempt says nothing about its failure
            try:
                result = await self._send(records)
            except Exception as e:  # network faults: keep everything, back off
                log.failing("uplink", _TAG, "uplink", log.describe(e),  # once, then counted
                            "; %d pending" % self.outbox.pending_count())
                self.board.link_failed(log.describe(e))  # actuators with a limit go safe
                # what a server asked for (a host closed by a 429: http.RateLimited's wait_ms)
                # is slept in full, the rest of the backoff ends with any success
                wait_ms = getattr(e, "wait_ms", 0)
                await self._pause(backoff, backoff.next_ms(wait_ms), wait_ms)
                continue
            self.board.link_ok()
            log.recovered("uplink", _TAG, "uplink: delivering again")
            for mid in result.ok:
                self.outbox.delivered(mid)
            for mid, reason in result.dead:
                self.outbox.dead_letter(mid, reason)
            self.delivered += len(result.ok)
            if result.failed:
                delay = backoff.next_ms(result.wait_ms)
                log.info(_TAG, "uplink: the cloud kept %d of %d records sent (%d pending); "
                         "retry in %s (server asked %s)",
                         len(records) - len(result.ok) - len(result.dead), len(records),
                         self.outbox.pending_count(), log.duration(delay),
                         log.duration(result.wait_ms))
                await self._pause(backoff, delay, result.wait_ms)
            else:
                backoff.reset()

    # The uplink's wait after a failed attempt. What the server asked for (Retry-After, a
    # refused device) is slept in full; the rest, backoff, ends as soon as any task has a
    # successful exchange with the cloud (a token, a catalog, a broker session), or when the
    # Wi-Fi station is found down (the loop then sends the moment it is back): after an
    # outage the drain starts with the link, not up to _UPLINK_CAP_MS later.
    async def _pause(self, backoff, delay_ms, floor_ms):
        if floor_ms > 0:
            await asyncio.sleep_ms(floor_ms)
        left = clock.Deadline(max(0, delay_ms - floor_ms))
        wifi = self.wifi
        while not left.expired():
            if wifi is not None and wifi.station and not wifi.up.is_set():
                return  # the loop waits for the station and sends once it is back
            if await self.link.wait(min(left.remaining_ms(), _LINK_CHECK_MS)):
                backoff.reset()
                return
        if self.link.is_set():  # reached during the server's wait: go on, from scratch
            self.link.clear()
            backoff.reset()

    # One send attempt as its own task, so the health task can cancel it when it never returns
    # (check_uplink); the uplink waits on an event, not on the task, so a cancel of the one is
    # never taken for a cancel of the other. A cancelled attempt reaches the uplink as
    # SendStuck, an ordinary failure: the records stay, the uplink backs off.
    async def _send(self, records):
        out: list = [None, None]  # result, exception
        done = asyncio.Event()

        async def attempt():
            try:
                out[0] = await self.cloud.send(records)
            except (asyncio.CancelledError, Exception) as e:  # handed to the uplink below
                out[1] = e
            done.set()

        task = asyncio.create_task(attempt())
        self._attempt = (task, clock.Deadline(self.send_limit_ms), [False])
        self.sends += 1
        try:
            await done.wait()
        except asyncio.CancelledError:  # the uplink itself is cancelled (shutdown)
            task.cancel()  # ends the attempt too: its connection closes with it
            raise
        finally:
            self._attempt = None
        if isinstance(out[1], asyncio.CancelledError):
            raise SendStuck("send attempt stuck for %d s; cancelled, records kept" %
                            (self.send_limit_ms // 1000))
        if out[1] is not None:
            raise out[1]
        return out[0]

    def check_uplink(self):
        """For the health task: a send attempt past its limit is cancelled (its HTTP request
        or session drops its connection as it unwinds) and logged once. Returns True then."""
        attempt = self._attempt
        if attempt is None or attempt[2][0] or not attempt[1].expired():
            return False
        attempt[2][0] = True
        self.stuck_sends += 1
        log.warn(_TAG, "uplink: a send attempt has not returned in %d s (a stalled peer, not "
                 "a refusal); cancelling it, %d records pending", self.send_limit_ms // 1000,
                 self.outbox.pending_count())
        attempt[0].cancel()
        return True
