"""Benchmark: QoS 1 publish throughput over a slow link, firmware.net.mqtt with an in-flight
window of 1, 8 and 32 vs umqtt.simple 1.3.4 (stop-and-wait), all on the MicroPython unix port
against one local mosquitto behind tools/faultproxy.py in latency mode, in the same run; then
the smallest -X heapsize at which each completes. Prints Markdown.

    .venv/bin/python bench/mqtt_throughput.py [N] [LATENCY_MS_EACH_WAY]

umqtt.simple comes from PyPI: the sdist has no setup.py, so `pip download` cannot take it;
the script reads its URL and sha256 from the PyPI simple index (the JSON form pip uses),
checks the hash against the one pinned here and caches it in build/bench/.
"""
import asyncio
import concurrent.futures
import hashlib
import io
import json
import logging
import os
import platform
import re
import secrets
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "host_tests", "system"), ROOT]

import peers  # noqa: E402

from tools.faultproxy import FaultProxy  # noqa: E402
from tools.mosquitto import Broker  # noqa: E402
from tools.pki import make_certs  # noqa: E402

UMQTT = "micropython-umqtt.simple"
UMQTT_VERSION = "1.3.4"
UMQTT_SHA256 = "b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f"
MP_SCRIPT = os.path.join(ROOT, "bench", "mqtt_throughput_mp.py")
MPY_CROSS = os.path.join(os.path.dirname(peers.MICROPYTHON), "mpy-cross")
USER = "bench"


def fetch_umqtt(cache):
    """Directory holding umqtt/simple.py from the pinned PyPI sdist."""
    out = os.path.join(cache, "umqtt-" + UMQTT_VERSION)
    if os.path.exists(os.path.join(out, "umqtt", "simple.py")):
        return out
    req = urllib.request.Request("https://pypi.org/simple/micropython-umqtt-simple/",
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    index = json.load(urllib.request.urlopen(req, timeout=60))
    name = "%s-%s.tar.gz" % (UMQTT, UMQTT_VERSION)
    entry = [f for f in index["files"] if f["filename"] == name][0]
    data = urllib.request.urlopen(entry["url"], timeout=60).read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != UMQTT_SHA256 or entry["hashes"]["sha256"] != UMQTT_SHA256:
        sys.exit("%s: sha256 %s, expected %s" % (name, digest, UMQTT_SHA256))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.getmember("%s-%s/umqtt/simple.py" % (UMQTT, UMQTT_VERSION))
        source = tar.extractfile(member).read()
    os.makedirs(os.path.join(out, "umqtt"), exist_ok=True)
    with open(os.path.join(out, "umqtt", "simple.py"), "wb") as f:
        f.write(source)
    return out


def compile_into(src_root, rel_dir, out):
    """Every .py under src_root/rel_dir compiled with mpy-cross into out (as on a board)."""
    for dirpath, _, files in os.walk(os.path.join(src_root, rel_dir)):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, name), src_root)
                dst = os.path.join(out, rel[:-3] + ".mpy")
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                subprocess.run([MPY_CROSS, "-o", dst, os.path.join(src_root, rel)], check=True)


def run_mp(script, args, tree=None, heap=None, timeout=300):
    """Run a MicroPython bench script on the compiled tree (None: the .py sources); the
    parsed JSON line it printed, or None when it failed or printed none."""
    env = peers.mp_env()
    if tree:
        env["MICROPYPATH"] = env["MICROPYPATH"].replace(ROOT + ":", tree + ":", 1)
    cmd = [peers.MICROPYTHON] + (["-X", "heapsize=%dK" % heap] if heap else [])
    proc = subprocess.run(cmd + [script] + [str(a) for a in args], capture_output=True,
                          text=True, env=env, cwd="/", timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        if heap is None:
            sys.exit("run %s failed:\n%s%s" % (args, proc.stdout, proc.stderr[-3000:]))
        return None
    return json.loads(lines[-1])


def mp(args, tree, heap=None):
    return run_mp(MP_SCRIPT, args, tree, heap)


def mp_median(args, tree, reps=3):
    """The run with the median time out of `reps` (single runs vary by tens of ms)."""
    runs = sorted((mp(args, tree) for _ in range(reps)), key=lambda r: r["ms"])
    return runs[len(runs) // 2]


# mosquitto with TCP_NODELAY on its sockets (tools/mosquitto.py sets it for every broker). By
# default it leaves Nagle on, so its back-to-back PUBACKs wait for our delayed ACKs: 40 ms
# stalls that made pipelined runs vary (200 publishes straight to the broker: 11 ms with, 55
# ms without)
BenchBroker = Broker


def smallest_heap_of(script, args, tree, lo=4, hi=256):
    """Smallest -X heapsize (KiB, 1 KiB steps) at which the run completes, by bisection
    between a size assumed too small (lo) and one that must work (hi); None if hi fails."""
    if run_mp(script, args, tree, hi) is None:
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if run_mp(script, args, tree, mid) is None:
            lo = mid
        else:
            hi = mid
    return hi


def smallest_heap(args, tree):
    return smallest_heap_of(MP_SCRIPT, args, tree)


class DelayLine:
    """A loopback TCP proxy that delays every byte by `ms` each way without holding back the
    bytes behind it (a queue per direction, each chunk sent when its time comes), like a long
    link. FaultProxy's latency mode instead sleeps before forwarding each chunk it read, so
    the bytes arriving meanwhile wait for the next read and sleep: up to 2 x ms, one chunk per
    ms at most. The bench runs on both."""

    def __init__(self, port, ms):
        self.target, self.delay = port, ms / 1000
        self.port = None
        self.loop = None

    def start_in_thread(self):
        ready = threading.Event()

        def run():
            self.loop = asyncio.new_event_loop()
            server = self.loop.run_until_complete(
                asyncio.start_server(self._client, "127.0.0.1", 0))
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        ready.wait(10)
        return self.port

    def stop(self):
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)

    async def _client(self, creader, cwriter):
        sreader, swriter = await asyncio.open_connection("127.0.0.1", self.target)
        await asyncio.gather(self._pipe(creader, swriter), self._pipe(sreader, cwriter),
                             return_exceptions=True)
        for w in (cwriter, swriter):
            w.close()

    async def _pipe(self, reader, writer):
        queue: asyncio.Queue = asyncio.Queue()

        async def send():
            loop = asyncio.get_running_loop()
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0, due - loop.time()))
                if data is None:
                    writer.close()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(send())
        try:
            while True:
                data = await reader.read(65536)
                queue.put_nowait((asyncio.get_running_loop().time() + self.delay, data or None))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
            cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    mp_version = subprocess.run([peers.MICROPYTHON, "-c", "import sys; print(sys.version)"],
                                capture_output=True, text=True).stdout.strip()
    rev = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                         capture_output=True, text=True).stdout.strip()
    return "%s, %d cores (nproc), %s; MicroPython %s unix port; %s UTC; repo %s" % (
        platform.machine(), os.cpu_count(), cpu, mp_version,
        time.strftime("%Y-%m-%d %H:%M", time.gmtime()), rev)


def configs(port, tls_port, password, n, ca):
    url, tls_url = "mqtt://127.0.0.1:%d" % port, "mqtts://127.0.0.1:%d" % tls_port
    out = [("firmware.net.mqtt window %d" % w, ["ours", url, USER, password, n, w])
           for w in (1, 8, 32)]
    out.append(("umqtt.simple 1.3.4 (stop-and-wait)",
                ["umqtt", "127.0.0.1", port, USER, password, n]))
    out.append(("umqtt.simple 1.3.4 + TCP_NODELAY", ["umqtt", "127.0.0.1", port, USER, password,
                                                     n, "nodelay"]))
    out += [("firmware.net.mqtt TLS window %d" % w, ["ours", tls_url, USER, password, n, w, ca])
            for w in (1, 8, 32)]
    return out


HEAP_ROWS = (0, 2, 3, 7)  # window 1 and 32, the baseline, TLS window 32
TLS_ROW = 5


def table(title, runs, n, heaps=None):
    base_rate = n * 1000 / max(1, runs[3][1]["ms"])
    rtt = runs[0][1]["rtt_ms"]
    print("### %s\n" % title)
    print("QoS 1 round trip (median of 5 single publishes): plain %s ms, TLS %s ms; "
          "ideal stop-and-wait at that RTT: %s messages/s\n" % (
              rtt, runs[TLS_ROW][1]["rtt_ms"], "%.1f" % (1000 / rtt) if rtt else "-"))
    print("| client | QoS 1 messages | ms | messages/s | vs umqtt.simple | smallest heap | "
          "held after import |")
    print("|---|---|---|---|---|---|---|")
    for i, (name, r) in enumerate(runs):
        rate = n * 1000 / max(1, r["ms"])
        heap = (heaps or {}).get(i)
        print("| %s | %d | %d | %.1f | %.2fx | %s | %.1fK |" % (
            name, n, r["ms"], rate, rate / base_rate, ("%dK" % heap) if heap else "-",
            r["imported_alloc"] / 1024))
    print()


ADAPTER_SCRIPT = os.path.join(ROOT, "bench", "mqtt_adapter_mp.py")
ALLOC_SCRIPT = os.path.join(ROOT, "bench", "mqtt_alloc_mp.py")


def tree_at(rev, work):
    """firmware/ at git revision rev, compiled with mpy-cross (the "before" figures)."""
    src = os.path.join(work, "src-" + rev)
    os.makedirs(src, exist_ok=True)
    archive = subprocess.run(["git", "-C", ROOT, "archive", rev, "firmware"], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(src)
    out = os.path.join(work, "tree-" + rev)
    compile_into(src, "firmware", out)
    return out


def adapter_median(cloud, data, tree, n, route_ids, work, tag, reps=3):
    """Median (by time) of `reps` adapter runs, each a fresh device (outbox, boot id)."""
    from tools import realer_cloud, run_local

    realer_cloud.set_knob(data, "route_ids", route_ids)
    runs = []
    for r in range(reps):
        dev = os.path.join(work, "dev-%s-%d" % (tag, r))
        run_local.write_device(dev, cloud, transport="mqtt")
        path = os.path.join(dev, "config.json")
        with open(path) as f:
            cfg = json.load(f)
        cfg["cloud"]["ack_timeout_s"] = 30  # a slow run is measured, not retried
        with open(path, "w") as f:
            json.dump(cfg, f)
        res = run_mp(ADAPTER_SCRIPT, [dev, n], tree, timeout=900)
        if res["left"]:
            sys.exit("adapter run %s left %d records" % (tag, res["left"]))
        runs.append(res)
    runs.sort(key=lambda x: x["ms"])
    return runs[len(runs) // 2]


# 947be03 publishes nothing over MQTT unless the routes name their source ids
NEEDS_ROUTE_IDS = ("947be03",)


def adapter_main(n, latency, befores):
    """The firmware's own path (RealerMqtt + App.uplink, default batch and window) on both
    links vs umqtt.simple on the same kinds of link, in one invocation, now and at each of
    the `befores` revisions; then the heap allocated per publish by firmware.net.mqtt, at
    the first of them and now."""
    before = befores[0]
    from tools import realer_cloud, run_local

    work = tempfile.mkdtemp(prefix="mqtt-adapter-bench-")
    tree = os.path.join(work, "tree")
    compile_into(ROOT, "firmware", tree)
    olds = [tree_at(rev, work) for rev in befores]
    old = olds[0]
    umqtt_dir = fetch_umqtt(os.path.join(ROOT, "build", "bench"))
    compile_into(umqtt_dir, "umqtt", tree)
    password = secrets.token_urlsafe(12)
    broker = BenchBroker(os.path.join(work, "broker"), dynsec=False,
                         users={USER: password}).start()
    data = os.path.join(work, "cloud")
    proc, cloud = run_local.start_cloud(data, token_ttl=3600, mqtt=True, mqtt_cred_ttl=3600)
    cloud_port = int(cloud["mqtt_url"].rsplit(":", 1)[1])
    links = {}
    stoppers = []
    for name in ("delay line", "faultproxy"):
        ports = []
        for target in (broker.port, cloud_port):
            if name == "faultproxy":
                p = FaultProxy("127.0.0.1", target)
                ports.append(p.start_in_thread())
                p.set(mode="latency", ms=latency)
            else:
                p = DelayLine(target, latency)
                ports.append(p.start_in_thread())
            stoppers.append(p)
        links[name] = ports
    results = {}
    try:
        for name, (bport, cport) in links.items():
            base = mp_median(["umqtt", "127.0.0.1", bport, USER, password, n], tree)
            realer_cloud.set_knob(data, "broker_url", "mqtts://127.0.0.1:%d" % cport)
            now = adapter_median(cloud, data, tree, n, False, work, name[0] + "n")
            was = [adapter_median(cloud, data, t, n, rev in NEEDS_ROUTE_IDS, work,
                                  "%sb%d" % (name[0], i))
                   for i, (rev, t) in enumerate(zip(befores, olds))]
            results[name] = (base, now, was)
        alloc = [run_mp(ALLOC_SCRIPT, ["mqtt://127.0.0.1:%d" % broker.port, USER, password,
                                       200], t) for t in (old, tree)]
    finally:
        for p in stoppers:
            p.stop()
        broker.stop()
        proc.kill()
        proc.wait(10)
    print("machine: %s\n" % machine())
    print("### The firmware's MQTT path vs umqtt.simple, %d QoS 1 records, %d ms each way\n"
          % (n, latency))
    print("| link | client | batch | window (broker's cap) | ms | messages/s | "
          "vs umqtt.simple |")
    print("|---|---|---|---|---|---|---|")
    for name, (base, now, was) in results.items():
        base_rate = n * 1000 / max(1, base["ms"])
        print("| %s | umqtt.simple 1.3.4 (stop-and-wait, plain TCP) | 1 | 1 | %d | %.1f | "
              "1.00x |" % (name, base["ms"], base_rate))
        rows = [("RealerMqtt + App.uplink at %s (before)" % rev, r)
                for rev, r in zip(befores, was)]
        for label, r in rows + [("RealerMqtt + App.uplink now", now)]:
            rate = n * 1000 / max(1, r["ms"])
            print("| %s | %s | %d | %d (%d) | %d | %.1f | %.2fx |" % (
                name, label, r["batch"], r["window"], r["send_window"], r["ms"], rate,
                rate / base_rate))
    print("\n### Heap allocated per QoS 1 publish (firmware.net.mqtt, straight to the broker)"
          "\n")
    print("| firmware | bytes allocated per publish (gc off, %d publishes + their PUBACKs) | "
          "encoding one PUBLISH under heap_lock |" % alloc[0]["n"])
    print("|---|---|---|")
    for label, a in (("%s (before)" % before, alloc[0]), ("now", alloc[1])):
        print("| %s | %.0f | %s |" % (label, a["bytes_per_publish"],
                                      "MemoryError (allocates)" if a["encode_allocates"]
                                      else "no allocation"))


def main():
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # the proxy's teardown chatter
    if len(sys.argv) > 1 and sys.argv[1] == "--adapter":
        args = sys.argv[2:]
        before = "947be03"
        if "--before" in args:  # one revision or several, comma-separated
            i = args.index("--before")
            before = args[i + 1]
            del args[i:i + 2]
        return adapter_main(int(args[0]) if args else 500, int(args[1]) if len(args) > 1
                            else 25, before.split(","))
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    latency = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    work = tempfile.mkdtemp(prefix="mqtt-bench-")
    tree = os.path.join(work, "tree")
    compile_into(ROOT, "firmware", tree)
    umqtt_dir = fetch_umqtt(os.path.join(ROOT, "build", "bench"))
    compile_into(umqtt_dir, "umqtt", tree)
    password = secrets.token_urlsafe(12)
    certs = make_certs(os.path.join(work, "certs"))
    broker = BenchBroker(os.path.join(work, "broker"), certs=certs, dynsec=False,
                         users={USER: password}).start()
    proxies = [FaultProxy("127.0.0.1", broker.port), FaultProxy("127.0.0.1", broker.tls_port)]
    ports = [p.start_in_thread() for p in proxies]
    for p in proxies:
        p.set(mode="latency", ms=latency)
    lines = [DelayLine(broker.port, latency), DelayLine(broker.tls_port, latency)]
    line_ports = [d.start_in_thread() for d in lines]
    try:
        fault = configs(ports[0], ports[1], password, n, certs["ca"])
        line = configs(line_ports[0], line_ports[1], password, n, certs["ca"])
        direct = configs(broker.port, broker.tls_port, password, n, certs["ca"])
        fault_runs = [(name, mp_median(args, tree)) for name, args in fault]  # one at a time
        line_runs = [(name, mp_median(args, tree)) for name, args in line]
        direct_runs = [(name, mp_median(args, tree)) for name, args in direct]
        # heap trials only wait on the link, so the bisections run side by side
        with concurrent.futures.ThreadPoolExecutor(len(HEAP_ROWS)) as pool:
            heaps = dict(zip(HEAP_ROWS, pool.map(lambda i: smallest_heap(fault[i][1], tree),
                                                 HEAP_ROWS)))
    finally:
        for p in proxies + lines:
            p.stop()
        broker.stop()
    print("machine: %s\n" % machine())
    table("tools/faultproxy.py, latency %d ms per forwarded chunk each way" % latency,
          fault_runs, n, heaps)
    table("delay line, %d ms each way (bench/mqtt_throughput.py DelayLine)" % latency,
          line_runs, n)
    table("no link: straight to mosquitto on loopback", direct_runs, n)
    print("smallest heap: smallest -X heapsize (1K steps, bisection) completing the same run "
          "on the faultproxy link, modules from mpy-cross .mpy; held after import: "
          "gc.mem_alloc() after gc.collect() once the client module is imported")


if __name__ == "__main__":
    main()
