# Power-cut harness for an OTA app update on vfs.VfsLfs2 over a RAM block device (MicroPython).
# Usage: micropython ota_powercut.py SPEC count           -> {"writes": N, ...}
#        micropython ota_powercut.py SPEC K_FIRST K_LAST  -> a line per bad k, then "tried"
# SPEC (JSON file): {"bundle": path of the signed 2.0 bundle, "pub": hex key,
#                    "old": {path: text} (version 1.0, confirmed in slot a), "new": {path:
#                    sha256 hex} (the bundle's files)}.
#
# One "life": the 1.0 board downloads the bundle to ota/download.bin in 1 KB writes, installs
# it (verify, unpack into slot b, switch), makes its first trial boot and confirms. Every block
# program and erase counts as one write; with a cut at k, write k+1 is torn and it and every
# later write fail with EIO (the power is gone). Then a fresh VfsLfs2 is mounted on the RAM and
# the board boots: slots.choose() must name the factory app or a slot whose files are exactly
# version 1.0 or exactly 2.0 (the version the state file says), never anything else; and the
# update, tried again from the start, must complete.
import gc
import hashlib
import json
import sys

import vfs

from firmware.ota import slots, updater

BS = 4096
NBLOCKS = 64
ROOT = "/flash"


class CutDevice:
    def __init__(self, ram, cut=0):
        self.ram = ram
        self.cut = cut  # 0: never
        self.writes = 0

    def readblocks(self, n, buf, off=0):
        start = n * BS + off
        buf[:] = self.ram[start:start + len(buf)]

    def _land(self, start, data, n):
        if isinstance(data, int):
            for i in range(start, start + n):
                self.ram[i] = data
        else:
            self.ram[start:start + n] = data[:n]

    def _power(self, start, data, size):
        self.writes += 1
        if self.cut and self.writes > self.cut:
            if self.writes == self.cut + 1:  # the torn write: half of it lands
                self._land(start, data, size // 2)
            return -5
        self._land(start, data, size)
        return 0

    def writeblocks(self, n, buf, off=None):
        return self._power(n * BS + (off or 0), buf, len(buf))

    def ioctl(self, op, arg):
        if op == 4:
            return NBLOCKS
        if op == 5:
            return BS
        if op == 6:
            return self._power(arg * BS, 0xFF, BS)
        return 0


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def mkdirs(path):
    cut = path.find("/", len(ROOT) + 1)
    while cut > 0:
        try:
            __import__("os").mkdir(path[:cut])
        except OSError:
            pass
        cut = path.find("/", cut + 1)


def template(spec):
    ram = bytearray(b"\xff" * (BS * NBLOCKS))
    dev = CutDevice(ram)
    vfs.VfsLfs2.mkfs(dev)
    vfs.mount(vfs.VfsLfs2(dev), ROOT)
    mkdirs(ROOT + "/firmware/app.py")
    write(ROOT + "/firmware/app.py", b"V = 'factory'\n")
    for path, text in spec["old"].items():
        full = ROOT + "/ota/a/" + path
        mkdirs(full)
        write(full, text.encode())
    slots.stage(ROOT, "a", "1.0")
    slots.confirm(ROOT)
    vfs.umount(ROOT)
    return ram


def life(spec, key):
    u = updater.Updater(ROOT, key, reset=lambda: None)
    dl = ROOT + "/ota/download.bin"
    buf = bytearray(1024)
    with open(spec["bundle"], "rb") as src, open(dl, "wb") as out:
        while True:
            n = src.readinto(buf)
            if not n:
                break
            out.write(buf[:n])
    u.install(dl, "2.0")
    slots.choose(ROOT)
    slots.confirm(ROOT)


def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.digest().hex()


def check(spec, key, ram):
    """Problems found after the cut (empty when the board is sound)."""
    dev = CutDevice(ram)
    try:
        vfs.mount(vfs.VfsLfs2(dev), ROOT)
    except OSError as e:
        return ["remount failed: %r" % e]
    bad = []
    try:
        slot, _ = slots.choose(ROOT)
        if slot is None:
            bad.append("booted the factory app")
        else:
            st = slots.load(ROOT)
            version = st["versions"].get(slot[-1])
            want = {p: hashlib.sha256(t.encode()).digest().hex() for p, t in
                    spec["old"].items()} if version == "1.0" else spec["new"]
            if version not in ("1.0", "2.0"):
                bad.append("slot %s has version %r" % (slot, version))
            for path, h in want.items():
                try:
                    if digest(slot + "/" + path) != h:
                        bad.append("%s %s differs" % (version, path))
                except OSError:
                    bad.append("%s %s missing" % (version, path))
        if not bad:  # the update, tried again from the start, completes
            if slots.on_trial(ROOT) is None and slots.running_version(ROOT) == "1.0":
                life(spec, key)
            elif slots.on_trial(ROOT):
                slots.confirm(ROOT)
            if slots.running_version(ROOT) != "2.0":
                bad.append("update did not complete after the cut: %r" % slots.load(ROOT))
    except Exception as e:
        bad.append("after the cut: %r" % e)
    try:
        vfs.umount(ROOT)
    except OSError:
        pass
    return bad


def run(tmpl, ram, spec, key, cut):
    ram[:] = tmpl
    dev = CutDevice(ram, cut)
    vfs.mount(vfs.VfsLfs2(dev), ROOT)
    done = False
    try:
        life(spec, key)
        done = True
    except Exception:  # the power cut: the first failing call ends this life
        pass
    try:
        vfs.umount(ROOT)
    except Exception:
        pass
    return dev.writes, done


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    key = bytes.fromhex(spec["pub"])
    tmpl = template(spec)
    ram = bytearray(len(tmpl))
    if sys.argv[2] == "count":
        writes, done = run(tmpl, ram, spec, key, 0)
        print(json.dumps({"writes": writes, "done": done, "bad": check(spec, key, ram)}))
        return
    first, last = int(sys.argv[2]), int(sys.argv[3])
    tried = 0
    for k in range(first, last + 1):
        run(tmpl, ram, spec, key, k)
        bad = check(spec, key, ram)
        tried += 1
        gc.collect()
        if bad:
            print(json.dumps({"k": k, "bad": bad[:5]}))
    print(json.dumps({"tried": tried, "first": first, "last": last}))


main()
