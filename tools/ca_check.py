"""`make check-ca URL=https://host[:port] CA=path/ca.pem`: does this CA file verify that
server, the way the firmware will (TLS, the URL's host name checked)?

Connects once verifying with the CA file only (not the host's own trust store). On success
prints the server certificate's subject, issuer and expiry; on failure prints why and who
issued the server's certificate, which names the root to fetch (docs/ca.md). Works for
https://, wss:// and mqtts:// URLs (default ports 443, 443, 8883).

    python -m tools.ca_check URL CA_FILE
"""
import socket
import ssl
import sys
from urllib.parse import urlsplit

_PORTS = {"https": 443, "wss": 443, "mqtts": 8883}


def _describe(der):
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    expires = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after
    return cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(), expires


def check(url, ca_file, timeout=10.0):
    """(ok, lines to print)."""
    parts = urlsplit(url)
    if parts.scheme not in _PORTS or not parts.hostname:
        return False, ["%s: not an https://, wss:// or mqtts:// URL" % url]
    host, port = parts.hostname, parts.port or _PORTS[parts.scheme]
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as e:
        return False, ["%s: not a readable PEM CA file (%s)" % (ca_file, e)]
    try:
        with socket.create_connection((host, port), timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname=host) as tls:
            subject, issuer, expires = _describe(tls.getpeercert(True))
        return True, ["ok: %s verifies %s:%d" % (ca_file, host, port),
                      "  server: %s" % subject, "  issued by: %s" % issuer,
                      "  expires: %s" % expires]
    except ssl.SSLCertVerificationError as e:
        why = e.verify_message or str(e)
    except (OSError, ssl.SSLError) as e:
        return False, ["%s:%d: cannot connect (%s)" % (host, port, e)]
    lines = ["fails: %s does not verify %s:%d: %s" % (ca_file, host, port, why)]
    try:  # look, without trusting it, at what the server sends
        loose = ssl.create_default_context()
        loose.check_hostname = False
        loose.verify_mode = ssl.CERT_NONE
        with socket.create_connection((host, port), timeout) as raw, \
                loose.wrap_socket(raw, server_hostname=host) as tls:
            subject, issuer, expires = _describe(tls.getpeercert(True))
        lines += ["  the server's certificate: %s" % subject,
                  "  issued by: %s  <- get the root CA of this chain (docs/ca.md)" % issuer]
    except (OSError, ssl.SSLError):
        pass
    return False, lines


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__.strip().split("\n\n")[-1], file=sys.stderr)
        return 2
    ok, lines = check(argv[0], argv[1])
    for line in lines:
        print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
