"""`make wifi PORT=... SSID=...` against the virtual board: a board whose config lacks its
secrets file waits for Wi-Fi on the serial port (Improv Wi-Fi), still gives the REPL to
mpremote's Ctrl-C, takes the settings from tools/improv.py, saves them in secrets.json
(never printing the password) and restarts into the app."""
import json
import os
import shutil

from test_deploy import ROOT, Board, _closed_port, make

from tools import deploy as deploytool
from tools.pki import make_certs


def _install(board, tmp):
    """The firmware as sources (what `make deploy ARCH=` gives, minus compiling), a CA and a
    config whose secrets file is not there yet."""
    shutil.copytree(os.path.join(ROOT, "firmware"), os.path.join(board.root, "firmware"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("boot.py", "main.py"):
        shutil.copy(os.path.join(ROOT, f), board.root)
    shutil.copy(make_certs(os.path.join(tmp, "pki"))["ca"], os.path.join(board.root, "ca.pem"))
    cfg = {"cloud": {"platform": "realer", "api_url": "https://127.0.0.1:%d" % _closed_port(),
                     "device_id": 4242, "client_id": "cdv_local", "client_secret": "improv-cs-1",
                     "ca_file": "ca.pem"},
           "board": "sim", "sensors": [{"id": 7, "interval_s": 1}],
           "intervals": {"status_s": 1}, "secrets_file": "secrets.json"}
    with open(os.path.join(board.root, "config.json"), "w") as f:
        json.dump(cfg, f)


def test_make_wifi_provisions_a_waiting_virtual_board(tmp_path):
    board = Board(str(tmp_path))
    try:
        _install(board, str(tmp_path))
        deploytool.mpremote(board.port, "reset", timeout=30)
        board.read_console(r"secrets_file: 'secrets.json' not found[\s\S]*waiting for Wi-Fi "
                           r"settings on this serial port")
        # Ctrl-C still reaches the REPL while the board listens for Improv packets
        assert "repl ok" in board.exec("print('repl ok')")
        deploytool.mpremote(board.port, "reset", timeout=30)
        board.read_console(r"waiting for Wi-Fi settings")

        password = "hunter2-improv-pw"
        rc, out, err = make("wifi", "PORT=" + board.port, "SSID=HomeNet",
                            "PASSWORD=" + password, timeout=120)
        assert rc == 0, out + err
        assert "wifi: board on %s is ready (authorized)" % board.port in out, out
        assert "wifi: esp32-iot-firmware 1 on linux, device 4242" in out, out
        assert "wifi: sending the settings for HomeNet" in out
        assert "wifi: done; the board joined HomeNet" in out, out
        assert password not in out + err
        with open(os.path.join(board.root, "secrets.json")) as f:
            assert json.load(f) == {"wifi": {"ssid": "HomeNet", "password": password}}
        # the board restarted by itself into the app (its first lines went to make wifi)
        assert "  board: " in out and "I improv: configured; restarting" in out, out
        # the app runs and tries Realer's token endpoint (nothing listens there): read from
        # its status line, which comes every second; the lines logged once at its start
        # ("I app: starting", the first "W app: uplink") may have gone to make wifi's
        # connection or been dropped when it closed the port, depending on the machine's load
        console = board.read_console(r"I status: readings=\d+ .* error=ConnectError\(POST_"
                                     r"/oauth/token:_connection_refused\)", timeout=30).string
        assert password not in console
    finally:
        board.stop()


def test_make_wifi_names_what_is_missing(tmp_path):
    rc, out, err = make("wifi", "PORT=/dev/null")
    assert rc == 2 and "set SSID=network-name" in out + err
    board = Board(str(tmp_path))  # nothing installed: a bare REPL, no Improv service
    try:
        rc, out, err = make("wifi", "PORT=" + board.port, "SSID=x", "PASSWORD=y", timeout=60)
        assert rc != 0  # make's own 2 for a failed recipe
        assert "no Improv answer on the port within 15 s" in err, out + err
    finally:
        board.stop()
