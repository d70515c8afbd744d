"""`make check-ca URL=... CA=...` against a local TLS server: the right CA verifies it, an
unrelated one fails and names the issuer of the server's certificate."""
import os
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from test_deploy import make

from tools.pki import make_certs


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass


def test_check_ca_verifies_the_right_ca_and_names_the_issuer_otherwise(tmp_path):
    certs = make_certs(str(tmp_path / "pki"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs["server_cert"], certs["server_key"])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = "https://127.0.0.1:%d" % server.server_address[1]
    try:
        rc, out, err = make("check-ca", "URL=" + url, "CA=" + certs["ca"])
        assert rc == 0, out + err
        assert out.startswith("ok: %s verifies 127.0.0.1:" % certs["ca"]), out
        assert "issued by: CN=firmware test CA" in out, out
        rc, out, err = make("check-ca", "URL=" + url, "CA=" + certs["other_ca"])
        assert rc != 0
        assert "fails: %s does not verify 127.0.0.1:" % certs["other_ca"] in out, out
        assert "issued by: CN=firmware test CA  <- get the root CA" in out, out
        rc, out, err = make("check-ca", "URL=http://127.0.0.1:1", "CA=" + certs["ca"])
        assert rc != 0 and "not an https://, wss:// or mqtts:// URL" in out, out
    finally:
        server.shutdown()
    assert os.path.isfile(certs["ca"])
