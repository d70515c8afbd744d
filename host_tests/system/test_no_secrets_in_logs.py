"""The whole firmware as a real MicroPython process never prints a secret: not when its config
is rejected, not while it fails to reach its cloud, not when a server echoes the credentials
back in an error, and not in a crash traceback.

Each run's captured stdout and stderr is searched for every secret of the config, the Basic
form of the client credentials, and a distinctive fragment of each (so a partly redacted
secret also fails). Each test also checks the run reached the code that handles the secret
(the problem line that quoted it, the token request, the crash), so a run that never got
there cannot pass by saying nothing.
"""
import base64
import json
import os
import signal
import socket
import ssl
import subprocess
import threading

import peers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware import log
from tools import pki, run_local

CLIENT_ID = "cdv_nosecretsclientid000000"
CLIENT_SECRET = "Cs-Pangolin-7731-zz"
WIFI_PASSWORD = "Wp-Axolotl-4410-qq"
ACCESS_KEY = "Ak-Quetzal-5521-rr"
BASIC = base64.b64encode(("%s:%s" % (CLIENT_ID, CLIENT_SECRET)).encode()).decode()
# a fragment of each secret that appears nowhere else: a half-redacted secret shows it
FRAGMENTS = ("Pangolin", "Axolotl", "Quetzal", BASIC[4:20])


def assert_no_secret(output):
    for s in (CLIENT_SECRET, WIFI_PASSWORD, ACCESS_KEY, BASIC) + FRAGMENTS:
        assert s not in output, "secret %r leaked:\n%s" % (s, output)


def good_config(api_url, level="debug"):
    return {
        "cloud": {"platform": "realer", "transport": "https", "api_url": api_url,
                  "device_id": 12345, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                  "ca_file": "ca.pem"},
        "board": "sim",
        "sensors": [{"id": 7, "quantity": "temperature", "interval_s": 1}],
        "commands": [{"id": 3, "kind": "switch", "safe_value": 0}],
        "intervals": {"catalog_poll_s": 1, "status_s": 1},
        "log": {"level": level},
        "wifi": {"ssid": "lab", "password": WIFI_PASSWORD},
    }


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return pki.make_certs(str(tmp_path_factory.mktemp("pki")))


def data_root(tmp_path, cfg, certs=None):
    root = str(tmp_path / "device")
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "config.json"), "w") as f:
        json.dump(cfg, f)
    if certs:
        with open(certs["ca"], "rb") as src, open(os.path.join(root, "ca.pem"), "wb") as dst:
            dst.write(src.read())
    return root


def run_firmware_for(root, seconds):
    """main.py under MicroPython for `seconds`, then SIGINT (SIGKILL if it lingers);
    returns stdout + stderr."""
    if not os.path.exists(peers.MICROPYTHON):
        raise AssertionError("MicroPython unix port missing at %s" % peers.MICROPYTHON)
    proc = subprocess.Popen([peers.MICROPYTHON, os.path.join(peers.ROOT, "main.py")],
                            cwd=peers.ROOT, env=run_local.firmware_env(root),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=seconds)
        return out + err  # it stopped by itself
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        return out + err


def test_rejected_config_names_the_problems_not_the_secrets(tmp_path):
    cfg = good_config("ignored")
    # pasted credentials into the URL without a scheme: the problem line quotes the URL
    cfg["cloud"]["api_url"] = "%s:%s@api.therealer.com" % (CLIENT_ID, CLIENT_SECRET)
    cfg["cloud"]["device_id"] = [12345]
    cfg["cloud"]["ca_file"] = "missing-ca.pem"
    cfg["cloud"]["access_key"] = ACCESS_KEY  # not a Realer key: a warning names the key only
    cfg["board"] = "esp32"
    cfg["commands"] = [{"id": 3, "driver": "relay", "pin": 35}]
    cfg["wifi"] = {"password": WIFI_PASSWORD}
    cfg["log"] = {"level": "chatty"}
    root = data_root(tmp_path, cfg)
    out = peers.run_mp(os.path.join(peers.ROOT, "main.py"), env=run_local.firmware_env(root),
                       timeout=30)
    output = out.stdout + out.stderr
    assert_no_secret(output)
    for needle in ("cloud.device_id: must be", "cloud.ca_file: 'missing-ca.pem' not found",
                   "commands[0].pin: GPIO 35 is input-only", "wifi.ssid: missing",
                   "log.level: use one of", "cloud.access_key: unknown key",
                   "app: not starting"):
        assert needle in output, "%r not in:\n%s" % (needle, output)
    # the URL problem is there, and the secret it quoted became ***
    url_lines = [ln for ln in output.splitlines() if "cloud.api_url:" in ln]
    assert len(url_lines) == 1, output
    assert "'%s:***@api.therealer.com' has no scheme" % CLIENT_ID in url_lines[0], url_lines


def test_unreachable_cloud_run_logs_failures_not_secrets(tmp_path, certs):
    port = peers.free_port()  # nothing listens there: every connect is refused
    root = data_root(tmp_path, good_config("https://127.0.0.1:%d" % port), certs)
    output = run_firmware_for(root, 4)
    assert_no_secret(output)
    assert "app: starting: realer over https" in output, output
    refused = [ln for ln in output.splitlines()
               if "POST /oauth/token" in ln and "refused" in ln]
    assert len(refused) >= 3, output  # the token request (the one carrying Basic) was tried


class EchoingServer:
    """TLS on 127.0.0.1 that answers every request 401 with its Authorization header echoed
    in `error.type`, as a careless server might; the firmware puts error.type in its log."""

    def __init__(self, certs):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(certs["server_cert"], certs["server_key"])
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.seen_basic = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw):
        try:
            with self.ctx.wrap_socket(raw, server_side=True) as conn:
                conn.settimeout(5)
                head = b""
                while b"\r\n\r\n" not in head and len(head) < 16384:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                auth = ""
                for line in head.decode("latin-1").split("\r\n"):
                    if line.lower().startswith("authorization:"):
                        auth = line.split(":", 1)[1].strip()
                if auth.startswith("Basic "):
                    self.seen_basic.append(auth[6:])
                body = json.dumps({"code": 4001, "error": {
                    "type": "unauthorized: got %s" % auth, "message": "bad %s" % auth}}).encode()
                conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        except (OSError, ssl.SSLError):
            pass

    def close(self):
        self.closed = True
        self.sock.close()


def test_server_echoing_the_credentials_is_redacted(tmp_path, certs):
    server = EchoingServer(certs)
    try:
        root = data_root(tmp_path, good_config("https://127.0.0.1:%d" % server.port), certs)
        output = run_firmware_for(root, 4)
    finally:
        server.close()
    assert server.seen_basic and set(server.seen_basic) == {BASIC}, server.seen_basic
    assert_no_secret(output)
    echoed = [ln for ln in output.splitlines() if "token request refused: 401" in ln]
    assert echoed, output
    assert all("unauthorized: got Basic ***" in ln for ln in echoed), echoed


def test_crash_traceback_in_a_running_firmware_is_redacted(tmp_path, certs):
    port = peers.free_port()
    root = data_root(tmp_path, good_config("https://127.0.0.1:%d" % port), certs)
    out = peers.run_mp("secrets_driver.py", "3000", env=run_local.firmware_env(root),
                       timeout=60)
    output = out.stdout + out.stderr
    assert "driver: done" in output, output
    assert_no_secret(output)
    assert "eyJ-driver-token-" not in output and "Ocelot" not in output
    crashes = [ln for ln in output.splitlines() if "tasks: leaky crashed" in ln]
    assert crashes, output
    assert "Authorization: Basic ***; secret '***'; token ***" in crashes[0], crashes[0]
    assert "Traceback" in output and "RuntimeError: request failed" in output, output
    assert "refused" in output  # the real tasks ran alongside and hit the network


def blanked(text, secrets):
    """The oracle: mark every character any secret occurrence covers, then write each run of
    marked characters as one `***`."""
    covered = [False] * len(text)
    for sec in secrets:
        for i in range(len(text) - len(sec) + 1):
            if text.startswith(sec, i):
                covered[i:i + len(sec)] = [True] * len(sec)
    out = []
    for i, ch in enumerate(text):
        if not covered[i]:
            out.append(ch)
        elif i == 0 or not covered[i - 1]:
            out.append("***")
    return "".join(out)


_ALPHABET = "ab-'\\\"\u00e9"  # few letters: secrets overlap often; quotes/backslash/non-ASCII
_piece = st.text(alphabet=_ALPHABET, min_size=1, max_size=7)


@settings(max_examples=300, deadline=None)
@given(secrets=st.lists(_piece, min_size=1, max_size=4), fillers=st.lists(
    st.text(alphabet=_ALPHABET + " x", max_size=5), min_size=1, max_size=4),
    order=st.lists(st.integers(0, 7), max_size=10), wrap=st.sampled_from(["%s", "%r", "b%r"]))
def test_redact_matches_the_oracle(secrets, fillers, order, wrap):
    parts = [(secrets + fillers)[i % (len(secrets) + len(fillers))] for i in order]
    text = "".join(parts)
    if wrap == "%r":
        text = repr(text)
    elif wrap == "b%r":
        text = repr(text.encode())
    before = list(log._secrets)
    lines = []
    log.set_sink(lines.append)  # short secrets warn; keep that out of the test output
    try:
        for sec in secrets:
            log.secret(sec)
        forms = list(log._secrets)
        got = log.redact(text)
    finally:
        for sec in secrets:
            log.forget(sec)
        log.set_sink(None)
    assert log._secrets == before
    assert got == blanked(text, forms)
    for sec in secrets:
        assert sec not in got
