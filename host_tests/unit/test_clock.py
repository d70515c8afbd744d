"""firmware/clock.py on a port that counts wall time from 2000-01-01 (the ESP32 before
MicroPython moved to 1970), simulated on the host by importing a fresh copy of clock.py
against a stand-in `time` module. The 1970-epoch host cases are in test_clock_log.py."""
import sys
import time

import support
from firmware import clock as _host_clock  # loaded first, so _clock_on can always restore it

_Y2K = 946684800  # 2000-01-01T00:00:00Z in Unix seconds
_NOW = 1777025700  # 2026-04-24T10:15:00Z


class Esp32Time:
    """`time` as the ESP32 port behaves: seconds since 2000, and gmtime converting its
    argument to a 32-bit unsigned value (shared/timeutils takes mp_uint_t), so a negative
    argument wraps to a date in 2136 instead of failing."""

    def __init__(self, since_2000):
        self.now = since_2000
        self.ticks_ms = time.ticks_ms
        self.ticks_add = time.ticks_add
        self.ticks_diff = time.ticks_diff

    def time(self):
        return self.now

    def gmtime(self, secs=None):
        if secs is None:
            secs = self.now
        return time.gmtime((int(secs) & 0xFFFFFFFF) + _Y2K)


class Unix1970Time(Esp32Time):
    """A port counting from 1970 (the unix port, and newer ESP32 builds) right after
    power-up: its RTC starts at 0, so wall time reads as January 1970."""

    def gmtime(self, secs=None):
        return time.gmtime(self.now if secs is None else int(secs))


def _clock_on(fake):
    """A fresh firmware.clock module imported while `time` is `fake`; the real modules are
    put back before returning, so other tests keep the host clock."""
    import firmware

    real_time = sys.modules.get("time")  # None on MicroPython: built-ins are not listed
    real_clock = sys.modules["firmware.clock"]
    sys.modules["time"] = fake
    try:
        sys.modules.pop("firmware.clock", None)
        __import__("firmware.clock")
        return sys.modules["firmware.clock"]
    finally:
        if real_time is None:
            del sys.modules["time"]
        else:
            sys.modules["time"] = real_time
        sys.modules["firmware.clock"] = real_clock
        firmware.clock = real_clock


def test_fake_port_counts_from_2000():
    fake = Esp32Time(0)
    assert fake.gmtime(0)[0] == 2000
    assert fake.gmtime(-1)[0] == 2136  # the wrap that makes a direct gmtime unsafe
    assert _clock_on(fake)._EPOCH_OFFSET == _Y2K


def test_power_up_clock_at_2000_is_unset():
    for since_boot in (0, 5, 86400 * 400):  # just booted, and a year later still unset
        fake = Esp32Time(since_boot)
        clock = _clock_on(fake)
        assert not clock.is_set(), since_boot
        e = support.raises(clock.ClockUnset, clock.unix_time)
        assert "not set" in str(e)
        support.raises(clock.ClockUnset, clock.iso8601)


def test_power_up_clock_at_1970_is_unset_too():
    fake = Unix1970Time(3)
    clock = _clock_on(fake)
    assert clock._EPOCH_OFFSET == 0
    assert not clock.is_set()
    support.raises(clock.ClockUnset, clock.unix_time)
    support.raises(clock.ClockUnset, clock.iso8601)
    fake.now = _NOW
    assert clock.is_set() and clock.unix_time() == _NOW
    assert clock.iso8601() == "2026-04-24T10:15:00Z"


def test_iso8601_refuses_small_timestamps_instead_of_wrapping():
    clock = _clock_on(Esp32Time(5))
    # a reading stamped while the clock was unset: 2000-based seconds, or 1970 ones
    for stamp in (0, 5, 1000, _Y2K - 1, _Y2K, _Y2K + 5, 1700000000):
        e = support.raises(clock.ClockUnset, clock.iso8601, stamp)
        assert "timestamp %d" % stamp in str(e)


def test_after_ntp_the_2000_port_gives_unix_time_and_utc():
    fake = Esp32Time(5)
    clock = _clock_on(fake)
    fake.now = _NOW - _Y2K  # what ntptime.settime() leaves in the RTC
    assert clock.is_set()
    assert clock.unix_time() == _NOW
    assert clock.iso8601() == "2026-04-24T10:15:00Z"
    assert clock.iso8601(_NOW + 86400) == "2026-04-25T10:15:00Z"
    assert clock.parse_iso8601(clock.iso8601()) == _NOW


def test_host_clock_refuses_the_same_small_timestamps():
    from firmware import clock

    assert clock._EPOCH_OFFSET in (0, _Y2K)
    for stamp in (5, _Y2K + 5, 1735689599):
        support.raises(clock.ClockUnset, clock.iso8601, stamp)
    assert clock.iso8601(1735689600) == "2025-01-01T00:00:00Z"


def test_real_clock_module_is_back_after_the_fake():
    _clock_on(Esp32Time(0))
    from firmware import clock

    assert clock is _host_clock and sys.modules["firmware.clock"] is _host_clock
    assert clock.is_set()  # the host clock is set; the fake one never leaked out
