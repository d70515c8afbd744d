"""Steady-state heap cost of the setup/visibility work (issue 16): the firmware, from .py
sources on the unix port (-X heapsize=512K), against the local Realer cloud over HTTPS, 30 s
per run; the median `free=` of the status lines after the first ~10 s. Runs a base revision
(`git archive REV`) and the working tree alternately, twice each, in one invocation.

    .venv/bin/python bench/setup_heap.py [--base 947be03]
"""
import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tools import run_local  # noqa: E402


def run(tree, work):
    shutil.rmtree(work, ignore_errors=True)
    proc, cloud = run_local.start_cloud(os.path.join(work, "cloud"))
    device = os.path.join(work, "device")
    run_local.write_device(device, cloud)
    env = dict(run_local.firmware_env(device), MICROPYPATH=tree + ":" + tree + "/lib:.frozen")
    with open(os.path.join(work, "log"), "wb") as log:
        fw = subprocess.Popen([run_local.MICROPYTHON, "-X", "heapsize=512K",
                               os.path.join(tree, "main.py")], cwd=tree, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
        time.sleep(30)  # a fixed measuring window, not a synchronisation
        for p in (fw, proc):
            p.send_signal(signal.SIGINT)
            p.wait(10)
    with open(os.path.join(work, "log")) as f:
        frees = [int(x) for x in re.findall(r"free=(\d+)", f.read())]
    return statistics.median(frees[5:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="947be03")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="setup-heap-")
    base = os.path.join(tmp, "base")
    os.makedirs(base)
    archive = subprocess.run(["git", "-C", ROOT, "archive", a.base, "firmware", "main.py",
                              "boot.py"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", base], input=archive, check=True)
    for i in range(2):
        for tag, tree in (("base %s" % a.base, base), ("working tree", ROOT)):
            print("%-20s run %d: median free %d bytes" % (tag, i + 1,
                                                          run(tree, os.path.join(tmp, "w"))),
                  flush=True)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
