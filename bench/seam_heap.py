"""Heap the firmware holds once composed: `firmware.app.build()` per platform on two frozen
32-bit images (`make frozen`), a base revision's and this tree's, alternately, in one
invocation. Per platform: the bytes allocated after importing firmware.app, and after
build() (config, board, outbox, adapter, App), each after gc.collect(), at -X heapsize=256K.
The config is the platform's example with its placeholders filled and a sim board (one
sensor, one switch). Deterministic (no network, no clock): one run per image.

    .venv/bin/python bench/seam_heap.py BASE_MICROPYTHON THIS_MICROPYTHON
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
PROBE = """
import gc
gc.collect(); a0 = gc.mem_alloc()
from firmware import app
gc.collect(); a1 = gc.mem_alloc()
a = app.build(%r)
gc.collect(); a2 = gc.mem_alloc()
print("RESULT", a1 - a0, a2 - a0)
"""
EXAMPLES = ("realer", "realer-mqtt", "nubison", "devicehive", "xyte")


def _fill(node):
    if isinstance(node, dict):
        return {k: _fill(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v) for v in node]
    if isinstance(node, str) and "CHANGE-ME" in node:
        return node.replace("CHANGE-ME", "filled-in")
    return node


def _device(name):
    d = tempfile.mkdtemp(prefix="seamheap")
    ex = os.path.join(ROOT, "examples")
    raw = _fill(json.load(open(os.path.join(ex, "config.%s.json" % name))))
    sec = _fill(json.load(open(os.path.join(ex, "secrets.%s.json" % name))))
    raw.update(board="sim", sensors=[{"id": 7, "driver": "sim"}],
               commands=[{"id": 3, "driver": "sim", "kind": "switch"}])
    raw.pop("switches", None)
    json.dump(raw, open(os.path.join(d, "config.json"), "w"))
    json.dump(sec, open(os.path.join(d, raw["secrets_file"]), "w"))
    open(os.path.join(d, raw["cloud"].get("ca_file", "ca.pem")), "w").write(PEM)
    return d


def probe(mp, name):
    d = _device(name)
    try:
        out = subprocess.run([mp, "-X", "heapsize=256K", "-c", PROBE % d], cwd=d,
                             env=dict(os.environ, MICROPYPATH=".frozen", FIRMWARE_ROOT=d),
                             capture_output=True, text=True, timeout=60)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT"):
            return tuple(int(x) for x in line.split()[1:])
    raise SystemExit("%s %s: %s" % (mp, name, (out.stdout + out.stderr)[-600:]))


def main():
    base, this = sys.argv[1], sys.argv[2]
    print("| platform | import app: base | this | build(): base | this | build() delta |")
    print("|---|---|---|---|---|---|")
    for name in EXAMPLES:
        b, t = probe(base, name), probe(this, name)
        print("| %s | %d | %d | %d | %d | %+d |" % (name, b[0], t[0], b[1], t[1], t[1] - b[1]))


if __name__ == "__main__":
    main()
