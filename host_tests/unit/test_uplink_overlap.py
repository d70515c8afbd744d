"""The uplink's overlapping send attempts (both runtimes): with an adapter whose send_depth is
2, the next batch goes out while the last one is still waiting, never with a record already
in flight, and each batch leaves the outbox only on its own result. After a failure no new
attempt starts until the other one came back; then the failed batch goes out again with the
same message_ids. Sends are released by the test one at a time: loop steps, never time."""
import asyncio

from test_app_wiring import _app, _run, _until

import support
from firmware.clouds import SendResult


class _Overlapping:
    """An adapter whose sends may overlap (send_depth 2); each send waits until the test
    releases it by its start number, then delivers its batch or fails as told."""

    batch_max = 3
    send_depth = 2
    enabled_sensors = None
    renewals = 0
    renew_at = None
    on_desired = None
    on_link_up = None

    def __init__(self):
        self.batches: list = []  # message_ids of each send, in the order they started
        self.gates: dict = {}  # start number -> [asyncio.Event, outcome] while it waits
        self.app = None

    async def send(self, records):
        n = len(self.batches)
        self.batches.append([r.message_id for r in records])
        gate = self.gates[n] = [asyncio.Event(), None]
        await gate[0].wait()
        del self.gates[n]
        if gate[1] == "fail":
            self.app.link.set()  # the link is back at once: no backoff to wait out
            raise OSError(113)
        res = SendResult()
        res.ok = [r.message_id for r in records]
        return res

    def release(self, n, outcome="ok"):
        self.gates[n][1] = outcome
        self.gates[n][0].set()

    async def poll_catalog(self, on_desired):
        return 3600000

    def token_due(self):
        return False

    async def authenticate(self):
        return 0

    def background(self):
        return []


async def _steps(n=50):
    for _ in range(n):  # let every task run a while: for what must NOT happen
        await asyncio.sleep_ms(0)


def test_the_next_batch_goes_out_while_the_last_waits_never_with_a_record_in_flight():
    cloud = _Overlapping()
    a, root = _app(cloud, records=9)
    ids = [r.message_id for r in a.outbox.pending(9)]

    async def judge():
        await _until(lambda: len(cloud.gates) == 2, "two sends out at once")
        await _steps()
        assert cloud.batches == [ids[0:3], ids[3:6]]  # depth 2: no third one yet
        assert a.outbox.pending_count() == 9  # nothing left before its result
        cloud.release(0)
        await _until(lambda: len(cloud.batches) == 3, "the third send")
        assert cloud.batches[2] == ids[6:9]  # not the second batch's records again
        assert a.outbox.pending_count() == 6
        cloud.release(2)  # out of order: the third batch's result comes first
        await _until(lambda: a.outbox.pending_count() == 3, "the third batch resolved")
        assert [r.message_id for r in a.outbox.pending(9)] == ids[3:6]  # still pending
        cloud.release(1)
        await _until(lambda: a.outbox.pending_count() == 0, "all delivered")
        await _steps()
        assert len(cloud.batches) == 3  # each record was sent once

    _run([("uplink", a.uplink)], judge)
    assert a.delivered == 9 and a.outbox.stats()["delivered"] == 9
    support.rmtree(root)


def test_after_a_failure_the_other_send_comes_back_first_then_the_batch_goes_again():
    cloud = _Overlapping()
    a, root = _app(cloud, records=9)
    ids = [r.message_id for r in a.outbox.pending(9)]

    async def judge():
        await _until(lambda: len(cloud.gates) == 2, "two sends out at once")
        cloud.release(0, "fail")
        await _steps()
        assert len(cloud.batches) == 2  # no new attempt while the second is out
        assert a.sends == 2
        cloud.release(1)
        await _until(lambda: len(cloud.batches) == 4, "the next two sends")
        assert cloud.batches[2:] == [ids[0:3], ids[6:9]]  # the failed batch, same ids
        assert [r.message_id for r in a.outbox.pending(9)] == ids[0:3] + ids[6:9]
        cloud.release(2)
        cloud.release(3)
        await _until(lambda: a.outbox.pending_count() == 0, "all delivered")

    lines = _run([("uplink", a.uplink)], judge)
    assert a.delivered == 9 and a.outbox.stats()["delivered"] == 9
    assert any("uplink: OSError" in ln for ln in lines), lines
    support.rmtree(root)


def test_a_record_in_flight_is_not_expired_while_the_next_batch_is_read():
    """The outbox's TTL must not expire a record that a running attempt holds: it would be
    counted expired and then delivered. Here the first two batches are out when every record
    passes its TTL; the next batch is read while the second is still out."""
    from firmware import clock

    cloud = _Overlapping()
    a, root = _app(cloud, records=9)
    ids = [r.message_id for r in a.outbox.pending(9)]
    a.outbox.ttl_s = 3600

    async def judge():
        await _until(lambda: len(cloud.gates) == 2, "two sends out at once")
        late = clock.unix_time() + 7200
        a.outbox.now = lambda: late  # the sends took long: every record is past its TTL
        cloud.release(0)
        await _until(lambda: a.delivered == 3, "the first batch resolved")
        await _steps()  # the uplink read its next batch: the rest expired, none to send
        st = a.outbox.stats()
        assert (st["expired"], st["pending"]) == (3, 3), st  # not the 3 in flight
        assert len(cloud.batches) == 2, cloud.batches
        cloud.release(1)
        await _until(lambda: a.delivered == 6, "the second batch resolved")

    _run([("uplink", a.uplink)], judge)
    st = a.outbox.stats()
    assert (st["delivered"], st["expired"]) == (6, 3), st  # the two batches out were delivered
    assert cloud.batches == [ids[0:3], ids[3:6]]
    support.rmtree(root)


class _ShortOfHeap(_Overlapping):
    """A board at its heap's edge: a send of more than `fits` records raises MemoryError
    (building the batch's body); smaller ones are delivered."""

    batch_max = 8
    send_depth = 1
    fits = 3

    async def send(self, records):
        self.batches.append([r.message_id for r in records])
        if len(records) > self.fits:
            self.app.link.set()  # the link is up: no backoff to wait out
            raise MemoryError("memory allocation failed")
        res = SendResult()
        res.ok = [r.message_id for r in records]
        return res


def test_a_send_out_of_heap_halves_the_batch_until_the_backlog_drains():
    """Without it the uplink sent the same 8-record batch again and again (nothing left,
    the backlog grew): a board at its heap's edge never drained."""
    cloud = _ShortOfHeap()
    a, root = _app(cloud, records=20)
    ids = [r.message_id for r in a.outbox.pending(20)]

    async def judge():
        await _until(lambda: a.outbox.pending_count() == 0 or len(cloud.batches) > 60,
                     "the backlog drained")
        assert a.outbox.pending_count() == 0, [len(b) for b in cloud.batches]

    lines = _run([("uplink", a.uplink)], judge)
    sizes = [len(b) for b in cloud.batches]
    assert sizes[:3] == [8, 4, 2], sizes  # halved per failure; then one more per success
    assert sizes[3:5] == [3, 4], sizes
    delivered = [m for b in cloud.batches if len(b) <= cloud.fits for m in b]
    assert sorted(delivered) == sorted(ids) and a.delivered == 20  # each once, none lost
    assert any("out of heap sending 8 records; batches of 4" in ln for ln in lines), lines
    support.rmtree(root)
