"""tools/mosquitto.py against the real mosquitto 2 binary: plain and TLS listeners, dynsec
ACLs enforced with MQTT 5 reason codes, bad passwords refused, state kept across a restart,
deleted and disabled clients kicked, and the password-file mode."""
import json
import os
import ssl

import pytest
from certs import make_certs

from tools.mosquitto import Broker, BrokerError, SyncClient

NOT_AUTHORIZED = 0x87
BAD_USER_OR_PASSWORD = 0x86
NO_SUBSCRIBERS = 0x10


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("mosq"))
    certs = make_certs(os.path.join(d, "certs"))
    b = Broker(os.path.join(d, "broker"), certs=certs)
    try:
        b.start()
    except BrokerError as e:
        raise AssertionError("mosquitto could not start: %s" % e) from None
    b.certs_ = certs
    yield b
    b.stop()


def client(b, user, pw, client_id="", tls=False, ca=None):
    port = b.tls_port if tls else b.port
    return SyncClient(b.host, port, user, pw, client_id=client_id,
                      ca=(ca or b.certs_["ca"]) if tls else None)


@pytest.mark.parametrize("tls", [False, True])
def test_round_trip(broker, tls):
    user = "rt-%s" % tls
    broker.add_client(user, "pw-" + user, publish=["rt/%s/#" % user],
                      subscribe=["rt/%s/#" % user])
    c = client(broker, user, "pw-" + user, tls=tls)
    try:
        assert c.connect().value == 0
        assert [r.value for r in c.subscribe("rt/%s/#" % user)] == [1]
        assert c.publish("rt/%s/x" % user, {"n": 1}).value == 0
        m = c.next_message()
        assert m.topic == "rt/%s/x" % user and json.loads(m.payload) == {"n": 1}
    finally:
        c.close()


def test_tls_with_unrelated_ca_fails(broker):
    broker.add_client("ca-u", "pw")
    c = client(broker, "ca-u", "pw", tls=True, ca=broker.certs_["other_ca"])
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            c.connect()
    finally:
        c.c.loop_stop()


def test_denied_publish_and_subscribe(broker):
    broker.add_client("acl", "pw", publish=["ok/pub"], subscribe=["ok/sub/#"])
    c = client(broker, "acl", "pw")
    try:
        assert c.connect().value == 0
        rcs = c.subscribe("other/#")
        assert [r.value for r in rcs] == [NOT_AUTHORIZED]
        assert c.subscribe("ok/sub/#")[0].value == 1
        assert c.publish("other/topic", "x").value == NOT_AUTHORIZED
        assert c.publish("ok/pub", "x").value == NO_SUBSCRIBERS  # success, nobody listens
    finally:
        c.close()


def test_wrong_password_refused(broker):
    broker.add_client("pwu", "right")
    for user, pw in (("pwu", "wrong"), ("nobody", "x"), (None, None)):
        c = client(broker, user, pw)
        try:
            assert c.connect().value in (BAD_USER_OR_PASSWORD, NOT_AUTHORIZED), (user, pw)
        finally:
            c.close()


def test_client_id_lock(broker):
    broker.add_client("locked", "pw", client_id="dev-1")
    other = client(broker, "locked", "pw", client_id="dev-2")
    try:
        assert other.connect().is_failure
    finally:
        other.close()
    right = client(broker, "locked", "pw", client_id="dev-1")
    try:
        assert right.connect().value == 0
    finally:
        right.close()


def test_remove_and_disable_kick(broker):
    for user, action in (("kick-rm", broker.remove_client), ("kick-dis", broker.disable_client),
                         ("kick-kick", broker.kick_client)):
        broker.add_client(user, "pw", subscribe=["k/#"])
        c = client(broker, user, "pw")
        try:
            assert c.connect().value == 0
            action(user)
            assert c.wait_disconnected(5), user
        finally:
            c.close()
    assert "kick-rm" not in broker.list_clients()
    c = client(broker, "kick-dis", "pw")
    try:
        assert c.connect().value in (BAD_USER_OR_PASSWORD, NOT_AUTHORIZED)
    finally:
        c.close()
    broker.enable_client("kick-dis")
    for user in ("kick-dis", "kick-kick"):  # usable again at once
        c = client(broker, user, "pw")
        try:
            assert c.connect().value == 0, user
        finally:
            c.close()


def test_restart_keeps_users_and_ports(broker):
    broker.add_client("keep", "pw", publish=["keep/x"])
    port, tls_port = broker.port, broker.tls_port
    broker.restart()
    assert (broker.port, broker.tls_port) == (port, tls_port)
    assert "keep" in broker.list_clients()
    c = client(broker, "keep", "pw", tls=True)
    try:
        assert c.connect().value == 0
        assert not c.publish("keep/x", "1").is_failure
        assert c.publish("keep/y", "1").value == NOT_AUTHORIZED
    finally:
        c.close()


def test_password_file_mode(tmp_path):
    with Broker(str(tmp_path), dynsec=False, users={"u": "p"}).start() as b:
        assert b.admin is None
        ok = SyncClient(b.host, b.port, "u", "p")
        bad = SyncClient(b.host, b.port, "u", "nope")
        try:
            assert ok.connect().value == 0
            assert bad.connect().value in (BAD_USER_OR_PASSWORD, NOT_AUTHORIZED)
        finally:
            ok.close()
            bad.close()
        with pytest.raises(BrokerError):
            b.add_client("x", "y")
    assert b.proc is None


def test_start_failure_reports_log(tmp_path):
    b = Broker(str(tmp_path), certs={"ca": "/nonexistent/ca.pem", "server_cert": "/nope",
                                     "server_key": "/nope"})
    with pytest.raises(BrokerError) as e:
        b.start()
    assert "mosquitto" in str(e.value)
