# Flash work of firmware/outbox.py (v3), the v1 outbox it replaces (firmware/outbox_v1.py) and
# a naive file-per-record store, on vfs.VfsLfs2 (read/prog size 32; mtime off as the board
# mounts it, firmware/fsmount.py; option "mtime": MicroPython's default, mtime on)
# over a RAM block device that counts block erases, programs, programmed bytes and bytes read.
# Run under micropython:
#   MICROPYPATH=.:host_tests/shims:lib .venv/bin/micropython -X heapsize=80M \
#       bench/outbox_wear.py [records] [pending counts, comma separated] [mtime] [warm]
# Option "warm": Part 1 runs each steady/single workload once unmeasured on the same store
# first, so the figures are those of a store in service (its buckets exist) rather than new.
# Part 1, per 1000 records, the same records in three workloads (every append is durable when
# it returns, in every store; so is every ack, but the v3 outbox's delivery of the last pending
# record, which its next append carries: "v3 flush each" flushes it at once, as before):
#   steady   append; after every 10th append take the 10 oldest and mark them delivered
#   single   append one reading, take it, mark it delivered (one reading per request)
#   backlog  append all records first, then drain them in batches of 20
# A batch taken together is acknowledged together (Outbox.resolve, as the firmware's uplink
# does with a send result); "v3 one by one" is the same store acked record by record.
# floor = bytes of record payload (the naive store's JSON of each record) / erase-block size.
# Part 2, the outbox with P records pending: flash bytes read and host time per ack, per
# pending(10), per open (boot) against the live log (bytes of the pending records' files),
# the reads of the boot's first append (it writes the boot counter opening used to write)
# beside a later one, and the heap in use after opening it.
import gc
import json
import os
import sys
import time

import vfs
from norflash import NorPartition

from firmware import outbox_nor, outbox_v1
from firmware.outbox import Outbox
from firmware.outbox_nor import OutboxNor

BS = 4096
MTIME = "mtime" in sys.argv[3:]
WARM = "warm" in sys.argv[3:]
T0 = 1800000000
_FF = b"\xff" * BS


class CountingDevice:
    def __init__(self, nblocks):
        self.nblocks = nblocks
        self.ram = bytearray(_FF * nblocks)
        self.zero()

    def zero(self):
        self.erases = self.progs = self.prog_bytes = self.read_bytes = 0

    def readblocks(self, n, buf, off=0):
        start = n * BS + off
        buf[:] = memoryview(self.ram)[start:start + len(buf)]
        self.read_bytes += len(buf)

    def writeblocks(self, n, buf, off=None):
        start = n * BS + (off or 0)
        self.ram[start:start + len(buf)] = buf
        self.progs += 1
        self.prog_bytes += len(buf)
        return 0

    def ioctl(self, op, arg):
        if op == 4:
            return self.nblocks
        if op == 5:
            return BS
        if op == 6:
            self.ram[arg * BS:(arg + 1) * BS] = _FF
            self.erases += 1
        return 0


def mounted(nblocks):
    dev = CountingDevice(nblocks)
    vfs.VfsLfs2.mkfs(dev)
    vfs.mount(vfs.VfsLfs2(dev, mtime=MTIME), "/flash")
    dev.zero()  # count the workload only
    return dev


def reading(i):
    return ("sensor", i % 4, "%d.%d" % (20 + i % 7, i % 10), T0 + i)


class OutboxStore:
    def __init__(self, cls=Outbox):
        self.ob = cls("/flash/ob", max_records=100000)

    def append(self, i):
        self.ob.append(*reading(i))

    def take(self, k):
        return [r.message_id for r in self.ob.pending(k)]

    def ack(self, mid):
        self.ob.delivered(mid)

    def acks(self, mids):  # a send result: the firmware resolves it in one index write
        self.ob.resolve(mids)


class OneByOneStore(OutboxStore):  # v3 as the firmware used it before resolve(): per record
    def acks(self, mids):
        for m in mids:
            self.ob.delivered(m)


class FlushStore(OutboxStore):  # v3 with every ack durable when it returns (flush())
    def acks(self, mids):
        self.ob.resolve(mids)
        self.ob.flush()


class V1Store(OutboxStore):
    def __init__(self):
        super().__init__(outbox_v1.Outbox)

    def acks(self, mids):
        for m in mids:
            self.ob.delivered(m)


class NaiveStore:
    # one JSON file per record, named by its sequence number; delivered = file deleted
    def __init__(self):
        os.mkdir("/flash/naive")
        self.payload = 0

    def append(self, i):
        kind, source, value, t = reading(i)
        data = json.dumps({"id": "n-%d" % i, "kind": kind, "source": source, "value": value,
                           "t": t})
        self.payload += len(data)
        with open("/flash/naive/%08d.json" % i, "w") as f:
            f.write(data)

    def take(self, k):
        out = []
        for name in sorted(os.listdir("/flash/naive"))[:k]:
            with open("/flash/naive/" + name) as f:
                json.loads(f.read())
            out.append(name)
        return out

    def ack(self, name):
        os.remove("/flash/naive/" + name)


class NorStore:
    # issue 15 item 5: firmware/outbox_nor.py written in place into a raw partition
    # (host_tests/shims/norflash.py: esp32.Partition's interface over a file, NOR semantics,
    # counting erases, programs, programmed bytes and bytes read)
    NB = 64  # a 256 KB partition (bench/outbox-wear.md, "Partition")

    def __init__(self):
        path = "/tmp/outbox-wear-nor.bin"
        try:
            os.remove(path)
        except OSError:
            pass
        self.dev = NorPartition(path, self.NB, BS)
        self.ob = OutboxNor(self.dev, max_records=100000)

    append = OutboxStore.append
    take = OutboxStore.take
    acks = OutboxStore.acks

    def warm(self, wl, n):
        # run the workload unmeasured until the log has wrapped: every later sector costs
        # its erase (a fresh partition's first lap needs none)
        while self.dev.erases < 2 * self.NB:
            wl(self, n)
        self.ob.pending(100000)  # nothing left over from the warm-up
        self.dev.zero()


def steady(st, n):
    for i in range(n):
        st.append(i)
        if i % 10 == 9:
            _acks(st, st.take(10))


def single(st, n):
    for i in range(n):
        st.append(i)
        _acks(st, st.take(1))


def backlog(st, n):
    for i in range(n):
        st.append(i)
    while True:
        batch = st.take(20)
        if not batch:
            break
        _acks(st, batch)


def _acks(st, batch):
    if hasattr(st, "acks"):
        st.acks(batch)
    else:
        for m in batch:
            st.ack(m)


def wear(n):
    print("Part 1: flash work per 1000 records (%d-record runs), LittleFS 256 x %d B blocks, "
          "mtime %s%s" % (n, BS, "on" if MTIME else "off", ", warm" if WARM else ""))
    print("%-8s %-16s %8s %12s %9s %9s %8s" % ("workload", "store", "erases", "bytes written",
                                                "programs", "MB read", "ms host"))
    k = 1000 / n
    for wl in (steady, single, backlog):
        rows = {}
        payload = 0
        for name, cls in (("outbox v3", OutboxStore), ("v3 one by one", OneByOneStore),
                          ("v3 flush each", FlushStore), ("outbox v1", V1Store),
                          ("file-per-record", NaiveStore)):
            dev = mounted(256)
            st = cls()
            if WARM and wl is not backlog:
                wl(st, n)
                dev.zero()
                st.payload = 0  # the floor counts the measured records only
            t = time.ticks_ms()
            wl(st, n)
            ms = time.ticks_diff(time.ticks_ms(), t)
            vfs.umount("/flash")
            if name == "file-per-record":
                payload = st.payload
            rows[name] = (dev.erases * k, dev.prog_bytes * k, dev.progs * k,
                          dev.read_bytes * k / 1e6, ms * k)
            print("%-8s %-16s %8.1f %12.0f %9.1f %9.1f %8.0f" % ((wl.__name__, name) +
                                                                  rows[name]))
        raw = NorStore()
        raw.warm(wl, n)
        t = time.ticks_ms()
        wl(raw, n)
        ms = time.ticks_diff(time.ticks_ms(), t)
        d = raw.dev
        rows["nor"] = (d.erases * k, d.prog_bytes * k, d.progs * k, d.read_bytes * k / 1e6,
                       ms * k)
        print("%-8s %-16s %8.1f %12.0f %9.1f %9.1f %8.0f" % ((wl.__name__, "outbox_nor") +
                                                              rows["nor"]))
        raw.dev.close()
        floor = payload * k / BS
        v2, v1, nv = rows["outbox v3"], rows["outbox v1"], rows["file-per-record"]
        one, fl = rows["v3 one by one"], rows["v3 flush each"]
        print("%-8s floor %.1f erases (%.0f payload bytes); v3/naive: erases %.2f, bytes %.2f; "
              "v3/floor %.1f; v3 one by one/naive: erases %.2f, bytes %.2f; v3 flush each/naive: "
              "erases %.2f, bytes %.2f; v1/naive erases %.1f" % (
                  wl.__name__, floor, payload * k, v2[0] / nv[0], v2[1] / nv[1], v2[0] / floor,
                  one[0] / nv[0], one[1] / nv[1], fl[0] / nv[0], fl[1] / nv[1], v1[0] / nv[0]))
        nor = rows["nor"]
        print("%-8s outbox_nor/naive: erases %.2f, bytes %.2f, programs %.2f; outbox_nor/floor "
              "%.2f; outbox_nor/v3 erases %.2f" % (
                  wl.__name__, nor[0] / nv[0], nor[1] / nv[1], nor[2] / nv[2], nor[0] / floor,
                  nor[0] / v2[0]))


def _heap():
    gc.collect()
    return gc.mem_alloc()


def scaling(counts):
    print("Part 2: outbox v3 with P pending (reads in bytes from flash, host time)")
    print("%7s %10s %9s %11s %9s %11s %11s %9s %10s %10s" % (
        "pending", "read/ack", "us/ack", "read/pend10", "us/pend10", "read/open",
        "live log", "heap B", "read/1st", "read/app"))  # live log: bytes of the pending
    # records' slot files; read/1st: the first append after the open, read/app: the next one;
    # heap B: gc.mem_alloc() after the acks less the RAM image of the flash (flat: same for any P)
    for p in counts:
        dev = mounted(max(256, p * 400 // BS + 128))  # a 32-slot bucket: 2 blocks
        ob = Outbox("/flash/ob", max_records=p + 100)
        for i in range(p):
            ob.append(*reading(i))
        live = 0
        for name in os.listdir("/flash/ob"):
            if name.startswith("b"):
                for slot in os.listdir("/flash/ob/" + name):
                    live += os.stat("/flash/ob/%s/%s" % (name, slot))[6]
        ob = name = slot = None
        gc.collect()
        dev.zero()
        t = time.ticks_us()
        ob = Outbox("/flash/ob", max_records=p + 100)
        us_open = time.ticks_diff(time.ticks_us(), t)
        read_open = dev.read_bytes
        rounds = 5
        rp = ra = tp = ta = 0
        for _ in range(rounds):
            dev.zero()
            t = time.ticks_us()
            recs = ob.pending(10)
            tp += time.ticks_diff(time.ticks_us(), t)
            rp += dev.read_bytes
            dev.zero()
            t = time.ticks_us()
            for r in recs:
                ob.delivered(r.message_id)
            ta += time.ticks_diff(time.ticks_us(), t)
            ra += dev.read_bytes
        acks = rounds * 10
        recs = r = None
        heap = _heap() - len(dev.ram)  # heap in use after 50 acks, less the RAM flash image
        app = []
        ob._capped = True  # not the once-a-boot statvfs (capacity(): it walks the whole tree)
        for i in range(2):  # the boot's first append, then another one
            dev.zero()
            ob.append(*reading(p + i))
            app.append(dev.read_bytes)
        print("%7d %10.0f %9.0f %11.0f %9.0f %11d %11d %9d %10d %10d   (open %d ms, open/live "
              "%.2f, open + 1st append - append: %.2f)" % (
                  p, ra / acks, ta / acks, rp / rounds, tp / rounds, read_open, live, heap,
                  app[0], app[1], us_open // 1000, read_open / live,
                  (read_open + app[0] - app[1]) / live))
        ob = None
        vfs.umount("/flash")
        dev = None
        gc.collect()


def scaling_nor(counts):
    print("Part 2b: outbox_nor with P pending (reads in bytes from the partition, host time)")
    print("%7s %10s %11s %9s %11s %9s %11s %11s %9s" % (
        "pending", "read/ack", "read/ackid", "us/ack", "read/pend10", "us/pend10",
        "read/open", "live log", "heap B"))  # read/ackid: an id not from the last pending()
    from firmware.outbox import Record

    for p in counts:
        path = "/tmp/outbox-wear-nor2.bin"
        try:
            os.remove(path)
        except OSError:
            pass
        dev = NorPartition(path, (p + 100) // 60 + 4, BS)
        ob = OutboxNor(dev, max_records=p + 100)
        live = 0
        ids = []
        for i in range(p):
            rec = reading(i)
            mid = ob.append(*rec)
            if i in (p // 2, p // 2 + 1, p // 2 + 2):
                ids.append(mid)
            live += 16 + len(outbox_nor._encode(Record(None, rec[0], rec[1], rec[2], rec[3])))
        ob = rec = None
        gc.collect()
        h0 = _heap()
        dev.zero()
        t = time.ticks_us()
        ob = OutboxNor(dev, max_records=p + 100)
        us_open = time.ticks_diff(time.ticks_us(), t)
        read_open = dev.read_bytes
        rounds = 5
        rp = ra = tp = ta = 0
        for _ in range(rounds):
            dev.zero()
            t = time.ticks_us()
            recs = ob.pending(10)
            tp += time.ticks_diff(time.ticks_us(), t)
            rp += dev.read_bytes
            dev.zero()
            t = time.ticks_us()
            ob.resolve([r.message_id for r in recs])
            ta += time.ticks_diff(time.ticks_us(), t)
            ra += dev.read_bytes
        dev.zero()
        for mid in ids:
            ob.delivered(mid)
        rid = dev.read_bytes / len(ids)
        recs = None
        heap = _heap() - h0
        print("%7d %10.0f %11.0f %9.0f %11.0f %9.0f %11d %11d %9d   (open %d ms)" % (
            p, ra / (rounds * 10), rid, ta / (rounds * 10), rp / rounds, tp / rounds,
            read_open, live, heap, us_open // 1000))
        ob = None
        dev.close()
        os.remove(path)
        gc.collect()


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    counts = [int(x) for x in sys.argv[2].split(",") if x] if len(sys.argv) > 2 else [
        1000, 10000, 50000]
    wear(n)
    scaling(counts)
    scaling_nor(counts)


main()
