# Power-cut harness for firmware/outbox.py on vfs.VfsLfs2 over a RAM block device (MicroPython).
# Usage: micropython outbox_powercut.py count          -> prints "writes N" for the sequence
#        micropython outbox_powercut.py K_FIRST K_LAST -> one line per k, then "tried N"
#
# The device counts every block program (writeblocks) and erase (ioctl 6) as one block write.
# With a cut at k, writes 1..k land; write k+1 is torn (its first half lands, the rest stays
# as it was); it and every later write then FAIL: writeblocks/erase return -EIO, which
# littlefs turns into an OSError, so the scripted sequence stops at the first failed call and
# nothing more ever reaches the RAM. Then a fresh VfsLfs2 is mounted on the same RAM, the
# outbox is reopened and checked.
#
# The image starts with a store written by the v1 outbox (firmware/outbox_v1.py,
# not counted): the first open converts it, so the cuts land inside the conversion too. The
# second life acknowledges one by one in reverse order, past the ack index's out-of-order
# list, so resolution markers in slots are cut as well; the others resolve send results in
# batches (Outbox.resolve: one index write, so a batch lands all or nothing), and one batch
# has too many gaps for the index (resolved record by record). Last, one reading per request:
# each delivery empties the queue and is carried by the next append's slot; until that append
# returns, a cut may bring back that one delivered record (never any other).
import gc
import json
import sys

import vfs

from firmware.outbox import Outbox
from firmware.outbox_v1 import Outbox as OutboxV1

BS = 4096
NBLOCKS = 48
T0 = 1800000000


class CutDevice:
    def __init__(self, ram, cut=0):
        self.ram = ram
        self.cut = cut  # 0: never
        self.writes = 0

    def readblocks(self, n, buf, off=0):
        start = n * BS + off
        buf[:] = self.ram[start:start + len(buf)]

    def _power(self, start, data, fill=None):
        self.writes += 1
        if self.cut and self.writes > self.cut:
            if self.writes == self.cut + 1:  # the torn write: half of it lands
                half = len(data) // 2 if fill is None else data // 2
                if fill is None:
                    self.ram[start:start + half] = data[:half]
                else:
                    for i in range(start, start + half):
                        self.ram[i] = fill
            return -5
        if fill is None:
            self.ram[start:start + len(data)] = data
        else:
            for i in range(start, start + BS):
                self.ram[i] = fill
        return 0

    def writeblocks(self, n, buf, off=None):
        return self._power(n * BS + (off or 0), buf)

    def ioctl(self, op, arg):
        if op == 4:
            return NBLOCKS
        if op == 5:
            return BS
        if op == 6:
            return self._power(arg * BS, BS, 0xFF)
        return 0


def sequence(st):
    # Deterministic appends / acks / dead letters / compactions / reboots. st collects what
    # returned: accepted ids with their content, ids whose ack returned.
    ob = Outbox("/flash/ob", max_records=1000)
    i = 0
    # past buckets of 28: renamed for reuse; the last life drains the queue, so compact()
    # removes the buckets the backlog left (slot deletes and rmdir cut too)
    for life, count in enumerate((60, 40, 16, 10)):
        for _ in range(count):
            st["current"] = ["a", i]
            src = i if i % 2 else "s%d" % i
            mid = ob.append("reading" if i % 3 else "report", src, "v%d" % i, T0 + i,
                            desired_id=("d%d" % i) if i % 3 == 0 else None)
            st["ok"][mid] = i
            i += 1
        recs = ob.pending(18 if life < 3 else 1000)
        if life == 1:  # one at a time, in reverse: past the out-of-order list, slots marked
            recs.reverse()
            for n, r in enumerate(recs):
                st["current"] = ["d", [r.message_id], True]
                if n % 7 == 3:
                    ob.dead_letter(r.message_id, "test")
                else:
                    ob.delivered(r.message_id)
                st["acked"].append(r.message_id)
        else:  # send results: batches of 5 from the head (one index write: all or none)
            if life == 3:  # every other one of 30: too many gaps, resolved one by one
                st["gappy"] = len(recs)
                resolve(ob, st, recs[1:30:2], False)
                recs = recs[0:30:2] + recs[30:]
            for a in range(0, len(recs), 5):
                resolve(ob, st, recs[a:a + 5], True)
        st["current"] = ["c"]
        ob.compact()
        if life == 3:
            st["compacted"] = ob._low
        st["current"] = ["r"]
        ob = Outbox("/flash/ob", max_records=1000)
    # one reading per request: the delivery that empties the queue is written by the next
    # append (until then a cut may bring back that one record, st["soft"])
    for n in range(7):
        st["current"] = ["a", i]
        mid = ob.append("reading" if i % 3 else "report", i if i % 2 else "s%d" % i, "v%d" % i,
                        T0 + i, desired_id=("d%d" % i) if i % 3 == 0 else None)
        st["ok"][mid] = i
        st["soft"] = None
        i += 1
        if n < 6:
            st["current"] = ["d", [mid], True]
            ob.delivered(mid)
            st["acked"].append(mid)
            st["soft"] = mid
            st["singles"] = st.get("singles", 0) + 1
    st["current"] = None


def resolve(ob, st, recs, atomic):
    # one batch: a third dead-lettered; atomic: the batch must land all or nothing
    ids = [r.message_id for r in recs]
    # ids carried over from v1 are found by a scan and resolved one by one
    atomic = atomic and not any(m in TEMPLATE_ST["ok"] for m in ids)
    st["current"] = ["d", ids, atomic]
    ob.resolve([m for n, m in enumerate(ids) if n % 3 != 1],
               [(m, "test") for n, m in enumerate(ids) if n % 3 == 1])
    st["acked"].extend(ids)


def expected(i):
    return ("reading" if i % 3 else "report", i if i % 2 else "s%d" % i, "v%d" % i, T0 + i,
            ("d%d" % i) if i % 3 == 0 else None)


def check(ram, st):
    # remount on the same RAM (no cut) and reopen: returns a list of problems
    bad = []
    dev = CutDevice(ram)
    try:
        mount(dev)
    except Exception as e:
        return ["remount failed: %r" % e]
    try:
        ob = Outbox("/flash/ob", max_records=1000)
        pend = ob.pending(100000)
        ids = [r.message_id for r in pend]
        if len(set(ids)) != len(ids):
            bad.append("duplicate pending ids")
        if len(ids) != ob.pending_count():
            bad.append("pending_count %d != %d" % (ob.pending_count(), len(ids)))
        cur = st["current"]
        maybe = cur[1] if cur and cur[0] == "a" else None
        for r in pend:
            i = st["ok"].get(r.message_id, maybe if r.message_id not in st["ok"] else None)
            if i is None:
                bad.append("unknown pending id %s" % r.message_id)
                continue
            got = (r.kind, r.source, r.value, r.t, r.desired_id)
            if got != expected(i):
                bad.append("corrupt %s: %r" % (r.message_id, got))
        inflight = set(cur[1]) if cur and cur[0] == "d" else set()
        pset = set(ids)
        for mid in st["acked"]:
            if mid in pset and mid not in inflight and mid != st.get("soft"):
                bad.append("acked %s pending again" % mid)
        if inflight and cur[2] and 0 < len(inflight & pset) < len(inflight):
            bad.append("batch resolved in part: %d of %d pending" % (
                len(inflight & pset), len(inflight)))
        acked = set(st["acked"])
        for mid in st["ok"]:
            if mid not in pset and mid not in acked and mid not in inflight:
                bad.append("lost %s" % mid)
        new = ob.append("reading", 1, "after", T0)
        if new in st["ok"] or new in acked or new in pset:
            bad.append("id %s reused" % new)
    except Exception as e:
        bad.append("reopen failed: %r" % e)
    vfs.umount("/flash")
    return bad


V1_FIRST = 1000


def mount(dev):
    # as the board mounts its filesystem (boot.py, firmware/fsmount.py): mtime off
    vfs.mount(vfs.VfsLfs2(dev, mtime=False), "/flash")


def fresh_image():
    # a v1 store: 30 records, the first 8 acknowledged (what a device brings to the upgrade)
    ram = bytearray(b"\xff" * (BS * NBLOCKS))
    dev = CutDevice(ram)
    vfs.VfsLfs2.mkfs(dev)
    mount(dev)
    ob = OutboxV1("/flash/ob", max_records=1000)
    st = {"ok": {}, "acked": [], "current": None}
    for i in range(V1_FIRST, V1_FIRST + 30):
        src = i if i % 2 else "s%d" % i
        mid = ob.append("reading" if i % 3 else "report", src, "v%d" % i, T0 + i,
                        desired_id=("d%d" % i) if i % 3 == 0 else None)
        st["ok"][mid] = i
    for r in ob.pending(8):
        ob.delivered(r.message_id)
        st["acked"].append(r.message_id)
    vfs.umount("/flash")
    TEMPLATE_ST.update(st)
    return ram


TEMPLATE_ST: dict = {}


def run(template, ram, cut):
    ram[:] = template  # one RAM image reused: a fresh 192 KB per k fragments the heap
    dev = CutDevice(ram, cut)
    mount(dev)
    st = {"ok": dict(TEMPLATE_ST["ok"]), "acked": list(TEMPLATE_ST["acked"]), "current": None}
    try:
        sequence(st)
    except Exception:  # the power cut: the first failing call ends this "life"
        pass
    try:
        vfs.umount("/flash")
    except Exception:
        pass
    return dev.writes, ram, st


def main():
    template = fresh_image()
    ram = bytearray(len(template))
    if sys.argv[1] == "count":
        writes, ram, st = run(template, ram, 0)
        if st["current"] is not None:
            print("sequence did not finish")
        bad = check(ram, st)
        print(json.dumps({"writes": writes, "bad": bad, "appended": len(st["ok"]),
                          "acked": len(st["acked"]), "compacted": st.get("compacted"),
                          "gappy": st.get("gappy"), "singles": st.get("singles")}))
        return
    first, last = int(sys.argv[1]), int(sys.argv[2])
    tried = 0
    for k in range(first, last + 1):
        _, ram, st = run(template, ram, k)
        bad = check(ram, st)
        tried += 1
        gc.collect()
        if bad:
            print(json.dumps({"k": k, "bad": bad[:5], "at": st["current"]}))
    print(json.dumps({"tried": tried, "first": first, "last": last}))


main()
