"""Power loss under the real MicroPython binary: firmware/outbox.py on vfs.VfsLfs2 over a RAM
block device (mounted as the board mounts it: mtime off) that cuts the power after the k-th
block write, for EVERY k of a scripted sequence of appends, acks (one by one and in send-result
batches), dead letters, reboots and a compaction that removes drained buckets
(host_tests/system/mp/outbox_powercut.py: write k+1 is torn, it and all later writes fail with
EIO).

Pass: every remount succeeds, every record whose append returned before the cut is pending or
was acked, no pending record is corrupt or unknown, no acked record comes back (but the one
delivery that emptied the queue, until the next append returned: at-least-once), no id
repeats, a batch resolved by one index write is found all pending or all resolved.
"""
import os
import subprocess

from peers import MICROPYTHON, ROOT, json_lines, mp_env

SCRIPT = os.path.join(ROOT, "host_tests", "system", "mp", "outbox_powercut.py")
ENV = mp_env()
PROCS = 2


def _start(*args):
    assert os.path.exists(MICROPYTHON), "micropython binary missing: run make deps"
    return subprocess.Popen([MICROPYTHON, SCRIPT, *map(str, args)], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_every_power_cut_point_recovers():
    p = _start("count")
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0, out
    full = json_lines(out)[-1]
    total = full["writes"]
    assert full["bad"] == [] and full["appended"] > 60 and full["acked"] > 30, full
    assert full["compacted"] >= 2, full  # compact() removed drained buckets: cut there too
    assert full["gappy"] >= 30, full  # a batch with more gaps than the index holds
    assert full["singles"] == 6, full  # deliveries carried by the next append
    assert total > 100, full

    step = (total + PROCS - 1) // PROCS
    ranges = [(a, min(a + step - 1, total)) for a in range(1, total + 1, step)]
    procs = [_start(a, b) for a, b in ranges]
    tried = 0
    failures = []
    for (a, b), p in zip(ranges, procs):
        # a hang guard: each half is about 13 s of CPU (28 s user for the test, 2026-12-06),
        # which at load 19 on the 2-core machine took over 120 s
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out[-3000:]
        lines = json_lines(out)
        summary = lines[-1]
        assert (summary["first"], summary["last"]) == (a, b), summary
        tried += summary["tried"]
        failures += [ln for ln in lines if "k" in ln]
    print("power-cut points tried: %d of %d block writes" % (tried, total))
    assert tried == total
    assert failures == [], failures[:10]
