import time

import support
from firmware import clock, log


def test_ticks_deadline_counts_down():
    d = clock.Deadline(10000)
    assert not d.expired()
    assert 0 < d.remaining_ms() <= 10000
    assert clock.Deadline(0).expired()


def test_iso8601_formats_utc():
    assert clock.iso8601(1777025700) == "2026-04-24T10:15:00Z"


def test_iso8601_refuses_epoch_dates():
    e = support.raises(clock.ClockUnset, clock.iso8601, 0)
    assert "not set" in str(e)


def test_log_redacts_registered_secrets():
    lines = []
    log.set_sink(lines.append)
    try:
        log.secret("s3cr3t-value")
        log.info("auth", "token=%s ok", "s3cr3t-value")
        log.error("auth", "failed with s3cr3t-value inside")
    finally:
        log.set_sink(None)
        log.forget("s3cr3t-value")
    assert len(lines) == 2
    assert all("s3cr3t-value" not in line and "***" in line for line in lines)


def test_clock_is_set_on_host():
    assert clock.is_set()
    assert abs(clock.unix_time() - int(time.time())) <= 1 or clock.unix_time() > 1700000000


def test_days_from_civil_matches_known_dates():
    assert clock.days_from_civil(1970, 1, 1) == 0
    assert clock.days_from_civil(2000, 3, 1) == 11017
    assert clock.days_from_civil(2026, 4, 24) * 86400 == 1776988800


def test_parse_iso8601_round_trips_and_rejects_garbage():
    assert clock.parse_iso8601("2026-04-24T10:15:00Z") == 1777025700
    assert clock.parse_iso8601("2026-04-24T10:15:00.250Z") == 1777025700
    assert clock.parse_iso8601("2026-04-24T12:15:00+02:00") == 1777025700
    assert clock.parse_iso8601(clock.iso8601(1800000000)) == 1800000000
    for bad in ("", "2026-04-24", "2026-13-01T00:00:00Z", "2026-04-24T10:15:00", "x", None):
        assert clock.parse_iso8601(bad) is None, bad


def test_tick_arithmetic_survives_the_wrap():
    from time import ticks_add, ticks_diff

    top = ticks_add(0, -1)  # the largest tick value: the counter wraps right after it
    for start in (ticks_add(top, -5), top, 0):
        later = ticks_add(start, 10)
        assert ticks_diff(later, start) == 10
        assert ticks_diff(start, later) == -10
    assert ticks_add(top, 1) == 0
