"""firmware/outbox_nor.py (the outbox in a raw NOR partition, a prototype the app does not use)
on both runtimes, over host_tests/shims/norflash.py: fields and ids across reopen, in-place
programs and erases only on wrap, a power cut at every block operation (torn programs and
erases), bit rot in bodies and headers, ids never reused (also after a wipe), overflow, a full
log, TTL, and carrying the file outbox's pending records over with their ids."""
from norflash import NorPartition, PowerCut

import support
from firmware import log
from firmware.outbox import Outbox
from firmware.outbox_nor import OutboxNor

T0 = 1_800_000_000


def _dev(tag, sectors=4, size=512):
    d = NorPartition(support.tmpdir(tag) + "/part.bin", sectors, size)
    d.strict = True  # the store never asks NOR flash for a 0 -> 1 transition
    return d


def _done(dev):
    dev.close()
    support.rmtree(dev.path.rsplit("/", 1)[0])


def _ids(ob, n=100000):
    return [r.message_id for r in ob.pending(n)]


def _fill(ob, n, start=0, kind="reading"):
    return [ob.append(kind, 7, "v%d" % i, T0 + i) for i in range(start, start + n)]


def _capture():
    lines = []
    log.set_sink(lines.append)
    return lines


def _frames(dev):
    # (sector, offset, length) of every record frame, in log order within each sector
    out = []
    for s in range(dev.n):
        off = 64
        while off + 16 <= dev.ss:
            h = dev.peek(s * dev.ss + off, 14)
            if h == b"\xff" * 14:
                break
            ln = h[2] | h[3] << 8
            if ln:
                out.append((s, off, ln))
            off += 16 + ln
    return out


def test_fields_ids_and_acks_persist_across_reopen():
    dev = _dev("fields", sectors=8)
    ob = OutboxNor(dev)
    a = ob.append("reading", 3, "21.5", T0)
    b = ob.append("report", "relay-1", "on", T0 + 1, desired_id="d-9", report_status="applied")
    c = ob.append("state", "sw", "off", T0 + 2, desired_id=17)
    recs = ob.pending(10)
    assert [r.message_id for r in recs] == [a, b, c]
    r = recs[1]
    assert (r.kind, r.source, r.value, r.t, r.desired_id, r.report_status) == (
        "report", "relay-1", "on", T0 + 1, "d-9", "applied")
    assert recs[0].source == 3 and recs[2].desired_id == 17
    ob.delivered(a)
    ob.dead_letter(c, "rejected")
    ob = OutboxNor(dev)
    assert _ids(ob) == [b]
    st = ob.stats()
    assert (st["delivered"], st["dead"], st["pending"]) == (1, 1, 1)
    d = ob.append("reading", 3, "22", T0 + 3)
    assert d not in (a, b, c) and _ids(OutboxNor(dev)) == [b, d]
    for mid in (a, b, c, d):
        assert len(mid) <= 40
    _done(dev)


def test_programs_in_place_and_erases_only_on_wrap():
    dev = _dev("place", sectors=4, size=512)
    ob = OutboxNor(dev)
    dev.zero()
    ids = _fill(ob, 4)
    assert dev.erases == 0 and dev.progs == 4  # one program per record
    recs = ob.pending(4)
    dev.zero()
    ob.resolve([r.message_id for r in recs])
    assert dev.progs == 4 and dev.prog_bytes == 4  # one byte per ack
    assert dev.erases == 0
    assert ob.pending_count() == 0 and ids
    dev.zero()
    for i in range(60):  # several laps of the ring: one erase per sector started
        ob.append("reading", 1, "x%d" % i, T0)
        ob.resolve([r.message_id for r in ob.pending(1)])
    assert 0 < dev.erases <= dev.prog_bytes // 400 + 1, (dev.erases, dev.prog_bytes)
    assert dev.conflicts == 0
    assert ob.stats()["delivered"] == 64
    assert OutboxNor(dev).stats()["delivered"] == 64  # counts survive the erased sectors
    _done(dev)


def _script(ob, st):
    # appends, batches taken and acked, reports, a full log: wraps the 4 x 512 B ring often.
    # st records what each returned call made durable
    for i in range(48):
        if i % 7 == 3:
            mid = ob.append("report", "r", "on", T0 + i, desired_id="d%d" % i,
                            report_status="applied")
        else:
            mid = ob.append("reading", i % 3, "v%d" % i, T0 + i)
        st["appended"][mid] = "on" if i % 7 == 3 else "v%d" % i
        if i % 4 == 3:
            batch = [r.message_id for r in ob.pending(4)]
            if i % 8 == 7:
                batch = batch[:1] + batch[2:]  # one left behind: acks out of order
            st["inflight"] = batch
            ob.resolve(batch)
            st["acked"].extend(batch)
            st["inflight"] = []


def test_power_cut_at_every_block_operation_keeps_every_record():
    dev = _dev("cut", sectors=4, size=512)
    dev.strict = False  # a torn flag byte is programmed again: old & new is what NOR gives
    ob = OutboxNor(dev, max_records=14)
    for _ in range(4):  # a store in service: the ring has wrapped, every new sector is erased
        _fill(ob, 10)
        ob.resolve(_ids(ob))
    image = dev.peek(0, dev.n * dev.ss)
    clean = {"appended": {}, "acked": [], "inflight": []}
    ob = OutboxNor(dev, max_records=14)
    dev.zero()
    _script(ob, clean)
    total = dev.ops
    assert total >= 100 and dev.erases >= 4, (total, dev.erases)
    for torn, tail in ((0, False), (3, False), (8, False), (5, True)):
        dev.erase_tail = tail  # a torn erase that left the sector's header as it was
        for k in range(1, total + 1):
            dev.poke(0, image)
            dev.reboot()
            ob = OutboxNor(dev, max_records=14)
            dev.zero()
            dev.torn = torn
            dev.cut_at = k
            st = {"appended": {}, "acked": [], "inflight": []}
            try:
                _script(ob, st)
                raise AssertionError("no power cut at op %d" % k)
            except PowerCut:
                pass
            dev.reboot()
            lines = _capture()
            try:
                ob = OutboxNor(dev, max_records=14)
                got = {r.message_id: r.value for r in ob.pending(1000)}
            finally:
                log.set_sink(None)
            where = "torn %d%s, cut at op %d of %d" % (torn, " tail" if tail else "", k, total)
            must = [m for m in st["appended"] if m not in st["acked"] + st["inflight"]]
            for m in must:  # at-least-once: every returned append not acked is pending
                assert got.get(m) == st["appended"][m], (where, m, got, lines)
            for m in st["acked"]:  # a returned ack is durable
                assert m not in got, (where, m)
            extra = [m for m in got if m not in st["appended"]]
            assert len(extra) <= 1, (where, extra)  # the append the cut interrupted
            assert ob.pending_count() == len(got), where
            new = ob.append("reading", 9, "after", T0)
            assert new not in st["appended"] and new not in got, (where, new)
            ob.resolve(list(got) + [new])
            assert OutboxNor(dev).pending_count() == 0, where
    _done(dev)


def test_rotted_bodies_are_reported_skipped_and_the_rest_kept():
    dev = _dev("rot", sectors=8, size=512)
    ob = OutboxNor(dev)
    ids = _fill(ob, 20)
    frames = _frames(dev)
    assert len(frames) == 20
    hit = (0, 7, 19)
    for i in hit:
        s, off, ln = frames[i]
        at = s * dev.ss + off + 14 + ln // 2
        dev.poke(at, bytes((dev.peek(at, 1)[0] ^ 0x24,)))
    lines = _capture()
    try:
        ob = OutboxNor(dev)
        got = _ids(ob)
    finally:
        log.set_sink(None)
    assert got == [m for i, m in enumerate(ids) if i not in hit], got
    assert sum("damaged" in ln for ln in lines) == 3, lines
    assert ob.stats()["damaged"] == 3 and ob.pending_count() == 17
    lines = _capture()
    try:
        ob = OutboxNor(dev)  # flagged damaged: not reported again
        assert _ids(ob) == got
    finally:
        log.set_sink(None)
    assert not any("damaged" in ln for ln in lines), lines
    assert ob.append("reading", 1, "x", T0) not in ids
    _done(dev)


def test_a_rotted_header_is_stepped_over_and_its_id_not_reused():
    for which in (3, -1):  # inside a sector, and the last record of the log
        dev = _dev("hdr", sectors=8, size=512)
        ob = OutboxNor(dev)
        ids = _fill(ob, 6)
        ob = OutboxNor(dev)  # the last one alone in its boot: its boot must not come back
        ids += _fill(ob, 1, start=6)
        s, off, ln = _frames(dev)[which]
        at = s * dev.ss + off + 5  # in n
        dev.poke(at, bytes((dev.peek(at, 1)[0] ^ 0x10,)))
        lines = _capture()
        try:
            ob = OutboxNor(dev)
            got = _ids(ob)
        finally:
            log.set_sink(None)
        lost = ids[which]
        assert got == [m for m in ids if m != lost], (which, got)
        assert any("damaged" in ln for ln in lines), lines
        more = ob.append("reading", 1, "after", T0)
        assert more not in ids
        assert _ids(OutboxNor(dev)) == got + [more]
        _done(dev)


def test_wiped_partition_never_reuses_earlier_ids():
    dev = _dev("wipe", sectors=4, size=512)
    seen = set()
    for _ in range(4):
        ob = OutboxNor(dev)
        for i in range(3):
            mid = ob.append("sensor", 7, str(i), T0)
            assert mid not in seen
            seen.add(mid)
        dev.poke(0, b"\xff" * (dev.n * dev.ss))
    assert len(seen) == 12
    _done(dev)


def test_overflow_drops_oldest_readings_before_reports():
    dev = _dev("full", sectors=8)
    ob = OutboxNor(dev, max_records=5)
    r1 = ob.append("report", "relay", "on", T0, desired_id="d1", report_status="applied")
    a = _fill(ob, 3)
    r2 = ob.append("report", "relay", "off", T0, desired_id="d2", report_status="applied")
    b = _fill(ob, 2, start=3)
    assert _ids(ob) == [r1] + a[2:] + [r2] + b
    assert ob.stats()["dropped"] == 2
    ob = OutboxNor(dev, max_records=5)
    assert ob.stats()["dropped"] == 2 and ob.pending_count() == 5
    for mid in a[2:] + b:
        ob.delivered(mid)
    reps = [ob.append("report", "r", "v", T0, report_status="rejected") for _ in range(4)]
    assert _ids(ob) == [r2] + reps
    assert ob.stats()["dropped"] == 3
    _done(dev)


def test_full_log_moves_reports_and_drops_readings():
    dev = _dev("ring", sectors=4, size=512)
    ob = OutboxNor(dev, max_records=14)
    big = "x" * 120
    rep = ob.append("report", "relay", big, T0, desired_id="d1", report_status="applied")
    first = [ob.append("reading", 1, big, T0 + i) for i in range(3)]
    lines = _capture()
    try:
        later = [ob.append("reading", 1, big, T0 + 10 + i) for i in range(8)]
    finally:
        log.set_sink(None)
    got = _ids(ob)
    assert rep in got and not (set(first) & set(got)), got
    assert [m for m in got if m != rep] == later[-len(got) + 1:], (got, later)
    assert any("log full" in ln for ln in lines), lines
    assert ob.stats()["dropped"] >= 3
    ob = OutboxNor(dev)
    assert _ids(ob) == got
    ob.delivered(rep)  # a moved report is found by its id
    assert rep not in _ids(OutboxNor(dev))
    _done(dev)


def test_a_moved_report_is_acked_while_its_old_copy_still_exists():
    dev = _dev("moved", sectors=4, size=512)
    ob = OutboxNor(dev, max_records=14)
    big = "x" * 120
    rep = ob.append("report", "relay", big, T0, desired_id="d1", report_status="applied")
    lines = _capture()
    try:
        while not any("log full" in ln for ln in lines):  # stop right after the move
            ob.append("reading", 1, big, T0)
    finally:
        log.set_sink(None)
    assert rep in _ids(ob)
    ob = OutboxNor(dev)  # no pending() before the ack: the id is looked up on flash
    ob.delivered(rep)
    assert rep not in _ids(ob)
    assert rep not in _ids(OutboxNor(dev))
    _done(dev)


def test_ttl_expires_old_records():
    dev = _dev("ttl", sectors=8)
    ob = OutboxNor(dev, ttl_s=3600)
    now = [T0 + 10_000]
    ob.now = lambda: now[0]
    old = [ob.append("reading", 1, "old", T0 + i) for i in range(3)]
    fresh = [ob.append("reading", 1, "new", now[0] - 10 + i) for i in range(3)]
    unset = ob.append("reading", 1, "no clock", 0)
    assert _ids(ob, 10) == fresh + [unset]
    st = ob.stats()
    assert st["expired"] == 3 and st["pending"] == 4
    ob2 = OutboxNor(dev)
    assert _ids(ob2, 10) == fresh + [unset] and ob2.stats()["expired"] == 3
    assert old
    _done(dev)


def test_file_outbox_records_are_carried_over_with_their_ids():
    root = support.tmpdir("carry") + "/ob"
    old = Outbox(root)
    ids = _fill(old, 30)
    rep = old.append("report", "relay", "on", T0, desired_id="d1", report_status="applied")
    old.resolve(ids[:5])
    want = ids[5:] + [rep]
    dev = _dev("carry", sectors=8)
    dev.strict = False
    dev.cut_at = 20  # the first carry is cut short
    try:
        OutboxNor(dev, carry=Outbox(root))
        raise AssertionError("no power cut")
    except PowerCut:
        pass
    dev.reboot()
    ob = OutboxNor(dev, carry=Outbox(root))
    recs = ob.pending(1000)
    assert [r.message_id for r in recs] == want
    assert (recs[-1].desired_id, recs[-1].report_status) == ("d1", "applied")
    assert Outbox(root).pending_count() == 0
    ob.resolve(want[:3])
    new = ob.append("reading", 1, "native", T0)
    assert new not in ids
    ob = OutboxNor(dev, carry=Outbox(root))
    assert _ids(ob) == want[3:] + [new]
    _done(dev)
    support.rmtree(root.rsplit("/", 1)[0])


def test_a_disturbed_flag_byte_keeps_the_record_pending():
    # bits of a pending record's flag byte cleared by a disturb or a torn neighbour: up to
    # three cleared bits still read as pending (one more delivery, never a loss)
    dev = _dev("flag", sectors=8)
    ob = OutboxNor(dev)
    ids = _fill(ob, 4)
    for (s, off, _), bits in zip(_frames(dev), (0xFE, 0xF6, 0x7A, 0x0F)):
        dev.poke(s * dev.ss + off, bytes((bits,)))
    ob = OutboxNor(dev)
    assert _ids(ob) == ids[:3]  # 0x0F: four bits cleared is a resolution
    ob.resolve(ids[:3])  # a resolution programs over what is there
    assert _ids(OutboxNor(dev)) == []
    _done(dev)


def test_bytes_after_the_log_end_are_never_programmed_over():
    # a torn program that left bytes beyond a blank gap: the next record goes after them
    dev = _dev("tail", sectors=8)
    ob = OutboxNor(dev)
    ids = _fill(ob, 2)
    s, off, ln = _frames(dev)[-1]
    junk_at = s * dev.ss + off + 16 + ln + 40
    dev.poke(junk_at, b"\x12\x34")
    ob = OutboxNor(dev)  # strict: programming over the junk would raise NorError
    more = _fill(ob, 3, start=2)
    assert _ids(OutboxNor(dev)) == ids + more
    assert dev.peek(junk_at, 2) == b"\x12\x34"
    _done(dev)


def _heap():
    import gc

    gc.collect()
    return gc.mem_alloc() if support.IS_MICROPYTHON else 0


def test_memory_flat_with_thousands_pending_and_acks_read_nothing():
    dev = _dev("mem", sectors=48, size=4096)
    ob = OutboxNor(dev, max_records=2700)
    _fill(ob, 50)
    ob.pending(10)
    base = _heap()
    for i in range(2500):
        ob.append("reading", 7, "v%d" % i, T0 + i)
    grown = _heap() - base
    reopened = OutboxNor(dev, max_records=2700)
    assert reopened.pending_count() == 2550
    first = reopened.pending(10)
    before = _heap()
    dev.zero()
    reopened.resolve([r.message_id for r in first])
    # ten flag bytes; the head steps over the ten resolved headers (14 bytes each) to the next
    assert dev.progs == 10 and dev.read_bytes <= 11 * 14, dev.read_bytes
    batch = reopened.pending(10)
    after = _heap()
    assert len(batch) == 10 and reopened.pending_count() == 2540
    if support.IS_MICROPYTHON:
        assert grown < 4096, grown  # RAM holds per-sector numbers, no per-record state
        assert after - before < 8192, after - before
    _done(dev)
