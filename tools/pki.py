"""Test PKI for the tests and the local clouds (never a real CA): a CA, a server cert for
127.0.0.1 and localhost, a second unrelated CA, and a cert whose name does not match."""
import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


def _pem_key(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _ca(cn):
    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca_key, ca_cert, names):
    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    sans = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    cert = (x509.CertificateBuilder().subject_name(_name(names[0]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=825))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def make_certs(directory):
    """Write the test PKI into directory; returns a dict of PEM paths:
    ca, server_cert, server_key (127.0.0.1 + localhost), other_ca (unrelated),
    wrong_cert, wrong_key (valid chain, name 'elsewhere.example')."""
    os.makedirs(directory, exist_ok=True)
    pem = serialization.Encoding.PEM
    ca_key, ca = _ca("firmware test CA")
    _, other = _ca("unrelated CA")
    skey, scert = _leaf(ca_key, ca, ["localhost", "127.0.0.1"])
    wkey, wcert = _leaf(ca_key, ca, ["elsewhere.example"])
    d = directory
    return {
        "ca": _write(os.path.join(d, "ca.pem"), ca.public_bytes(pem)),
        "ca_key": _write(os.path.join(d, "ca.key"), _pem_key(ca_key)),
        "other_ca": _write(os.path.join(d, "other_ca.pem"), other.public_bytes(pem)),
        "server_cert": _write(os.path.join(d, "server.pem"), scert.public_bytes(pem)),
        "server_key": _write(os.path.join(d, "server.key"), _pem_key(skey)),
        "wrong_cert": _write(os.path.join(d, "wrong.pem"), wcert.public_bytes(pem)),
        "wrong_key": _write(os.path.join(d, "wrong.key"), _pem_key(wkey)),
    }
