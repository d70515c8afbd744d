"""Verified TLS contexts: CERT_REQUIRED against the configured CA file, always with a server
host name, never before the clock is set. There is no switch that turns verification off.

MicroPython's ssl takes trust anchors as DER, so a PEM file is converted once and the context
is cached per file: a handshake then costs no file reads and no base64 decoding.
"""
import binascii
import ssl

from firmware import clock

_BEGIN = "-----BEGIN CERTIFICATE-----"
_END = "-----END CERTIFICATE-----"
_contexts: dict = {}


class TLSConfigError(ValueError):
    """The CA file is missing, unreadable or holds no certificate."""


def pem_to_der(text):
    """Every certificate in a PEM text, as a list of DER bytes."""
    out = []
    start = text.find(_BEGIN)
    while start >= 0:
        end = text.find(_END, start)
        if end < 0:
            break
        body = text[start + len(_BEGIN):end].replace("\r", "").replace("\n", "")
        try:
            out.append(binascii.a2b_base64(body))
        except ValueError:
            raise TLSConfigError("a certificate in the CA file is not valid base64")
        start = text.find(_BEGIN, end)
    return out


def context(ca_file, clock_is_set=clock.is_set):
    """The verified client context for ca_file. Raises ClockUnset while the clock is unset:
    certificate validity cannot be judged without it."""
    if not clock_is_set():
        raise clock.ClockUnset("TLS certificate validation")
    ctx = _contexts.get(ca_file)
    if ctx is not None:
        return ctx
    if not ca_file:
        raise TLSConfigError("a TLS URL needs cloud.ca_file (the CA that signs the server)")
    try:
        with open(ca_file) as f:
            ders = pem_to_der(f.read())
    except OSError:
        raise TLSConfigError("CA file %r cannot be read" % ca_file)
    if not ders:
        raise TLSConfigError("CA file %r holds no PEM certificate" % ca_file)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED  # type: ignore[attr-defined]  # ssl.py has it on ESP32
    for der in ders:
        ctx.load_verify_locations(cadata=der)
    _contexts[ca_file] = ctx
    return ctx
