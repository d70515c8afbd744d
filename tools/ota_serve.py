"""`make ota-serve`: serve signed OTA bundles and their manifest over HTTPS, as an update
server would, so the flow in docs/ota.md runs against a board on the desk (or the virtual
board) without a cloud.

Serves the files of one directory (default build/: `make ota-bundle` and `make ota-manifest`
write bundle-VERSION.bin and manifest.json there) with a server certificate from a local test
CA kept in DIR/.ota-serve/ (made once, reused, never a real CA). It prints the manifest URL,
the CA file the board must trust, and the `ota` config section to provision; each request
is logged with its status and size.

    python -m tools.ota_serve [--dir build] [--host 127.0.0.1] [--port 8443]

The board reaches the host by the address given with --host (the certificate names it): on
a real board use the host's LAN address; the virtual board and the unix port use 127.0.0.1.
"""
import argparse
import json
import os
import shutil
import ssl
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Files(SimpleHTTPRequestHandler):
    def log_message(self, fmt, *args):  # one line per request on stdout
        print("ota-serve: %s %s" % (self.address_string(), fmt % args), flush=True)


def certs(directory, host):
    """The local CA and a server certificate for `host` in directory/.ota-serve/ (made once
    per host name, then reused so a provisioned board keeps trusting it)."""
    from cryptography.hazmat.primitives import serialization

    from tools import pki

    d = os.path.join(directory, ".ota-serve")
    paths = {"ca": os.path.join(d, "ca.pem"), "cert": os.path.join(d, "server.pem"),
             "key": os.path.join(d, "server.key")}
    stamp = os.path.join(d, "host")
    if os.path.isfile(stamp) and open(stamp).read() == host:
        return paths
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    ca_key, ca = pki._ca("ota-serve local CA")
    key, cert = pki._leaf(ca_key, ca, [host] + [n for n in ("127.0.0.1", "localhost")
                                                if n != host])
    pem = serialization.Encoding.PEM
    pki._write(paths["ca"], ca.public_bytes(pem))
    pki._write(paths["cert"], cert.public_bytes(pem))
    pki._write(paths["key"], pki._pem_key(key))
    with open(stamp, "w") as f:
        f.write(host)
    return paths


def serve(directory, host="127.0.0.1", port=8443):
    """Start serving in a thread; returns (server, base URL, CA path)."""
    c = certs(directory, host)
    server = ThreadingHTTPServer((host, port), partial(_Files, directory=directory))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(c["cert"], c["key"])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, "https://%s:%d" % (host, server.server_address[1]), c["ca"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=os.path.join(ROOT, "build"))
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8443)
    a = ap.parse_args(argv)
    directory = os.path.abspath(a.dir)
    if not os.path.isfile(os.path.join(directory, "manifest.json")):
        print("ota-serve: no manifest.json in %s; run `make ota-bundle VERSION=...` and "
              "`make ota-manifest VERSION=...` first" % directory, file=sys.stderr)
        return 1
    server, base, ca = serve(directory, a.host, a.port)
    section = {"manifest_url": base + "/manifest.json", "ca_file": "ota_ca.pem",
               "interval_s": 60}
    print("ota-serve: %s/manifest.json (from %s)" % (base, directory))
    print("ota-serve: the board trusts %s: copy it next to your config as ota_ca.pem" % ca)
    print("ota-serve: config: \"ota\": %s" % json.dumps(section))
    print("ota-serve: then `make provision PORT=... CONFIG=...` (it sends the CA and "
          "keys/ota_public_key.bin); Ctrl-C stops", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
