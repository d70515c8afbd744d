"""`make run` (tools/run_local.py) as a user runs it: one platform after another in the same
run directory, each reaching its live status line, Ctrl-C printing a summary; `--fresh`
(`make run FRESH=1`) starts over only the platform it names."""
import os
import re
import select
import signal
import subprocess
import sys
import time

from tools import realer_cloud, run_local

ROOT = run_local.ROOT


def _make_env():
    return {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS",
                                                             "MAKELEVEL")}


def run_until_status(run_dir, *args, timeout=90, then=None):
    """Start run_local, wait for a live status line (then for `then`: (action, bytes to
    wait for)), Ctrl-C it; returns all it printed."""
    if not os.access(run_local.MICROPYTHON, os.X_OK):
        raise AssertionError("MicroPython unix port missing at %s: run `make deps`"
                             % run_local.MICROPYTHON)
    # started with SIGINT ignored, as from a background shell (and, it turned out, inside
    # `make test`): the Ctrl-C below must stop it all the same
    proc = subprocess.Popen([sys.executable, "-m", "tools.run_local", "--run-dir", run_dir,
                             *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    seen = b""
    try:
        end = time.monotonic() + timeout
        while b"\rreadings=" not in seen:
            if time.monotonic() > end or proc.poll() is not None:
                raise AssertionError("no status line from run_local %s:\n%s" % (
                    " ".join(args), seen.decode(errors="replace")[-3000:]))
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                seen += os.read(proc.stdout.fileno(), 4096)
            if then and b"\rreadings=" in seen:
                then[0]()
                seen, then = seen + b"\n", (None, then[1])
                while then[1] not in seen:
                    if time.monotonic() > end or proc.poll() is not None:
                        raise AssertionError("never showed %r:\n%s" % (
                            then[1], seen.decode(errors="replace")[-3000:]))
                    if select.select([proc.stdout], [], [], 0.5)[0]:
                        seen += os.read(proc.stdout.fileno(), 4096)
                then = None
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
        return (seen + rest).decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_platforms_switch_in_one_run_dir_and_fresh_is_per_platform(tmp_path):
    run_dir = str(tmp_path)
    realer = os.path.join(run_dir, "realer-https")
    desired = (lambda: realer_cloud.set_desired(os.path.join(realer, "cloud"), 4, 42),
               b"I app: command 4 desired des_")
    out = run_until_status(run_dir, "--platform", "realer", then=desired)
    assert "summary: readings " in out and ", uptime " in out, out
    # the applied desired value shows above the status line, which says online
    assert re.search(r"\n\S+ I app: command 4 desired des_\w+: applied\n", out), out
    assert re.search(r"\rreadings=\d+ .* link=online ", out), out
    assert os.path.isfile(os.path.join(realer, "device", "config.json"))
    assert "--data %s" % os.path.relpath(os.path.join(realer, "cloud"), ROOT) in out, out
    # before: both platforms shared run/cloud/cloud.db and this died with
    # sqlite3.OperationalError: no such column
    out = run_until_status(run_dir, "--platform", "xyte")
    assert "OperationalError" not in out and "summary: readings " in out, out
    assert os.path.isfile(os.path.join(run_dir, "xyte", "cloud", "cloud.json"))
    marker = os.path.join(realer, "device", "marker")
    open(marker, "w").close()
    run_until_status(run_dir, "--platform", "realer", "--fresh")
    assert not os.path.exists(marker)  # realer started over ...
    assert os.path.isfile(os.path.join(run_dir, "xyte", "cloud", "cloud.json"))  # xyte kept


def test_make_run_passes_fresh_and_platform():
    out = subprocess.run(["make", "-n", "--no-print-directory", "run", "FRESH=1",
                          "PLATFORM=xyte"], cwd=ROOT, env=_make_env(), capture_output=True,
                         text=True, timeout=30).stdout
    line = [x for x in out.splitlines() if "tools.run_local" in x]
    assert line and "--platform xyte" in line[0] and "--fresh" in line[0], out
    out = subprocess.run(["make", "-n", "--no-print-directory", "run"], cwd=ROOT,
                         env=_make_env(), capture_output=True, text=True, timeout=30).stdout
    assert "--fresh" not in out


def test_summary_and_durations():
    assert run_local.duration(42) == "42 s"
    assert run_local.duration(185) == "3 min 5 s"
    assert run_local.duration(7620) == "2 h 7 min"
    last = run_local.status_fields("readings=12 delivered=15 pending=3 dead=0 free=100")
    assert run_local.summary(last, 65) == \
        "summary: readings 12, delivered 15, pending 3, uptime 1 min 5 s"
    assert run_local.run_name("realer", "mqtt") == "realer-mqtt"
    assert run_local.run_name("xyte", "mqtt") == "xyte"
