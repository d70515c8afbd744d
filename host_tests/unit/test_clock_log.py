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
