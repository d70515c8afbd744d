"""Runs the dual-runtime unit tests on the MicroPython unix port, one process per test file,
`-j` of them at a time (default: one per CPU). Run by CPython: `make unit-mp`.

Why not one process (host_tests/mp_runner.py with no file names): a long-lived MicroPython
heap filled with the earlier files' objects makes every allocation of the later ones pay for a
collection over all of it; the Ed25519 bignum tests then ran 40 times slower (the whole run
took 4-5 minutes instead of about 25 s). A file on its own starts from a fresh heap, as on a
board after a reset.

    python host_tests/mp_parallel.py [-j N] [test_file.py ...]

Prints each failing file's output and one summary line; exit status 1 if anything failed.
"""
import argparse
import concurrent.futures
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MICROPYTHON = os.path.join(ROOT, ".venv", "bin", "micropython")


# A file takes seconds (the slowest about 10 s on a loaded 2-core machine); past this it hangs
# (seen once: test_watchdog.py asleep in poll for minutes beside two busy loops) and fails
# with what it printed instead of stopping make test for good.
FILE_TIMEOUT_S = 300


def run_file(name, micropython=MICROPYTHON, timeout=FILE_TIMEOUT_S):
    """(passed, failed, output) of one test file in its own MicroPython process."""
    env = dict(os.environ)
    env.setdefault("MICROPYPATH", ":".join([ROOT, os.path.join(HERE, "shims"),
                                            os.path.join(ROOT, "lib"), ".frozen"]))  # as make
    try:
        proc = subprocess.run([micropython, os.path.join(HERE, "mp_runner.py"), "-v", name],
                              cwd=ROOT, capture_output=True, text=True, env=env,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout
        return 0, 1, "%s\nhung: killed after %d s" % (out or "", timeout)
    found = re.findall(r"^micropython: (\d+) passed, (\d+) failed$", proc.stdout, re.M)
    passed, failed = (int(found[-1][0]), int(found[-1][1])) if found else (0, 0)
    if proc.returncode != 0 and not failed:
        failed = 1  # a crash or an import error before the summary line
    return passed, failed, proc.stdout + proc.stderr


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-j", type=int, default=os.cpu_count() or 1, help="processes at a time")
    ap.add_argument("files", nargs="*", help="test files (default: host_tests/unit/test_*.py)")
    a = ap.parse_args(argv)
    if not os.access(MICROPYTHON, os.X_OK):
        sys.exit("MicroPython unix port missing at %s (run `make deps`)" % MICROPYTHON)
    files = [os.path.basename(f) for f in a.files] or sorted(
        n for n in os.listdir(os.path.join(HERE, "unit"))
        if n.startswith("test_") and n.endswith(".py"))
    passed = failed = 0
    with concurrent.futures.ThreadPoolExecutor(max(1, a.j)) as pool:
        for name, (p, f, out) in zip(files, pool.map(run_file, files)):
            passed += p
            failed += f
            if f:
                print("=== %s ===\n%s" % (name, out.rstrip()))
    print("micropython: %d passed, %d failed (%d files, one process each)" % (
        passed, failed, len(files)))
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main())
