"""Time one Ed25519 verify: firmware/ota/ed25519.py on the MicroPython unix port (and on CPython)
against the `cryptography` package (OpenSSL) as the baseline, in one invocation.

    .venv/bin/python bench/ed25519_verify.py [--runs N]

Keys and signatures come from `cryptography`; the MicroPython side runs in a subprocess that
times each verify with time.ticks_us() and reports the median, so interpreter start-up is not
counted. "first" is the first verify in a fresh process (it also builds the cached table of
multiples of B). Results go to stdout as a Markdown table for bench/ed25519.md.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "host_tests", "shims")]
MICROPYTHON = os.path.join(ROOT, ".venv", "bin", "micropython")
MP_PATH = ":".join([ROOT, os.path.join(ROOT, "host_tests", "shims"), os.path.join(ROOT, "lib")])

MP_SCRIPT = """
import json, sys, time
from firmware.ota import ed25519
cases = json.loads(sys.stdin.read())
runs = cases.pop()
out = []
for pk, msg, sig in cases:
    pk, msg, sig = bytes.fromhex(pk), bytes.fromhex(msg), bytes.fromhex(sig)
    times = []
    for _ in range(runs):
        t = time.ticks_us()
        ok = ed25519.verify(pk, msg, sig)
        times.append(time.ticks_diff(time.ticks_us(), t))
        if not ok:
            raise SystemExit("verify failed")
    first = times[0]
    times.sort()
    out.append([first, times[len(times) // 2]])
print(json.dumps(out))
"""


def cases():
    key = Ed25519PrivateKey.generate()
    pk = key.public_key().public_bytes(serialization.Encoding.Raw,
                                       serialization.PublicFormat.Raw)
    out = []
    for size in (2, 1024):
        msg = os.urandom(size)
        out.append((size, key, pk, msg, key.sign(msg)))
    return out


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def median_us(runs, fn, *args):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(*args)
        times.append((time.perf_counter() - t) * 1e6)
    return statistics.median(times)


def run_micropython(data, runs, heap):
    payload = json.dumps([[pk.hex(), msg.hex(), sig.hex()] for _, _, pk, msg, sig in data]
                         + [runs])
    done = subprocess.run([MICROPYTHON, "-X", "heapsize=" + heap, "-c", MP_SCRIPT],
                          input=payload, capture_output=True, text=True,
                          env=dict(os.environ, MICROPYPATH=MP_PATH), timeout=600)
    if done.returncode:
        raise SystemExit("micropython failed: " + done.stdout + done.stderr)
    return json.loads(done.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    from firmware.ota import ed25519

    data = cases()
    mp = run_micropython(data, args.runs, "2M")
    mp64 = run_micropython(data, args.runs, "64K")
    print("machine: %s, %d cores, %s; %s; CPython %s; runs %d (median)"
          % (platform.machine(), os.cpu_count(), cpu_name(),
             datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
             platform.python_version(), args.runs))
    print()
    print("| message | cryptography (OpenSSL) | firmware on CPython | micropython 2M heap "
          "(first) | micropython 64K heap | micropython / OpenSSL |")
    print("|---|---|---|---|---|---|")
    for (size, key, pk, msg, sig), (first, med), (_, med64) in zip(data, mp, mp64):
        base = median_us(args.runs * 20, key.public_key().verify, sig, msg)
        fw = median_us(args.runs, ed25519.verify, pk, msg, sig)
        print("| %d B | %.0f us | %.2f ms | %.2f ms (%.2f ms) | %.2f ms | %.0fx |"
              % (size, base, fw / 1000, med / 1000, first / 1000, med64 / 1000,
                 med / base))


if __name__ == "__main__":
    main()
