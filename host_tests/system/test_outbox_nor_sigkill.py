"""SIGKILL at random moments for firmware/outbox_nor.py (the raw-partition prototype): a real
micropython process appends and acks into a file-backed NOR partition
(host_tests/system/mp/outbox_nor_writer.py over host_tests/shims/norflash.py) and is killed
mid-flight, over and over on the same partition, which wraps several times. The checks are
test_outbox_sigkill.py's: every record whose append returned is pending unless acked, no
acked record comes back (except one in flight), nothing corrupt, no duplicate, no id twice.
"""
import os
import random
import shutil
import tempfile

from peers import ROOT
from test_outbox_sigkill import _check, _life
from test_outbox_sigkill import _run as run_writer

SCRIPT = os.path.join(ROOT, "host_tests", "system", "mp", "outbox_nor_writer.py")
TRIALS = 100


def _run(root, first, kill_after=None, from_ready=False):
    return run_writer(root, first, kill_after, from_ready, script=SCRIPT)


def test_outbox_nor_survives_sigkill_at_random_moments():
    random.seed(int.from_bytes(os.urandom(4), "little"))
    root = tempfile.mkdtemp(prefix="outbox-nor-kill-")
    try:
        appended, acked, seen = {}, {}, set()
        next_i = 0
        checked = in_loop = 0
        for trial in range(TRIALS):
            # as test_outbox_sigkill: two kills in three count from READY, so most land in
            # the write loop even when a busy machine makes the start slow
            lines = _run(root, next_i, kill_after=random.uniform(0.005, 0.15),
                         from_ready=trial % 3 != 0)
            pend = _check(lines, appended, acked, seen)
            if pend is not None:
                checked += 1
                seen.update(pend)
                appended = dict(pend)
                acked = {}
            after, nxt = _life(lines, appended, acked, seen)
            in_loop += after
            next_i = max(next_i, nxt)
        final = _check(_run(root, next_i), appended, acked, seen)
        assert final is not None
        print("sigkill trials: %d, dumps checked: %d, killed in the write loop: %d, ids: %d, "
              "records appended: %d" % (TRIALS, checked + 1, in_loop, len(seen), next_i))
        assert in_loop >= TRIALS // 2, "kills mostly missed the write loop"
        assert next_i > 8 * 4096 // 40, "the partition never wrapped: %d records" % next_i
    finally:
        shutil.rmtree(root)
