"""A send attempt that never returns (a stalled peer) against one that fails (a cloud that
says no), both runtimes: the health task's uplink.check() cancels the first, once, with one
warning; the uplink lives on with every record kept; the second is never flagged. Loop steps
and an expired limit, never time."""
import asyncio

from test_app_wiring import _app, _run, _Scripted, _until

import support
from firmware import uplink as uplink_mod


class _Stalled(_Scripted):
    """send() hangs (the first `hangs` times) like a request to a peer that trickles, and
    records that it was unwound by a cancel (its connection would close there)."""

    def __init__(self, hangs=1):
        super().__init__([], gated=False)
        self.hangs = hangs
        self.entered = 0
        self.unwound = 0

    async def send(self, records):
        self.entered += 1
        if self.entered <= self.hangs:
            try:
                await asyncio.Event().wait()
            finally:
                self.unwound += 1
        return await super().send(records)


def test_a_send_that_never_returns_is_cancelled_once_and_the_records_stay():
    cloud = _Stalled()
    a, root = _app(cloud, records=3)
    a.send_limit_ms = 0  # expired as soon as it starts: the limit's length is not the point

    async def judge():
        await _until(lambda: cloud.entered == 1, "the send started")
        assert a.outbox.pending_count() == 3
        assert uplink_mod.check(a) is True
        assert uplink_mod.check(a) is False  # once per attempt
        await _until(lambda: cloud.unwound == 1, "the stuck send unwound")
        a.link.set()  # end the uplink's backoff: the next attempt goes out and delivers
        await _until(lambda: a.outbox.pending_count() == 0, "the records were delivered")

    lines = _run([("uplink", a.uplink)], judge)
    assert a.stuck_sends == 1 and cloud.entered == 4  # the stuck one, then 3 one by one
    warns = [ln for ln in lines if "has not returned" in ln]
    assert len(warns) == 1 and "3 records pending" in warns[0], lines
    assert any("uplink: SendStuck" in ln for ln in lines), lines  # kept, backed off
    assert not any("crashed" in ln for ln in lines), lines  # the task itself never died
    support.rmtree(root)


class _Refusing(_Scripted):
    """send() fails at once, as a cloud that refuses or a network that is down."""

    async def send(self, records):
        self.calls += 1
        raise OSError(111)


def test_a_cloud_that_says_no_is_not_a_stuck_uplink():
    cloud = _Refusing([], gated=False)
    a, root = _app(cloud, records=2)
    a.send_limit_ms = 0

    async def judge():
        await _until(lambda: cloud.calls == 1, "the refused send")
        await asyncio.sleep_ms(1)  # the uplink is in its backoff now, no attempt running
        assert uplink_mod.check(a) is False  # it returned (with an error): nothing to cancel
        assert a.outbox.pending_count() == 2

    _run([("uplink", a.uplink)], judge)
    assert a.stuck_sends == 0
    support.rmtree(root)


def test_the_health_task_runs_the_check_and_shutdown_still_ends_a_hung_send():
    cloud = _Stalled(hangs=5)
    a, root = _app(cloud, records=1)
    a.send_limit_ms = 0
    checked = []
    real = uplink_mod.check
    uplink_mod.check = lambda app: checked.append(real(app)) or checked[-1]

    async def judge():
        await _until(lambda: cloud.entered >= 1, "the send started")
        await _until(lambda: True in checked, "health cancelled the stuck send")

    try:
        _run([("uplink", a.uplink), ("health", a.health)], judge)
    finally:
        uplink_mod.check = real
    # the supervisor's stop cancelled the uplink mid-send: the attempt was unwound with it
    assert cloud.unwound == cloud.entered and a.outbox.pending_count() == 1
    assert isinstance(uplink_mod.SendStuck("x"), Exception)
    support.rmtree(root)


class _Gated(_Scripted):
    """send() meets a host closed by a 429 (the HTTP client refuses to send)."""

    async def send(self, records):
        from firmware.net import http

        self.calls += 1
        raise http.RateLimited("POST /data: h asked to wait (429 Retry-After)", 30000)


def test_a_host_closed_by_429_keeps_the_records_and_the_uplink_waits_it_out():
    cloud = _Gated([], gated=False)
    a, root = _app(cloud, records=2)
    pauses: list = []

    async def spy(app, backoff, delay_ms, floor_ms):
        pauses.append((delay_ms, floor_ms))
        await asyncio.sleep_ms(1)  # the test does not sit the 30 s out

    real = uplink_mod._pause
    uplink_mod._pause = spy

    async def judge():
        await _until(lambda: pauses, "the uplink's wait")

    try:
        _run([("uplink", a.uplink)], judge)
    finally:
        uplink_mod._pause = real
    # the gate's wait is the floor: slept in full, not ended by a success elsewhere
    assert pauses[0][0] >= 30000 and pauses[0][1] >= 30000, pauses
    assert a.outbox.pending_count() == 2
    support.rmtree(root)
