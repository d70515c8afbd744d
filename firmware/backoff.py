"""Retry pacing: full-jitter exponential backoff with a cap, and the server's Retry-After.

Full jitter (a uniform wait in [0, min(cap, base * 2**n)]) keeps a fleet of boards that lost
the same cloud at the same moment from coming back in lock-step.
"""
import random

from micropython import const

from firmware.clock import days_from_civil

_MAX_SHIFT = const(20)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class Backoff:
    def __init__(self, base_ms, cap_ms, rand=None):
        self.base_ms = base_ms
        self.cap_ms = cap_ms
        self.attempts = 0
        self._rand = rand or random.random

    def next_ms(self, floor_ms=0):
        """The next wait; never below floor_ms (a server's Retry-After)."""
        ceiling = min(self.cap_ms, self.base_ms << min(self.attempts, _MAX_SHIFT))
        self.attempts += 1
        return max(int(floor_ms), int(self._rand() * ceiling))

    def reset(self):
        self.attempts = 0


def retry_after_ms(value, now_unix=None):
    """Retry-After as milliseconds: delta-seconds, or an HTTP-date compared with now_unix.
    None when absent or unreadable (the caller then uses its own backoff)."""
    if value is None:
        return None
    value = str(value).strip()
    if value.isdigit():
        return int(value) * 1000
    parts = value.replace(",", " ").split()
    # IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT"
    if len(parts) != 6 or parts[5] != "GMT" or parts[2] not in _MONTHS or now_unix is None:
        return None
    try:
        day, year = int(parts[1]), int(parts[3])
        hh, mm, ss = (int(x) for x in parts[4].split(":"))
    except ValueError:
        return None
    at = days_from_civil(year, _MONTHS.index(parts[2]) + 1, day) * 86400 + hh * 3600 + \
        mm * 60 + ss
    return max(0, (at - int(now_unix)) * 1000)

