# Flash wear of firmware/outbox.py vs a naive file-per-record store, on vfs.VfsLfs2 over a RAM
# block device that counts block erases and programmed bytes (run under micropython):
#   MICROPYPATH=.:host_tests/shims:lib .venv/bin/micropython -X heapsize=4M \
#       bench/outbox_wear.py [records]
# Workload for both: append N sensor records; after every 10th append, take the 10 oldest
# pending records and mark each delivered (the uplink's batch of 10); compact at the end.
import sys
import time

import vfs

from firmware.outbox import Outbox

BS = 4096
NBLOCKS = 128  # 512 KB of LittleFS
T0 = 1800000000
_FF = b"\xff" * BS


class CountingDevice:
    def __init__(self, ram):
        self.ram = ram
        for b in range(NBLOCKS):
            ram[b * BS:(b + 1) * BS] = _FF
        self.erases = 0
        self.progs = 0
        self.prog_bytes = 0

    def readblocks(self, n, buf, off=0):
        start = n * BS + off
        buf[:] = memoryview(self.ram)[start:start + len(buf)]

    def writeblocks(self, n, buf, off=None):
        start = n * BS + (off or 0)
        self.ram[start:start + len(buf)] = buf
        self.progs += 1
        self.prog_bytes += len(buf)
        return 0

    def ioctl(self, op, arg):
        if op == 4:
            return NBLOCKS
        if op == 5:
            return BS
        if op == 6:
            self.ram[arg * BS:(arg + 1) * BS] = _FF
            self.erases += 1
        return 0


_RAM = bytearray(BS * NBLOCKS)  # one image, reset per run


def mounted():
    dev = CountingDevice(_RAM)
    vfs.VfsLfs2.mkfs(dev)
    vfs.mount(vfs.VfsLfs2(dev), "/flash")
    dev.erases = dev.progs = dev.prog_bytes = 0  # count the workload only
    return dev


def run_outbox(n):
    ob = Outbox("/flash/ob", max_records=2000)
    for i in range(n):
        ob.append("reading", i % 4, "%d.%d" % (20 + i % 7, i % 10), T0 + i)
        if i % 10 == 9:
            for r in ob.pending(10):
                ob.delivered(r.message_id)
    ob.compact()
    if ob.pending_count():
        raise RuntimeError("outbox left records pending")


def run_naive(n):
    # one JSON file per record, named by its sequence number; delivered = file deleted
    import json
    import os

    os.mkdir("/flash/naive")
    for i in range(n):
        with open("/flash/naive/%08d.json" % i, "w") as f:
            f.write(json.dumps({"id": "n-%d" % i, "kind": "reading", "source": i % 4,
                                "value": "%d.%d" % (20 + i % 7, i % 10), "t": T0 + i}))
        if i % 10 == 9:
            for name in sorted(os.listdir("/flash/naive"))[:10]:
                with open("/flash/naive/" + name) as f:
                    json.loads(f.read())
                os.remove("/flash/naive/" + name)
    if os.listdir("/flash/naive"):
        raise RuntimeError("naive store left records")


def measure(fn, n):
    dev = mounted()
    t = time.ticks_ms()
    fn(n)
    ms = time.ticks_diff(time.ticks_ms(), t)
    vfs.umount("/flash")
    k = 1000 / n
    return dev.erases * k, dev.prog_bytes * k, dev.progs * k, ms * k


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    rows = [("outbox", measure(run_outbox, n)), ("file-per-record", measure(run_naive, n))]
    print("per 1000 records (%d run), LittleFS %d x %d B blocks:" % (n, NBLOCKS, BS))
    print("%-16s %10s %14s %10s %10s" % ("store", "erases", "bytes written", "programs", "ms"))
    for name, (er, by, pr, ms) in rows:
        print("%-16s %10.1f %14.0f %10.1f %10.0f" % (name, er, by, pr, ms))
    o, b = rows[0][1], rows[1][1]
    print("ratio outbox/naive: erases %.3f, bytes written %.3f" % (o[0] / b[0], o[1] / b[1]))


main()
