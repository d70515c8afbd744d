"""`make build`, `make deploy`, `make provision` and `make console` end to end, against the
virtual board (tools/virtual_board.py: the MicroPython unix port behind a pty that mpremote
drives like a USB serial port; its filesystem is a temp dir). Deploys use ARCH= (plain
bytecode) so the .mpy files import on the unix port, and a private BUILD_DIR."""
import filecmp
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tools import build as buildtool
from tools import deploy as deploytool
from tools.pki import make_certs

ROOT = buildtool.ROOT
MICROPYTHON = os.path.join(ROOT, ".venv", "bin", "micropython")
FIRMWARE_PY = buildtool.sources()


def _need(path, what):
    if not os.path.exists(path):
        raise AssertionError("%s missing at %s: run `make deps`" % (what, path))


def _make_env():
    # run under `make test`, the parent's MAKEFLAGS would carry its variables into these
    return {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS",
                                                             "MAKELEVEL")}


def make(*args, timeout=60):
    proc = subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, env=_make_env(),
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


class Board:
    """A virtual board process; `read_console()` reads what it printed while nobody was
    connected (the pty keeps it, like a terminal that was left open)."""

    def __init__(self, tmp):
        _need(MICROPYTHON, "MicroPython unix port")
        _need(deploytool.MPREMOTE, "mpremote")
        self.root = os.path.join(tmp, "board")
        os.makedirs(self.root)
        self.proc = subprocess.Popen([sys.executable, "-m", "tools.virtual_board", "--root",
                                      self.root], cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        first = self.proc.stdout.readline()
        if not first.startswith("port: "):
            self.proc.kill()
            raise AssertionError("virtual board did not start: %r %s" % (
                first, self.proc.stdout.read()))
        self.port = first.split()[1]

    def files(self):
        found = {}
        for dirpath, _, names in os.walk(self.root):
            for n in names:
                p = os.path.join(dirpath, n)
                found[os.path.relpath(p, self.root)] = p
        return found

    def exec(self, code):
        return deploytool.mpremote(self.port, "exec", code, timeout=30)

    def read_console(self, pattern, timeout=20):
        """Open the port as a terminal would and read until `pattern` shows up."""
        fd = os.open(self.port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        seen = b""
        try:
            end = time.time() + timeout
            while time.time() < end:
                ready, _, _ = select.select([fd], [], [], 0.2)
                if ready:
                    seen += os.read(fd, 4096)
                    m = re.search(pattern, seen.decode(errors="replace"))
                    if m:
                        return m
        finally:
            os.close(fd)
        raise AssertionError("board never printed %r; got:\n%s" % (
            pattern, seen.decode(errors="replace")[-2000:]))

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def board(tmp_path):
    b = Board(str(tmp_path))
    yield b
    b.stop()


def _config(tmp, api_port, secrets=None, **changes):
    """A Realer config for the sim board pointing at a port nothing listens on, with its CA
    and its secrets.json (examples/, placeholders filled in, no Wi-Fi: the host's network)."""
    d = os.path.join(tmp, "provision")
    certs = make_certs(os.path.join(tmp, "pki"))
    os.makedirs(d, exist_ok=True)
    shutil.copy(certs["ca"], os.path.join(d, "ca.pem"))
    with open(os.path.join(ROOT, "examples", "config.realer.json")) as f:
        cfg = json.load(f)
    cfg["cloud"]["api_url"] = "https://127.0.0.1:%d" % api_port
    cfg["cloud"]["client_id"] = "cdv_local-test-client"
    cfg["intervals"] = {"catalog_poll_s": 1, "status_s": 1}
    cfg["sensors"][0]["interval_s"] = 1
    cfg.update(changes)
    with open(os.path.join(d, "secrets.json"), "w") as f:
        json.dump(secrets or {"cloud": {"client_secret": "local-test-secret"}}, f)
    path = os.path.join(d, "config.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


def _closed_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: connections are refused


def test_build_compiles_every_module_reports_sizes_and_is_incremental(tmp_path):
    out = str(tmp_path / "xtensawin")
    rc, stdout, stderr = make("build", "ARCH=xtensawin", "BUILD_DIR=" + out)
    assert rc == 0, stderr
    for rel in FIRMWARE_PY:
        mpy = os.path.join(out, rel[:-3] + ".mpy")
        with open(mpy, "rb") as f:
            assert f.read(2) == b"M\x06", rel  # .mpy v6, what MicroPython 1.29 loads
    for rel in buildtool.AS_SOURCE:
        assert filecmp.cmp(os.path.join(ROOT, rel), os.path.join(out, rel), shallow=False)
    sizes = {}
    for dirpath, _, names in os.walk(out):
        for n in names:
            if not n.startswith(".build"):
                d = os.path.relpath(dirpath, out)
                sizes[d] = sizes.get(d, 0) + os.path.getsize(os.path.join(dirpath, n))
    total = re.search(r"total\s+(\d+) files\s+(\d+) bytes", stdout)
    assert total and int(total.group(2)) == sum(sizes.values()), stdout
    assert int(total.group(1)) == len(FIRMWARE_PY) + len(buildtool.AS_SOURCE)
    for d, size in sizes.items():  # one line per directory with its bytes
        name = "./" if d == "." else d + "/"
        assert re.search(r"^  %s\s+\d+ files\s+%d bytes$" % (re.escape(name), size), stdout,
                         re.M), (d, stdout)
    assert "%d compiled" % len(FIRMWARE_PY) in stdout
    rc, stdout, _ = make("build", "ARCH=xtensawin", "BUILD_DIR=" + out)
    assert rc == 0
    assert re.search(r"0 compiled, 0 copied, %d unchanged" % (
        len(FIRMWARE_PY) + len(buildtool.AS_SOURCE)), stdout), stdout


def test_build_recompiles_only_what_changed_and_drops_deleted_modules(tmp_path):
    src = str(tmp_path / "src")
    for rel in ("firmware", "lib"):
        shutil.copytree(os.path.join(ROOT, rel), os.path.join(src, rel),
                        ignore=shutil.ignore_patterns("__pycache__"))
    for rel in buildtool.AS_SOURCE:
        shutil.copy(os.path.join(ROOT, rel), src)
    out = str(tmp_path / "out")
    first = buildtool.build(out, "xtensawin", root=src)
    assert len(first["compiled"]) == len(FIRMWARE_PY) and first["unchanged"] == 0
    with open(os.path.join(src, "firmware", "backoff.py"), "a") as f:
        f.write("\n_EXTRA = 1\n")
    os.remove(os.path.join(src, "firmware", "desired.py"))
    with open(os.path.join(src, "main.py"), "a") as f:
        f.write("\n# changed\n")
    second = buildtool.build(out, "xtensawin", root=src)
    assert second["compiled"] == ["firmware/backoff.py"]
    assert second["copied"] == ["main.py"]
    assert second["removed"] == ["firmware/desired.mpy"]
    assert not os.path.exists(os.path.join(out, "firmware", "desired.mpy"))
    # another ARCH rebuilds everything (the compiler flags are part of the record)
    third = buildtool.build(out, "", root=src)
    assert len(third["compiled"]) == len(FIRMWARE_PY) - 1
    with open(os.path.join(src, "firmware", "clock.py"), "a") as f:
        f.write("\ndef broken(:\n")
    with pytest.raises(buildtool.BuildError, match="firmware/clock.py"):
        buildtool.build(out, "", root=src)


def test_deploy_provision_console_on_the_virtual_board(board, tmp_path):
    build_dir = str(tmp_path / "build")
    common = ["PORT=" + board.port, "ARCH=", "BUILD_DIR=" + build_dir]

    # first deploy: everything arrives, byte for byte, and the board restarts
    rc, out, err = make("deploy", *common)
    assert rc == 0, out + err
    built = deploytool.local_files(build_dir)
    assert re.search(r"deploy: %d of %d files changed" % (len(built), len(built)), out), out
    on_board = board.files()
    for rel, host in built.items():
        assert rel in on_board, rel
        assert filecmp.cmp(host, on_board[rel], shallow=False), rel

    # nothing changed: nothing copied (`-o build`: deploy that same build, so a source file
    # edited meanwhile in the working tree does not count as a change)
    rc, out, err = make("-o", "build", "deploy", *common)
    assert rc == 0, out + err
    assert "deploy: 0 of %d files changed (0 bytes copied)" % len(built) in out, out
    assert "copied " not in out

    # a file damaged on the board, a stale module and a .py shadowing a deployed .mpy
    with open(os.path.join(board.root, "firmware", "log.mpy"), "r+b") as f:
        f.truncate(10)
    for stale in ("firmware/gone.mpy", "firmware/clock.py"):
        with open(os.path.join(board.root, stale), "w") as f:
            f.write("raise ImportError('stale')\n")
    rc, out, err = make("-o", "build", "deploy", *common)
    assert rc == 0, out + err
    assert "deploy: 1 of %d files changed" % len(built) in out, out
    assert "  copied  firmware/log.mpy" in out and "2 stale removed" in out, out
    on_board = board.files()
    assert "firmware/gone.mpy" not in on_board and "firmware/clock.py" not in on_board
    assert filecmp.cmp(built["firmware/log.mpy"], on_board["firmware/log.mpy"], shallow=False)

    # the deployed .mpy files are what the board imports
    out = board.exec("import firmware.app, firmware.net.http\n"
                     "print(firmware.app.__file__, firmware.net.http.__file__)")
    assert "firmware/app.mpy firmware/net/http.mpy" in out, out

    # a bad config is refused on the host, one line per problem, nothing copied
    cloud_port = _closed_port()
    secret = "hunter2-wifi-password"  # pasted in the wrong place: the problem line shows ***
    bad = _config(str(tmp_path / "bad"), cloud_port, board=secret,
                  secrets={"cloud": {"client_secret": ""},
                           "wifi": {"ssid": "net", "password": secret}})
    with open(bad) as f:
        raw = json.load(f)
    raw["cloud"]["ca_file"] = "missing.pem"
    with open(bad, "w") as f:
        json.dump(raw, f)
    rc, out, err = make("provision", "PORT=" + board.port, "CONFIG=" + bad)
    assert rc != 0
    expected, _ = deploytool.check_config(bad)
    assert len(expected) == 3, expected
    problem_lines = [line for line in err.splitlines() if line in expected]
    assert sorted(problem_lines) == sorted(expected), err
    assert any(line.startswith("cloud.client_secret: missing") for line in problem_lines)
    assert "3 problems in %s; nothing copied" % bad in err
    assert re.search(r"^board: \S*\*\*\*\S* is not a board", err, re.M), err
    assert secret not in out + err
    assert "config.json" not in board.files() and "missing.pem" not in board.files()
    assert "secrets.json" not in board.files()

    # a good config and its CA arrive; the board resets and the firmware starts with them
    good = _config(str(tmp_path / "good"), cloud_port)
    key = os.path.join(os.path.dirname(good), "ota_public_key.bin")
    with open(key, "wb") as f:
        f.write(os.urandom(32))
    rc, out, err = make("provision", "PORT=" + board.port, "CONFIG=" + good)
    assert rc == 0, out + err
    on_board = board.files()
    assert filecmp.cmp(good, on_board["config.json"], shallow=False)
    assert filecmp.cmp(os.path.join(os.path.dirname(good), "ca.pem"), on_board["ca.pem"],
                       shallow=False)
    assert filecmp.cmp(key, on_board["ota_public_key.bin"], shallow=False)
    assert filecmp.cmp(os.path.join(os.path.dirname(good), "secrets.json"),
                       on_board["secrets.json"], shallow=False)
    assert "local-test-secret" not in out + err  # named, never shown
    assert "  copied  secrets.json" in out, out
    board.read_console(r"I app: starting: realer over https, 2 sensors, 2 commands")
    status = board.read_console(r"status: readings=(\d+) delivered=0 pending=(\d+)")
    assert int(status.group(1)) >= 1  # sampling on the board, cloud unreachable: kept

    # make console: the live log, Ctrl-C stops the firmware, the REPL answers, Ctrl-] leaves
    console = Console(board.port)
    try:
        console.expect(r"status: readings=\d+")
        console.send(b"\x03")
        console.expect(r">>> $")
        console.send(b"print(6 * 7)\r")
        console.expect(r"\b42\r?\n")
        console.send(b"\x04")  # Ctrl-D: soft reset, the firmware starts again
        console.expect(r"MPY: soft reboot[\s\S]*I app: starting: realer over https")
        console.send(b"\x1d")
        assert console.wait() == 0
    finally:
        console.close()


class Console:
    """`make console` on its own pty, as a person at a terminal would run it."""

    def __init__(self, port):
        self.fd, slave = pty.openpty()
        self.proc = subprocess.Popen(["make", "--no-print-directory", "console",
                                      "PORT=" + port], cwd=ROOT, env=_make_env(), stdin=slave,
                                     stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        self.seen = ""

    def send(self, data):
        self.seen = ""
        os.write(self.fd, data)

    def expect(self, pattern, timeout=15):
        end = time.time() + timeout
        while time.time() < end:
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                try:
                    self.seen += os.read(self.fd, 4096).decode(errors="replace")
                except OSError:
                    break
                if re.search(pattern, self.seen, re.M):
                    return
        raise AssertionError("console never showed %r; got:\n%s" % (pattern,
                                                                     self.seen[-2000:]))

    def wait(self, timeout=10):
        return self.proc.wait(timeout)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.fd)


def test_plan_copies_what_differs_and_removes_only_what_the_build_owns(tmp_path):
    build = tmp_path / "build"
    (build / "firmware").mkdir(parents=True)
    (build / "lib").mkdir()
    for rel, text in (("firmware/app.mpy", b"new app"), ("firmware/log.mpy", b"log"),
                      ("lib/pkg.mpy", b"pkg"), ("main.py", b"main"), ("boot.py", b"boot")):
        (build / rel).write_bytes(text)
    local = deploytool.local_files(str(build))
    same = {p: deploytool.sha256_file(h) for p, h in local.items()}
    board_hashes = dict(same, **{"firmware/app.mpy": "0" * 64, "main.py": None})
    board_files = ["firmware/app.mpy", "firmware/log.mpy", "firmware/old.mpy",
                   "firmware/log.py", "lib/pkg.py", "lib/theirs.py", "lib/pkg.mpy"]
    copy, remove = deploytool.plan(local, board_hashes, board_files)
    assert copy == ["firmware/app.mpy", "main.py"]  # entry points last
    # stale modules in firmware/, and .py files that would shadow a deployed .mpy; a
    # package someone installed in lib/ by hand stays
    assert remove == ["firmware/log.py", "firmware/old.mpy", "lib/pkg.py"]
    assert deploytool.plan(local, same, ["firmware/app.mpy"]) == ([], [])
