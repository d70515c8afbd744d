"""SIGKILL at random moments: a real micropython process appends and acks on the host
filesystem (host_tests/system/mp/outbox_writer.py) and is killed mid-flight, over and over on
the same outbox. Each next start dumps what it reopened; it must hold every record whose
append returned (unless acked), no acked record (except the one in flight, and the delivery
that emptied the queue until the next append or ack returned), nothing corrupt, no duplicate,
and new ids must never repeat one seen before.
"""
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time

from peers import MICROPYTHON, ROOT, mp_env

SCRIPT = os.path.join(ROOT, "host_tests", "system", "mp", "outbox_writer.py")
ENV = mp_env()
TRIALS = 150
T0 = 1800000000


def _run(root, first, kill_after=None, from_ready=False, script=SCRIPT):
    """One life of the writer: to the end of its check, or SIGKILLed `kill_after` seconds
    after its start or, with from_ready, after it said READY (inside the write loop however
    long the start took on a busy machine)."""
    assert os.path.exists(MICROPYTHON), "micropython binary missing: run make deps"
    args = [MICROPYTHON, script, root, str(first)] + ([] if kill_after else ["check"])
    p = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    if kill_after is None:
        out, _ = p.communicate(timeout=30)
        assert p.returncode == 0, out[-500:]
        return out.decode(errors="replace").splitlines()
    head = b""
    # os.read, not p.stdout's reads: communicate() below reads the fd itself and would miss
    # what a buffered reader had taken ahead
    while from_ready and b"\nREADY" not in b"\n" + head:
        chunk = os.read(p.stdout.fileno(), 65536)
        if not chunk:
            break  # ended before READY: the assertion below says so
        head += chunk
    time.sleep(kill_after)  # the random moment of the kill, not a wait for something
    p.send_signal(signal.SIGKILL)
    out, _ = p.communicate(timeout=30)
    out = head + out
    assert p.returncode == -signal.SIGKILL, "writer ended by itself: %r" % out[-500:]
    return out.decode(errors="replace").splitlines()


def _check(lines, appended, acked, seen):
    """The reopened dump against everything earlier lives reported as returned."""
    pend = {}
    ready = False
    for ln in lines:
        if ln.startswith("READY"):
            ready = True
            break
        if ln.startswith("P "):
            _, mid, src, value, t = ln.split(" ")
            assert mid not in pend, "duplicate pending %s" % mid
            i = int(src)
            assert (value, int(t)) == ("v%d" % i, T0 + i), "corrupt record %s" % ln
            if mid in appended:
                assert appended[mid] == i, "record %s changed: %s" % (mid, ln)
            else:
                assert mid not in seen, "unknown old id %s" % mid
            pend[mid] = i
    if not ready:
        return None  # killed before the dump ended: the next life checks again
    for mid in appended:
        assert mid in pend or mid in acked, "record %s lost" % mid
    for mid in acked:
        assert mid not in pend or acked[mid] in ("inflight", "soft"), "acked %s pending again" % mid
    return pend


def _harden(acked):
    for mid, how in acked.items():
        if how == "soft":
            acked[mid] = "done"


def _life(lines, appended, acked, seen):
    """Book what this life reported as returned; the index the next life starts from."""
    nxt = 0
    after = False
    for ln in lines:
        if ln.startswith("READY"):
            after = True
        elif after and ln.startswith("A "):
            _, mid, i = ln.split(" ")
            _harden(acked)  # the append returned: it carried the queue-emptying delivery
            assert mid not in seen, "id %s handed out twice" % mid
            seen.add(mid)
            appended[mid] = int(i)
            nxt = max(nxt, int(i) + 2)  # +2: an append killed before its line used i + 1
        elif after and ln.startswith("d "):
            acked[ln.split(" ")[1]] = "inflight"  # may land or not
        elif after and ln.startswith("D "):
            _harden(acked)  # this ack's index write carried any earlier one
            acked[ln.split(" ")[1]] = "done"
        elif after and ln.startswith("S "):
            _harden(acked)
            acked[ln.split(" ")[1]] = "soft"  # may be the delivery that emptied the queue
    return after, nxt


def test_sigkill_at_random_moments():
    random.seed(int.from_bytes(os.urandom(4), "little"))
    root = tempfile.mkdtemp(prefix="outbox-kill-")
    try:
        appended, acked, seen = {}, {}, set()
        next_i = 0
        checked = in_loop = 0
        for trial in range(TRIALS):
            # one kill in three counts from the start (it may land in the reopen and dump),
            # two from READY, so at least two thirds land in the write loop even when a busy
            # machine makes the start slow
            lines = _run(root, next_i, kill_after=random.uniform(0.005, 0.15),
                         from_ready=trial % 3 != 0)
            pend = _check(lines, appended, acked, seen)
            if pend is not None:  # the reopened outbox is the truth from here on
                checked += 1
                seen.update(pend)
                appended = dict(pend)
                acked = {}
            after, nxt = _life(lines, appended, acked, seen)
            in_loop += after
            next_i = max(next_i, nxt)
        final = _check(_run(root, next_i), appended, acked, seen)
        assert final is not None
        print("sigkill trials: %d, reopen dumps checked: %d, killed in the write loop: %d, "
              "ids seen: %d"
              % (TRIALS, checked + 1, in_loop, len(seen)))
        assert in_loop >= TRIALS // 2, "kills mostly missed the write loop"
    finally:
        shutil.rmtree(root)
