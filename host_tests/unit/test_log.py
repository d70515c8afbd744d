"""Redaction in firmware/log.py: every registered secret, in every form it can take in a line
(plain, repr, bytes repr, JSON, inside an exception and its traceback), becomes `***`.

Each test registers its own distinctive secrets and forgets them at the end, so the global
secret list is the same before and after. Every "not in" check is paired with proof that the
secret really was in the text before redaction, so a test fails if redaction stops working.
"""
import json

import support
from firmware import log


class Capture:
    """Log lines into a list at DEBUG level; `close()` restores the sink and the level and
    forgets the secrets registered through it."""

    def __init__(self, *secrets):
        self.lines: list = []
        self.secrets = list(secrets)
        self._level = log._level[0]
        log.set_sink(self.lines.append)
        log.set_level(log.DEBUG)
        for s in secrets:
            log.secret(s)

    def add(self, s):
        self.secrets.append(s)
        log.secret(s)

    def text(self):
        return "\n".join(self.lines)

    def close(self):
        log.set_sink(None)
        log.set_level(self._level)
        for s in self.secrets:
            log.forget(s)


def _nested_failure(secret):
    def inner():
        raise ValueError("login failed for client secret %s" % secret)

    inner()


def test_exception_message_and_traceback_are_redacted():
    secret = "Exc-Secret-Wombat-91"
    cap = Capture(secret)
    try:
        try:
            _nested_failure(secret)
        except ValueError as e:
            raw_tb = log.traceback_text(e)
            log.exc("auth", "token request", e)
    finally:
        cap.close()
    assert secret in raw_tb and "Traceback" in raw_tb  # what would leak unredacted
    text = cap.text()
    assert secret not in text
    assert "Wombat" not in text
    assert len(cap.lines) == 2
    assert " E auth: token request: ValueError(login failed for client secret ***)" in \
        cap.lines[0]
    assert " D auth: Traceback" in cap.lines[1] and "client secret ***" in cap.lines[1]


def test_traceback_printed_through_the_sink_is_redacted():
    secret = "Tb-Secret-Quokka-77"
    cap = Capture(secret)
    try:
        try:
            raise KeyError(secret)  # str(KeyError) is the repr of the key
        except KeyError as e:
            assert secret in log.traceback_text(e)
            log.debug("tb", log.traceback_text(e))
            described = log.describe(e)
    finally:
        cap.close()
    assert "KeyError" in described and "***" in described and "Quokka" not in described
    assert "Traceback" in cap.text() and "***" in cap.text()
    assert "Quokka" not in cap.text()


def test_exc_skips_the_traceback_when_debug_is_off():
    secret = "Lvl-Secret-Ibis-55"
    cap = Capture(secret)
    log.set_level(log.INFO)
    try:
        log.exc("x", "failed", RuntimeError("with " + secret))
    finally:
        cap.close()
    assert len(cap.lines) == 1 and "RuntimeError(with ***)" in cap.lines[0]


def test_secret_that_contains_another_is_blanked_whole():
    short = "tok-ABCD"
    longer = "tok-ABCD-EFGH-1234"
    for order in ((short, longer), (longer, short)):
        cap = Capture(*order)
        try:
            log.info("t", "bearer %s then %s and %s.", longer, short, longer)
            log.info("t", "%s%s", longer, longer)
        finally:
            cap.close()
        assert cap.lines[0].endswith("t: bearer *** then *** and ***."), cap.lines[0]
        assert cap.lines[1].endswith("t: ***"), cap.lines[1]
        assert "EFGH" not in cap.text() and "1234" not in cap.text()


def test_partly_overlapping_secrets_leave_no_fragment():
    a = "alpha-BRAVO"
    b = "BRAVO-charlie"
    rep = "Rep-Rep-"  # overlaps itself: "Rep-Rep-Rep-" holds it twice
    cap = Capture(a, b, rep)
    try:
        log.info("t", "x=alpha-BRAVO-charlie;")
        log.info("t", "y=%s|%s|BRAVO", b, a)
        log.info("t", "z=Rep-Rep-Rep-.")
    finally:
        cap.close()
    assert cap.lines[0].endswith("t: x=***;"), cap.lines[0]
    assert cap.lines[1].endswith("t: y=***|***|BRAVO"), cap.lines[1]
    assert cap.lines[2].endswith("t: z=***."), cap.lines[2]
    assert "alpha" not in cap.text() and "charlie" not in cap.text()


def test_redact_leaves_text_without_secrets_alone():
    cap = Capture("Plain-Secret-Heron-12")
    try:
        for text in ("", "nothing to hide", "***", "Plain-Secret-Heron-1"):
            assert log.redact(text) == text
        assert log.redact("Plain-Secret-Heron-12") == "***"
        assert log.redact("<Plain-Secret-Heron-12>") == "<***>"
        assert log.redact("Plain-Secret-Heron-12Plain-Secret-Heron-12") == "***"
    finally:
        cap.close()


def test_secret_registered_while_running_is_redacted_from_then_on():
    token = "eyJ-late-token-Marmot-3"
    cap = Capture()
    try:
        log.info("auth", "before %s", token)  # not known yet: nothing to redact
        cap.add(token)  # e.g. a token issued mid-run
        log.info("auth", "after %s", token)
        log.forget(token)  # the token expired and was replaced
        log.info("auth", "forgotten %s", token)
    finally:
        cap.close()
    assert token in cap.lines[0]
    assert cap.lines[1].endswith("auth: after ***")
    assert token in cap.lines[2]


def test_repr_bytes_and_json_forms_are_redacted():
    secret = "Qx7'Zr\\\u00f6\"Kp9"  # a quote of each kind, a backslash and a non-ASCII letter
    cap = Capture(secret)
    try:
        log.info("t", "plain %s", secret)
        log.info("t", "repr %r", secret)
        log.info("t", "bytes %r", secret.encode())
        log.info("t", "json %s", json.dumps({"client_secret": secret}))
        log.info("t", "args %r", (secret, 1))
        log.info("t", "broken %d", secret)  # format error: logged as msg + repr(args)
        log.error("t", log.describe(KeyError(secret)))
    finally:
        cap.close()
    raw = [repr(secret), repr(secret.encode()), json.dumps(secret)]
    assert all(secret not in r for r in raw)  # each one is a form of its own
    assert len(cap.lines) == 7
    for line in cap.lines:
        assert "Qx7" not in line and "Kp9" not in line, line
        assert "***" in line, line


def test_bytes_secrets_are_registered_by_their_text():
    secret = b"Bytes-Secret-Okapi-8"
    opaque = b"\xff\xfeRaw-Okapi-Key"  # not UTF-8: only its bytes repr can appear
    cap = Capture(secret, opaque)
    try:
        log.info("t", "%s / %r / %r", secret.decode(), secret, opaque)
    finally:
        cap.close()
    assert "Okapi" not in cap.text(), cap.text()
    assert cap.lines[0].endswith("t: *** / b'***' / b'***'"), cap.lines[0]


def test_forget_drops_every_form():
    secret = "Fg'Secret\\Tapir"
    before = list(log._secrets)
    log.secret(secret)
    assert len(log._secrets) > len(before) + 1  # the text and its escaped forms
    log.forget(secret)
    assert log._secrets == before
    assert log.redact(repr(secret)) == repr(secret)


def test_basic_auth_value_of_the_client_secret_is_redacted():
    from firmware import config
    from firmware.clouds.realer_https import RealerHttps

    client_id = "cdv_basicauthclientid0000000"
    secret = "Basic-Secret-Narwhal-64"
    raw = {"cloud": {"platform": "realer", "api_url": "https://127.0.0.1:1", "device_id": 1,
                     "client_id": client_id, "client_secret": secret, "ca_file": "ca.pem"}}
    root = support.tmpdir("log")
    support.write(root + "/ca.pem", "-----BEGIN CERTIFICATE-----\n")
    cap = Capture(secret)
    try:
        cfg = config.validate(raw, root)  # registers the client secret
        cloud = RealerHttps(cfg, client=object())  # registers its Basic form
        b64 = cloud._basic[len("Basic "):]
        cap.add(b64)  # already registered by the adapter; listed here to forget it
        log.info("http", "POST /oauth/token Authorization: %s", cloud._basic)
        log.info("http", "header %r", ("Authorization", cloud._basic.encode()))
        log.info("http", "secret %s", secret)
    finally:
        cap.close()
        support.rmtree(root)
    import binascii

    expect = binascii.b2a_base64(("%s:%s" % (client_id, secret)).encode()).decode().strip()
    assert b64 == expect
    text = cap.text()
    assert b64 not in text and secret not in text and "Narwhal" not in text
    assert cap.lines[0].endswith("Authorization: Basic ***")
    assert "Basic ***" in cap.lines[1]


def test_basic_auth_secret_registered_by_the_http_helper_alone():
    from firmware.net import http

    value = http.basic_auth("user-x", "Helper-Secret-Gecko-5")
    b64 = value[len("Basic "):]
    try:
        assert log.redact(value) == "Basic ***"
    finally:
        log.forget(b64)
    assert log.redact(value) == value  # forgotten: proves the line above was redaction


def test_short_secrets_are_redacted_anyway_with_a_warning():
    cap = Capture()
    try:
        cap.add("q7")
        cap.add("q7")  # a second registration warns no more
        log.info("t", "pin q7 ok")
        cap.add("")  # empty: nothing to hide, no warning
        cap.add(None)
        cap.add("zq9x")  # 4 characters: long enough, no warning
    finally:
        cap.close()
    warnings = [line for line in cap.lines if " W log: " in line]
    assert len(warnings) == 1, cap.lines
    assert "2 characters is too short" in warnings[0]
    assert "q7" not in cap.text()
    assert cap.lines[-1].endswith("t: pin *** ok")
    assert "" not in log._secrets and "zq9x" not in log._secrets
