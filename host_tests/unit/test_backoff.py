from firmware.backoff import Backoff, retry_after_ms


def test_full_jitter_grows_then_caps():
    top = Backoff(100, 1000, rand=lambda: 0.999999)
    waits = [top.next_ms() for _ in range(8)]
    assert waits[:4] == [99, 199, 399, 799]
    assert waits[4:] == [999] * 4
    assert top.attempts == 8


def test_jitter_spreads_over_whole_range():
    low = Backoff(100, 1000, rand=lambda: 0.0)
    assert [low.next_ms() for _ in range(3)] == [0, 0, 0]


def test_reset_starts_over():
    b = Backoff(50, 10000, rand=lambda: 0.5)
    for _ in range(5):
        b.next_ms()
    b.reset()
    assert b.attempts == 0 and b.next_ms() == 25


def test_retry_after_is_a_floor():
    b = Backoff(100, 1000, rand=lambda: 0.1)
    assert b.next_ms(floor_ms=5000) == 5000
    assert b.next_ms(floor_ms=1) == 20


def test_retry_after_forms():
    assert retry_after_ms("120") == 120000
    assert retry_after_ms(" 3 ") == 3000
    assert retry_after_ms(None) is None
    assert retry_after_ms("soon") is None
    assert retry_after_ms("-5") is None
    # 2026-04-24T10:15:00Z is 1777025700
    assert retry_after_ms("Fri, 24 Apr 2026 10:15:30 GMT", now_unix=1777025700) == 30000
    assert retry_after_ms("Fri, 24 Apr 2026 10:14:00 GMT", now_unix=1777025700) == 0
    assert retry_after_ms("Fri, 24 Foo 2026 10:14:00 GMT", now_unix=1777025700) is None
    assert retry_after_ms("Fri, 24 Apr 2026 10:14:00 GMT") is None  # no clock, no date maths


