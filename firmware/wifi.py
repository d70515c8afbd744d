"""Wi-Fi station: owns the link (connect, back off, notice loss, reconnect) and NTP.

`Wifi(section)` takes config's `wifi` object ({ssid, password}). `up` is an asyncio.Event
that is set while the station has an IP address, so senders `await wifi.up.wait()` and the
`run()` task (the one supervisor of reconnection, docs/design.md practice 7) is the only code
that touches the radio. After each connect, and then every few hours, it sets the RTC from NTP so
`clock.is_set()` turns true before the first TLS handshake.

On the host (sys.platform != "esp32") the network is the host's: there is no station to
manage, `up` is set at once and `station` is False (the app then adds no `wifi` task).
"""
import asyncio
import sys

from micropython import const

from firmware import clock, log
from firmware.backoff import Backoff
from firmware.config import ConfigError

_TAG = "wifi"
_BASE_MS = const(1000)
_CAP_MS = const(300000)
_CONNECT_MS = const(20000)  # an association plus DHCP that takes longer is stuck
_POLL_MS = const(250)  # status polling while connecting
_CHECK_MS = const(1000)  # link-loss polling once up
_NTP_RESYNC_MS = const(21600000)  # 6 h: the ESP32 RTC drifts seconds per day
_NTP_RETRY_MS = const(5000)

# network.STAT_* values the ESP32 port returns for an attempt that failed outright
_FAILED = {201: "no AP with that SSID", 202: "wrong password", 203: "connect failed",
           200: "beacon timeout", 204: "handshake timeout"}


class WifiError(ConfigError):
    """The `wifi` config cannot drive a station (no ssid): a config problem, reported as one."""


class Wifi:
    def __init__(self, section=None, platform=None, wlan=None, ntp=None, backoff=None,
                 connect_ms=_CONNECT_MS, check_ms=_CHECK_MS):
        section = section or {}
        self.ssid = section.get("ssid")
        self.password = section.get("password") or None
        log.secret(self.password)
        self.station = (platform or sys.platform) == "esp32"
        self.up = asyncio.Event()
        self.connects = 0  # successful associations, for the status line
        self.losses = 0
        self.last_error = None
        self.alive = None  # a watchdog.Watchdog, ticked once per loop (set by the app)
        self._wlan = wlan  # injected by tests; made on first run() otherwise
        self._ntp = ntp
        self._backoff = backoff or Backoff(_BASE_MS, _CAP_MS)
        self._ntp_due = clock.Deadline(0)
        self._connect_ms = connect_ms
        self._check_ms = check_ms
        if not self.station:
            self.up.set()
        elif not isinstance(self.ssid, str) or not self.ssid:
            raise WifiError(["wifi.ssid: missing; the esp32 board needs {\"ssid\": ..., "
                             "\"password\": ...} to reach the cloud"])

    def _radio(self):
        if self._wlan is None:
            import network  # not at import time: no hardware object before it is needed

            self._wlan = network.WLAN(network.STA_IF)
        return self._wlan

    def status(self):
        """A short word for the status line."""
        if not self.station:
            return "host"
        return "up" if self.up.is_set() else "down"

    def _tick(self):
        if self.alive is not None:
            self.alive.tick(_TAG)

    async def run(self):
        """The supervised `wifi` task: keeps the station connected forever."""
        wlan = self._radio()
        wlan.active(True)
        while True:
            self._tick()
            if not wlan.isconnected():
                if self.up.is_set():
                    self.up.clear()
                    self.losses += 1
                    log.warn(_TAG, "link lost")
                if not await self._connect(wlan):
                    delay = self._backoff.next_ms()
                    log.warn(_TAG, "%s: %s; retry in %s", self.ssid, self.last_error,
                             log.duration(delay))
                    await self._pause(delay)
                    continue
                self._backoff.reset()
                self.connects += 1
                log.info(_TAG, "connected to %s, ip %s", self.ssid, wlan.ifconfig()[0])
                self.up.set()
            if self._ntp_due.expired():
                self._sync_clock()
            await asyncio.sleep_ms(self._check_ms)

    async def _pause(self, ms):
        # tick while backing off: a long backoff is progress, not a hang
        while ms > 0:
            step = min(ms, 10000)
            await asyncio.sleep_ms(step)
            ms -= step
            self._tick()

    async def _connect(self, wlan):
        try:
            wlan.disconnect()  # stop the driver's own retries before starting ours
        except OSError:
            pass
        try:
            wlan.connect(self.ssid, self.password)
        except OSError as e:  # ESP32: "Wifi Internal Error" while the driver is busy
            self.last_error = log.describe(e)
            return False
        deadline = clock.Deadline(self._connect_ms)
        while not wlan.isconnected():
            why = _FAILED.get(wlan.status())
            if why is not None:
                self.last_error = why
                return False
            if deadline.expired():
                self.last_error = "no IP within %s" % log.duration(self._connect_ms)
                return False
            await asyncio.sleep_ms(min(_POLL_MS, self._connect_ms))
        return True

    # ntptime.settime() blocks for up to its socket timeout (1 s); it runs once per connect
    # and every few hours, so the stall is short and rare.
    def _sync_clock(self):
        ntp = self._ntp
        if ntp is None:
            import ntptime as ntp
        try:
            ntp.settime()
        except Exception as e:  # OSError/timeout/bad packet: try again soon
            log.warn(_TAG, "NTP: %s", log.describe(e))
            self._ntp_due = clock.Deadline(_NTP_RETRY_MS)
            return False
        self._ntp_due = clock.Deadline(_NTP_RESYNC_MS)
        log.info(_TAG, "clock set from NTP: %s",
                 clock.iso8601() if clock.is_set() else "still unset")
        return True
