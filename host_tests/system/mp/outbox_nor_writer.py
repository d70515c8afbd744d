# SIGKILL target for firmware/outbox_nor.py over the file-backed NOR partition
# (host_tests/shims/norflash.py), under MicroPython: the protocol of outbox_writer.py.
# Usage: micropython outbox_nor_writer.py DIR FIRST_INDEX [check]
# Opens the outbox in DIR/part.bin, prints every pending record ("P id source value t"), then
# "READY", then appends and acks forever, printing "A id i" after each append returned, "d id"
# before and "D id" after each ack. With "check" it stops after READY.
import sys

from norflash import NorPartition

from firmware.outbox_nor import OutboxNor

T0 = 1800000000


def out(line):
    sys.stdout.write(line + "\n")


def main():
    root, i = sys.argv[1], int(sys.argv[2])
    ob = OutboxNor(NorPartition(root + "/part.bin", 8, 4096), max_records=300)
    for r in ob.pending(100000):
        out("P %s %r %s %d" % (r.message_id, r.source, r.value, r.t))
    out("READY %d" % ob.pending_count())
    if len(sys.argv) > 3:
        return
    n = 0
    while True:
        mid = ob.append("reading", i, "v%d" % i, T0 + i)
        out("A %s %d" % (mid, i))
        i += 1
        n += 1
        if ob.pending_count() > 40:
            batch = ob.pending(3)
            for r in batch:
                out("d %s" % r.message_id)  # intent: the kill may land inside the ack
            if n % 11 == 0:
                ob.resolve((), [(r.message_id, "test") for r in batch])
            else:
                ob.resolve([r.message_id for r in batch])
            for r in batch:
                out("D %s" % r.message_id)


main()
