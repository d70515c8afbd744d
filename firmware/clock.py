"""Wall clock and monotonic ticks: wrap-safe deadlines and ISO 8601 UTC that refuses to lie.

MicroPython's ESP32 port counts wall time from 2000-01-01 and starts there after power-up
until NTP sets it; the unix port counts from 1970. `unix_time()` always returns seconds since
1970, and anything that formats or trusts wall time first checks `is_set()`.
"""
import time
from time import ticks_add, ticks_diff, ticks_ms

from micropython import const

_MIN_VALID_YEAR = const(2025)  # anything earlier means the RTC was never set
_MIN_VALID_UNIX = const(1735689600)  # 2025-01-01T00:00:00Z


class ClockUnset(Exception):
    """Wall time is needed (a timestamp, a TLS handshake) but the clock was never set."""

    def __init__(self, what="wall clock"):
        super().__init__("%s needs the clock, which is not set (NTP has not run yet)" % what)


# seconds between 1970-01-01 and the port's epoch (946684800 on ports counting from 2000)
_EPOCH_OFFSET = 0 if time.gmtime(0)[0] == 1970 else 946684800


def is_set():
    return time.gmtime()[0] >= _MIN_VALID_YEAR


def unix_time():
    """Seconds since 1970-01-01 UTC; raises ClockUnset before the clock is set."""
    if not is_set():
        raise ClockUnset()
    return int(time.time()) + _EPOCH_OFFSET


def iso8601(unix_seconds=None):
    """`2026-04-24T10:15:00Z` for the given Unix time (default: now)."""
    if unix_seconds is None:
        unix_seconds = unix_time()
    unix_seconds = int(unix_seconds)
    # checked before gmtime: ports counting from 2000 read a negative argument as unsigned,
    # so a 1970s value would come back as a plausible-looking date in 2136
    if unix_seconds < _MIN_VALID_UNIX:
        raise ClockUnset("timestamp %d" % unix_seconds)
    t = time.gmtime(unix_seconds - _EPOCH_OFFSET)
    if t[0] < _MIN_VALID_YEAR:
        raise ClockUnset("timestamp %d" % unix_seconds)
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % (t[0], t[1], t[2], t[3], t[4], t[5])


class Deadline:
    """A point in tick time that survives the tick counter wrapping."""

    def __init__(self, ms):
        self.at = ticks_add(ticks_ms(), int(ms))

    def remaining_ms(self):
        return max(0, ticks_diff(self.at, ticks_ms()))

    def expired(self):
        return ticks_diff(self.at, ticks_ms()) <= 0


def days_from_civil(y, m, d):
    """Days since 1970-01-01 for a Gregorian date, without the port's mktime/epoch."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def parse_iso8601(text):
    """Unix seconds from `2026-04-24T10:15:00Z` (fractions and a +00:00 / offset suffix
    allowed); None when the text is not such a timestamp."""
    try:
        date, rest = text.split("T", 1)
        y, mo, d = (int(x) for x in date.split("-"))
        offset = 0
        if rest.endswith("Z"):
            rest = rest[:-1]
        elif len(rest) > 6 and rest[-6] in "+-" and rest[-3] == ":":
            sign = -1 if rest[-6] == "-" else 1
            offset = sign * (int(rest[-5:-3]) * 3600 + int(rest[-2:]) * 60)
            rest = rest[:-6]
        else:
            return None
        hh, mm, ss = rest.split(":")
        sec = int(ss.split(".", 1)[0])
        h, mi = int(hh), int(mm)
    except (ValueError, AttributeError):
        return None
    if not (1 <= mo <= 12 and 1 <= d <= 31 and h < 24 and mi < 60 and sec < 61):
        return None
    return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - offset
