# SIGKILL target for firmware/outbox.py on the host filesystem (MicroPython).
# Usage: micropython outbox_writer.py ROOT FIRST_INDEX [check]
# Opens the outbox, prints every pending record ("P id source value t"), then "READY", then
# appends and acks forever, printing "A id i" after each append returned, "d id" before and
# "D id" after each ack; each line is written straight to stdout's fd, so it is out before the next
# operation starts. With "check" it stops after READY. "S id" instead of "D id": the ack
# returned, but it may be the delivery that emptied the queue, which is on flash only once the
# next append returned (or the next ack: it writes the index with it).
import sys

from firmware.outbox import Outbox

T0 = 1800000000


def out(line):
    sys.stdout.write(line + "\n")


def main():
    root, i = sys.argv[1], int(sys.argv[2])
    ob = Outbox(root)
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
            for r in ob.pending(3):
                out("d %s" % r.message_id)  # intent: the kill may land inside the ack
                if n % 11 == 0:
                    ob.dead_letter(r.message_id, "test")
                else:
                    ob.delivered(r.message_id)
                out("D %s" % r.message_id)
        if n % 97 == 0:
            ob.compact()
        if n % 53 == 0:  # drain, then one reading per request: the delivery that empties the
            # queue is written by the next append ("S": until an "A" it may come back)
            for r in ob.pending(100000):
                out("d %s" % r.message_id)
                ob.delivered(r.message_id)
                out("S %s" % r.message_id)
            for _ in range(3):
                mid = ob.append("reading", i, "v%d" % i, T0 + i)
                out("A %s %d" % (mid, i))
                i += 1
                out("d %s" % mid)
                ob.delivered(mid)
                out("S %s" % mid)


main()
