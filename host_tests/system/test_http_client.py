"""firmware.net.http under the real MicroPython unix port against a real CPython TLS server
(test CA made here): keep-alive, idle close, chunked, limits, TLS failures, timeouts."""
import json
import socket
import ssl
import threading
import time

import peers
import pytest
from certs import make_certs

from tools.faultproxy import FaultProxy


class Server:
    """A tiny HTTP/1.1 server over TLS that counts connections. Routes:
    /hello, /chunked, /big (100000 bytes), /echo (POST echoes body), /slow (3 s),
    /close (answers with Connection: close), /garbage (not HTTP), /say/X (answers X),
    /trickle (a 100000-byte body at one byte per 0.2 s), /continue (100 Continue lines
    without end, 50 a second), /trailers (a chunked body whose trailer lines never end);
    the last three go on until the client hangs up."""

    def __init__(self, certs, cert="server_cert", key="server_key", idle_close=False):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(certs[cert], certs[key])
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests = []
        self.idle_close = idle_close  # close every connection after one answer
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw):
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        f = conn.makefile("rb")
        try:
            while True:
                line = f.readline()
                if not line:
                    return
                method, path, _ = line.decode().split(" ", 2)
                headers = {}
                while True:
                    h = f.readline().decode().strip()
                    if not h:
                        break
                    k, v = h.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
                body = f.read(int(headers.get("content-length", 0)))
                self.requests.append((method, path, headers, body))
                if not self._answer(conn, method, path, body):
                    return
                if self.idle_close:
                    return
        except (OSError, ValueError):
            return
        finally:
            conn.close()

    def _answer(self, conn, method, path, body):
        def send(status, payload, extra=""):
            conn.sendall(("HTTP/1.1 %s\r\nContent-Length: %d\r\n%s\r\n" %
                          (status, len(payload), extra)).encode() + payload)

        if path == "/hello":
            send("200 OK", b"hello")
        elif path == "/echo":
            send("201 Created", body, "Content-Type: application/json\r\n")
        elif path == "/chunked":
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\n1;ext=1\r\n \r\n6\r\nworld!\r\n0\r\nX-T: 1\r\n\r\n")
        elif path == "/big":
            send("200 OK", b"x" * 100000)
        elif path == "/slow":
            time.sleep(3)
            send("200 OK", b"late")
        elif path == "/close":
            send("200 OK", b"bye", "Connection: close\r\n")
            return False
        elif path == "/trickle":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            self._forever(conn, b"x", 0.2)
        elif path == "/continue":
            self._forever(conn, b"HTTP/1.1 100 Continue\r\n\r\n", 0.02)
        elif path == "/trailers":
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"2\r\nok\r\n0\r\n")
            self._forever(conn, b"X-T: 1\r\n", 0.02)
        elif path.startswith("/say/"):
            send("200 OK", path[5:].encode())
        elif path == "/garbage":
            conn.sendall(b"SPDY/9 what\r\n\r\n")
            return False
        else:
            send("404 Not Found", b"")
        return True

    def _forever(self, conn, piece, pause):
        while not self.stopped:  # ends with OSError once the client has hung up
            conn.sendall(piece)
            time.sleep(pause)

    def stop(self):
        self.stopped = True
        self.sock.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_certs(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def server(pki):
    s = Server(pki)
    yield s
    s.stop()


def drive(spec, timeout=60):
    proc = peers.run_mp_spec("http_driver.py", spec, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return peers.json_lines(proc.stdout)


def test_keep_alive_reuses_one_connection(server, pki):
    url = "https://localhost:%d" % server.port
    reqs = [{"url": url + "/hello"} for _ in range(10)]
    reqs.append({"method": "POST", "url": url + "/echo", "json": {"a": 1}})
    out = drive({"ca": pki["ca"], "requests": reqs})
    assert [o["status"] for o in out] == [200] * 10 + [201]
    assert out[0]["body"] == "hello" and json.loads(out[-1]["body"]) == {"a": 1}
    assert out[-1]["handshakes"] == 1
    assert server.connections == 1
    assert server.requests[-1][2]["content-type"] == "application/json"


def test_form_body_is_percent_encoded(server, pki):
    url = "https://127.0.0.1:%d/echo" % server.port
    out = drive({"ca": pki["ca"], "requests": [
        {"method": "POST", "url": url, "form": {"grant_type": "client_credentials",
                                                "scope": "a b&c"}}]})
    assert out[0].get("body") == "grant_type=client_credentials&scope=a+b%26c", out[0]
    assert server.requests[0][2]["content-type"] == "application/x-www-form-urlencoded"


def test_idle_close_reconnects_only_when_safe(pki):
    s = Server(pki, idle_close=True)
    try:
        url = "https://localhost:%d" % s.port
        out = drive({"ca": pki["ca"], "requests": [
            {"url": url + "/hello"},
            {"url": url + "/hello", "sleep_ms": 200},  # GET: replayed on a new connection
            {"method": "POST", "url": url + "/echo", "body": "x", "sleep_ms": 200},
            {"method": "POST", "url": url + "/echo", "body": "y", "idempotent": True},
            {"method": "POST", "url": url + "/echo", "body": "z", "idempotent": True,
             "sleep_ms": 200},
        ]})
    finally:
        s.stop()
    assert out[0]["status"] == 200 and out[1]["status"] == 200
    assert out[2]["error"] == "NotReplayed"
    assert out[3]["status"] == 201 and out[4]["status"] == 201 and out[4]["body"] == "z"
    assert [r[3] for r in s.requests if r[0] == "POST"] == [b"y", b"z"]


def test_chunked_body_and_connection_close(server, pki):
    url = "https://localhost:%d" % server.port
    out = drive({"ca": pki["ca"], "requests": [
        {"url": url + "/chunked"}, {"url": url + "/close"}, {"url": url + "/hello"}]})
    assert out[0]["body"] == "hello world!"
    assert out[1]["body"] == "bye"
    assert out[2]["status"] == 200 and out[2]["handshakes"] == 2


def test_oversize_body_refused_then_client_recovers(server, pki):
    url = "https://localhost:%d" % server.port
    out = drive({"ca": pki["ca"], "requests": [
        {"url": url + "/big", "max_body": 4096}, {"url": url + "/hello"}]})
    assert out[0]["error"] == "BodyTooLarge"
    assert out[1]["status"] == 200


def test_download_streams_large_body_to_file(server, pki, tmp_path):
    dest = str(tmp_path / "blob.bin")
    out = drive({"ca": pki["ca"], "requests": [
        {"url": "https://localhost:%d/big" % server.port, "download": dest}]})
    assert out[0]["status"] == 200 and out[0]["written"] == 100000
    assert open(dest, "rb").read() == b"x" * 100000


def test_not_http_is_a_protocol_error(server, pki):
    out = drive({"ca": pki["ca"], "requests": [
        {"url": "https://localhost:%d/garbage" % server.port}]})
    assert out[0]["error"] == "HttpProtocolError"


def test_wrong_hostname_rejected(pki):
    s = Server(pki, cert="wrong_cert", key="wrong_key")
    try:
        out = drive({"ca": pki["ca"], "requests": [
            {"url": "https://localhost:%d/hello" % s.port}]})
    finally:
        s.stop()
    assert out[0]["error"] == "TLSError" and "CN" in out[0]["msg"]


def test_unknown_ca_rejected(server, pki):
    out = drive({"ca": pki["other_ca"], "requests": [
        {"url": "https://localhost:%d/hello" % server.port}]})
    assert out[0]["error"] == "TLSError" and "trusted CA" in out[0]["msg"]
    assert server.requests == []


def test_read_timeout_and_connect_refused(server, pki):
    out = drive({"ca": pki["ca"], "timeout_ms": 1000, "requests": [
        {"url": "https://localhost:%d/slow" % server.port},
        {"url": "http://127.0.0.1:%d/hello" % peers.free_port()}]})
    assert out[0]["error"] == "NetTimeout"
    assert out[1]["error"] == "ConnectError"


def test_blackhole_and_reset_through_fault_proxy(server, pki):
    proxy = FaultProxy("127.0.0.1", server.port)
    port = proxy.start_in_thread()
    try:
        proxy.set(mode="blackhole")
        out = drive({"ca": pki["ca"], "timeout_ms": 1000, "requests": [
            {"url": "https://localhost:%d/hello" % port}]})
        assert out[0]["error"] == "NetTimeout"
        proxy.set(mode="reset_after", nbytes=3000)
        out = drive({"ca": pki["ca"], "timeout_ms": 3000, "requests": [
            {"url": "https://localhost:%d/big" % port, "max_body": 200000}]})
        assert out[0]["error"] in ("Closed", "TLSError")
        proxy.set(mode="pass")
        out = drive({"ca": pki["ca"], "requests": [
            {"url": "https://localhost:%d/hello" % port}]})
        assert out[0]["status"] == 200
    finally:
        proxy.stop()


def test_ca_bundle_with_several_anchors(server, pki, tmp_path):
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(open(pki["other_ca"]).read() + open(pki["ca"]).read())
    out = drive({"ca": str(bundle), "requests": [
        {"url": "https://localhost:%d/hello" % server.port}]})
    assert out[0]["status"] == 200


def test_tasks_sharing_a_client_each_get_their_own_answer(server, pki):
    url = "https://localhost:%d/say/" % server.port
    out = drive({"ca": pki["ca"], "concurrent": True,
                 "requests": [{"url": url + "r%d" % i} for i in range(12)]})
    answers = out[:-1]
    assert len(answers) == 12
    assert all(o["body"] == o["url"].rsplit("/", 1)[1] for o in answers)
    assert out[-1]["handshakes"] == 1


def test_trickling_and_endless_peers_meet_the_deadline_and_the_limits(server, pki):
    """A server that trickles its body (each byte well inside the read timeout) is cut off
    at the request's overall deadline, with one warning line; endless 1xx lines or trailers
    meet their limits; the next request still works, on a new connection. Bounds are
    generous multiples of the deadline (a busy machine), never exact timings."""
    url = "https://localhost:%d" % server.port
    proc = peers.run_mp_spec("http_driver.py", {
        "ca": pki["ca"], "timeout_ms": 2000, "deadline_ms": 3000, "requests": [
            {"url": url + "/trickle", "max_body": 200000}, {"url": url + "/continue"},
            {"url": url + "/trailers"}, {"url": url + "/hello"}]}, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = peers.json_lines(proc.stdout)
    assert out[0]["error"] == "DeadlineExceeded", out[0]
    assert out[0]["elapsed_ms"] < 3000 + 20000  # the deadline, not the 500 s the body takes
    assert out[1]["error"] == "HttpProtocolError" and "1xx" in out[1]["msg"]
    assert out[2]["error"] == "HttpProtocolError" and "header" in out[2]["msg"]
    assert out[3]["status"] == 200 and out[3]["body"] == "hello"
    assert server.connections == 4  # each failure dropped its connection
    stalls = [ln for ln in proc.stdout.splitlines() if "stalled" in ln]
    assert len(stalls) == 1 and "GET /trickle" in stalls[0], proc.stdout
