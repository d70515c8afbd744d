"""The health task: feeds the watchdog while every critical task progresses
(firmware/watchdog.py), cancels a send attempt past its limit, confirms an OTA update on
trial after the first accepted delivery, marks the boot healthy for safe mode, and logs the
status line every `intervals.status_s`.
`Health` is a part of firmware/app.py's App (a mixin: App's own state, no object of its own).
"""
import asyncio
import gc

from firmware import clock, log

MYPY = False
if MYPY:  # the type checker only (MicroPython has no typing module)
    from typing import Any

_TAG = "app"


class Health:
    # App's, or another part's (annotations only: no per-object cost)
    cfg: "Any"
    cloud: "Any"
    outbox: "Any"
    wifi: "Any"
    watchdog: "Any"
    trial: "Any"
    readings: "Any"
    delivered: "Any"
    applied: "Any"
    send_limit_ms: "Any"
    check_uplink: "Any"

    async def health(self):
        """Feeds the watchdog while every critical task progresses (firmware/watchdog.py),
        marks the boot healthy for safe mode after a while, logs the status line."""
        from firmware import safemode

        every_ms = int(self.cfg.get("intervals.status_s") * 1000)
        dog = self.watchdog
        step_ms = dog.feed_every_ms(every_ms) if dog is not None else every_ms
        if dog is not None:
            dog.start()
        status = clock.Deadline(every_ms)
        healthy = clock.Deadline(safemode.HEALTHY_AFTER_MS)
        marked = False
        while True:
            # a stuck send is seen within a quarter of its limit
            await asyncio.sleep_ms(max(1, min(step_ms, status.remaining_ms(),
                                              self.send_limit_ms // 4)))
            self.check_uplink()
            if dog is not None:
                dog.feed()
            if self.trial is not None and self.delivered:
                self.confirm_update()
            if not marked and healthy.expired():
                marked = True  # crashed boots stop counting once a boot ran this long
                try:
                    safemode.healthy(self.cfg.root)
                except OSError as e:
                    log.warn(_TAG, "boot counter: %s", log.describe(e))
            if not status.expired():
                continue
            status = clock.Deadline(every_ms)
            gc.collect()
            st = self.outbox.stats()
            wifi = self.wifi
            log.info("status", "readings=%d delivered=%d pending=%d dead=%d applied=%d "
                     "renewals=%d%s%s free=%d %s", self.readings, self.delivered,
                     self.outbox.pending_count(), st.get("dead", 0), self.applied,
                     self.cloud.renewals, self._transport_status(),
                     " wifi=" + wifi.status() if wifi is not None and wifi.station else "",
                     gc.mem_free(), log.link())

    def confirm_update(self):
        """The cloud accepted data on this boot: keep the app (or image) on OTA trial."""
        from firmware.ota import slots

        try:
            slots.confirm(self.cfg.root)
            if slots.image_pending(self.cfg.root):
                from firmware.ota import image

                image.confirm_trial(self.cfg.root)
            log.info("ota", "update %s confirmed", self.trial)
        except Exception as e:  # a flash or partition error: the trial rules decide
            log.warn("ota", "confirm %s: %s", self.trial, log.describe(e))
        self.trial = None

    def _transport_status(self):
        mode = getattr(self.cloud, "mode", None)  # optional in the contract
        if mode is None:
            return ""
        return " mode=%s credentials=%d" % (mode, self.cloud.credentials)
