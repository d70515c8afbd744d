"""docs/ota.md's flow on the virtual board: `make ota-keygen`, a signed bundle and its
manifest, `make ota-serve` (HTTPS with a local CA), `make provision` sending the config, the
server's CA and the public key; the board downloads with progress in its log, verifies,
unpacks, resets and boots the new version on trial."""
import os
import shutil
import signal
import subprocess
import sys

from test_deploy import ROOT, Board, _closed_port, _config, make
from test_improv_wifi import _install

from tools import ota_tool


def test_ota_serve_updates_the_virtual_board(tmp_path):
    tmp = str(tmp_path)
    keys = os.path.join(tmp, "keys")
    rc, out, err = make("ota-keygen", "OTA_KEYS=" + keys)
    assert rc == 0, out + err
    serve_dir = os.path.join(tmp, "serve")
    os.makedirs(serve_dir)
    bundle = os.path.join(serve_dir, "bundle-2.0.bin")
    # plain bytecode (no -march) so the unix port can import it; a board uses xtensawin
    assert ota_tool.main(["build", "--version", "2.0", "--key",
                          os.path.join(keys, "ota_signing_key.pem"), "--out", bundle,
                          "--src", "firmware", "--root", ROOT, "--march", ""]) in (0, None)
    assert ota_tool.main(["manifest", "--bundle", bundle, "--url", "bundle-2.0.bin",
                          "--out", os.path.join(serve_dir, "manifest.json")]) in (0, None)

    server = subprocess.Popen([sys.executable, "-m", "tools.ota_serve", "--dir", serve_dir,
                               "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    board = Board(tmp)
    try:
        first = server.stdout.readline()
        assert first.startswith("ota-serve: https://127.0.0.1:"), first + server.stdout.read()
        url = first.split()[1]
        ca_line = server.stdout.readline()
        assert "the board trusts " in ca_line, ca_line
        ca = ca_line.split("the board trusts ")[1].split(":")[0]

        _install(board, tmp)  # the factory firmware (sources), as `make deploy ARCH=` leaves it
        cfg = _config(tmp, _closed_port(), ota={"manifest_url": url, "ca_file": "ota_ca.pem",
                                                "interval_s": 60})
        shutil.copy(ca, os.path.join(os.path.dirname(cfg), "ota_ca.pem"))
        rc, out, err = make("provision", "PORT=" + board.port, "CONFIG=" + cfg,
                            "OTA_KEYS=" + keys, timeout=120)
        assert rc == 0, out + err
        for name in ("ota_ca.pem", "ota_public_key.bin", "secrets.json"):
            assert "  copied  %s" % name in out, out
        with open(os.path.join(board.root, "ota_public_key.bin"), "rb") as f, \
                open(os.path.join(keys, "ota_public_key.bin"), "rb") as g:
            assert f.read() == g.read()

        log = board.read_console(
            r"downloading %s/bundle-2.0.bin[\s\S]*download: \d+ KB so far[\s\S]*"
            r"bundle 2.0: signature and hashes check out; unpacking[\s\S]*unpack: 10 files"
            r"[\s\S]*unpack: done, \d+ files[\s\S]*update 2.0 in slot a, on trial at the next "
            r"boot[\s\S]*boot: trial boot 1/2 of 2.0[\s\S]*I app: starting" % url.rsplit(
                "/", 1)[0], timeout=120)
        assert "W " not in log.group(0).split("boot: trial boot")[0].split("downloading")[1]
        print(log.group(0))  # the transcript docs/ota.md shows
    finally:
        board.stop()
        server.send_signal(signal.SIGINT)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    served = server.stdout.read()
    assert '"GET /manifest.json HTTP/1.1" 200' in served, served
    assert '"GET /bundle-2.0.bin HTTP/1.1" 200' in served, served
