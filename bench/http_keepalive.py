"""Benchmark: TLS handshakes and time per 100 HTTPS requests, keep-alive vs new connection
per request (the urequests pattern), both with firmware.net.http on the MicroPython unix port
against the same local TLS server in the same run. Prints a Markdown table row set.

    .venv/bin/python bench/http_keepalive.py [N]
"""
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "host_tests", "system"), ROOT]

import peers  # noqa: E402
from certs import make_certs  # noqa: E402
from test_http_client import Server  # noqa: E402

HEAPS = ("128K", "96K", "80K", "64K", "56K", "48K", "40K", "32K")


def compiled_tree():
    """firmware/ compiled with mpy-cross into a temp dir, as it is deployed to a board:
    importing .py source costs the compiler's RAM, which a board never pays."""
    out = tempfile.mkdtemp()
    mpy_cross = os.path.join(os.path.dirname(peers.MICROPYTHON), "mpy-cross")
    for dirpath, _, files in os.walk(os.path.join(ROOT, "firmware")):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, name), ROOT)
                dst = os.path.join(out, rel[:-3] + ".mpy")
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                subprocess.run([mpy_cross, "-o", dst, os.path.join(ROOT, rel)], check=True)
    return out


def mp(url, ca, n, heap=None, *extra, tree=None):
    cmd = [peers.MICROPYTHON] + (["-X", "heapsize=" + heap] if heap else [])
    env = peers.mp_env()
    if tree:
        env["MICROPYPATH"] = env["MICROPYPATH"].replace(ROOT + ":", tree + ":", 1)
    return subprocess.run(cmd + [os.path.join(ROOT, "bench", "http_keepalive_mp.py"),
                                 url, ca, str(n)] + list(extra), capture_output=True,
                          text=True, env=env, cwd="/", timeout=600)


def smallest_heap(url, ca, n, tree=None):
    smallest = None
    for heap in HEAPS:  # the smallest -X heapsize that still completes every request
        if mp(url, ca, n, heap, "keepalive-only", tree=tree).returncode:
            break
        smallest = heap
    return smallest


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    pki = make_certs(tempfile.mkdtemp())
    server = Server(pki)
    try:
        url = "https://localhost:%d/echo" % server.port
        proc = mp(url, pki["ca"], n)
        heap_src = smallest_heap(url, pki["ca"], n)
        heap_mpy = smallest_heap(url, pki["ca"], n, compiled_tree())
    finally:
        server.stop()
    if proc.returncode:
        sys.exit(proc.stdout + proc.stderr)
    rows = {}
    for line in proc.stdout.split("\n"):
        if line:
            name, *kv = line.split()
            rows[name] = dict(x.split("=") for x in kv)
    k, p = rows["keepalive"], rows["per_request"]
    print("machine: %s, %d cores, %s" % (platform.machine(), os.cpu_count(),
                                          time.strftime("%Y-%m-%d")))
    print("| client | requests | TLS handshakes | total ms | ms/request |")
    print("|---|---|---|---|---|")
    for name, r in (("firmware.net.http keep-alive", k), ("new connection per request", p)):
        print("| %s | %d | %s | %s | %.1f |" % (name, n, r["handshakes"], r["ms"],
                                                int(r["ms"]) / n))
    print("\nspeed-up %.1fx, handshakes %s vs %s" % (int(p["ms"]) / int(k["ms"]),
                                                   k["handshakes"], p["handshakes"]))
    print("smallest -X heapsize completing %d keep-alive HTTPS requests (tried %s): "
          "%s importing .py source, %s importing mpy-cross .mpy" % (n, ", ".join(HEAPS),
                                                                    heap_src, heap_mpy))


if __name__ == "__main__":
    main()
