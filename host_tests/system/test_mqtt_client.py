"""firmware.net.mqtt under the real MicroPython unix port against a real mosquitto 2 broker
(plain and TLS listeners, dynamic-security users and ACLs), with paho-mqtt v5 as the other
party: round trips with properties, a 100-message window, keepalive, named refusals, an
ACL-denied subscribe, and a broker restart mid-stream with reconnect and re-subscribe."""
import json
import os
import subprocess
import tempfile
import threading

import peers
import pytest
from certs import make_certs
from rig import scratch_dir, wait_for

from tools.mosquitto import Broker, BrokerError, SyncClient

DEVICE = "dev-1"
PASSWORD = "device-pass-1234"


def start_broker(d):
    certs = make_certs(os.path.join(d, "certs"))
    b = Broker(os.path.join(d, "broker"), certs=certs)
    try:
        b.start()
    except BrokerError as e:
        raise AssertionError("mosquitto could not start: %s" % e) from None
    b.certs_ = certs
    b.add_client(DEVICE, PASSWORD, client_id=DEVICE, publish=["d/%s/#" % DEVICE],
                 subscribe=["d/%s/#" % DEVICE, "c/%s/#" % DEVICE])
    b.add_client("app", "app-pass-1234", publish=["c/#", "d/#"], subscribe=["d/#"])
    return b


@pytest.fixture(scope="module")
def broker():
    with scratch_dir("mqtt-client-") as d:
        b = start_broker(d)
        try:
            yield b
        finally:
            b.stop()


def app(b):
    c = SyncClient(b.host, b.port, "app", "app-pass-1234")
    assert c.connect().value == 0
    return c


def spec(b, tls=False, **kw):
    s = {"url": b.tls_url if tls else b.url, "client_id": DEVICE, "user": DEVICE,
         "password": PASSWORD, "actions": []}
    if tls:
        s["ca"] = b.certs_["ca"]
    s.update(kw)
    return s


def drive(s, timeout=60):
    proc = peers.run_mp_spec("mqtt_driver.py", s, timeout=timeout)
    out = peers.json_lines(proc.stdout)
    assert out, "driver printed nothing: %s" % proc.stderr[-2000:]
    return out, proc


@pytest.mark.parametrize("tls,version", [(False, 5), (True, 5), (True, 4)])
def test_qos1_round_trip_with_properties(broker, tls, version):
    watcher = app(broker)
    watcher.subscribe("d/%s/#" % DEVICE)
    props = {"user": [["source", "sensor-7"], ["unit", "C"], ["source", "again"]],
             "response_topic": "c/%s/reply" % DEVICE, "correlation": "req-42",
             "content_type": "application/json", "expiry": 300}
    try:
        out, proc = drive(spec(broker, tls, version=version, actions=[
            ["subscribe", "d/%s/echo" % DEVICE],
            ["publish", "d/%s/echo" % DEVICE, '{"v": 21.5}', 1, props],
            ["recv", 5000]]))
        m = watcher.next_message()
    finally:
        watcher.close()
    assert out[0]["connect"] == "ok", out
    assert out[1]["codes"] == [1]
    assert out[2]["pid"] > 0, out[2]
    assert out[3]["payload"] == '{"v": 21.5}' and out[3]["qos"] == 1
    assert json.loads(m.payload) == {"v": 21.5}
    if version == 5:
        # paho, a different implementation, sees every property the firmware sent
        assert m.properties.UserProperty == [("source", "sensor-7"), ("unit", "C"),
                                             ("source", "again")]
        assert m.properties.ResponseTopic == "c/%s/reply" % DEVICE
        assert m.properties.CorrelationData == b"req-42"
        assert m.properties.ContentType == "application/json"
        assert out[3]["props"]["user"] == props["user"]
        assert out[3]["props"]["response_topic"] == props["response_topic"]
        assert out[3]["props"]["correlation"] == "req-42"
    else:
        assert out[3]["props"] == {}


def test_100_publishes_through_a_window(broker):
    watcher = app(broker)
    watcher.subscribe("d/%s/burst" % DEVICE)
    try:
        out, _ = drive(spec(broker, True, window=10,
                            actions=[["burst", "d/%s/burst" % DEVICE, 100]]))
        got = sorted(int(watcher.next_message().payload) for _ in range(100))
    finally:
        watcher.close()
    burst = out[1]
    # never more than the window in flight (that it fills up is shown against a broker that
    # holds its PUBACKs, in unit/test_mqtt_session.py; loopback mosquitto answers too fast)
    assert burst["n"] == 100 and 1 <= burst["peak"] <= 10, burst
    assert got == list(range(100))


def test_messages_from_the_cloud_arrive_with_properties(broker):
    # the app publishes until the device has had its message: one published before the
    # device's subscription is in place is simply not delivered (no sleep guessing when that is)
    done = threading.Event()
    failed: list = []

    def push():
        c = app(broker)
        try:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            p = Properties(PacketTypes.PUBLISH)
            p.UserProperty = [("cmd", "fan")]
            p.ResponseTopic = "d/%s/acks" % DEVICE
            while not done.is_set():
                c.c.publish("c/%s/desired" % DEVICE, b"on", qos=1,
                            properties=p).wait_for_publish(5)
                done.wait(0.2)
        except Exception as e:  # reported by the test, not lost in the thread
            failed.append(e)
        finally:
            c.close()

    t = threading.Thread(target=push)
    t.start()
    try:
        out, _ = drive(spec(broker, actions=[["subscribe", "c/%s/#" % DEVICE],
                                             ["recv", 30000]]))
    finally:
        done.set()
        t.join(10)
    assert not failed, failed
    assert out[2]["topic"] == "c/%s/desired" % DEVICE and out[2]["payload"] == "on", out
    assert out[2]["props"]["user"] == [["cmd", "fan"]]
    assert out[2]["props"]["response_topic"] == "d/%s/acks" % DEVICE


def test_keepalive_pings_keep_an_idle_session(broker):
    # mosquitto drops a client silent for 1.5 keepalives; 3.5 s idle at keepalive 1 s
    out, _ = drive(spec(broker, keepalive=1, actions=[["idle", 3500]]))
    assert out[1] == {"action": "idle", "connected": True, "error": None}, out


@pytest.mark.parametrize("version,code", [(5, 0x87), (4, 5)])
def test_bad_credentials_are_a_named_error(broker, version, code):
    # mosquitto 2.0 answers a wrong password with "not authorized" (0x87 on MQTT 5, 5 on
    # 3.1.1), not 0x86/4; both are CredentialsRefused, which tells the adapter to fetch new
    # credentials instead of retrying (the 0x86 mapping is in unit/test_mqtt_session.py)
    out, _ = drive(spec(broker, password="wrong-password", version=version))
    assert out[0]["connect"] == "NotAuthorized" and out[0]["code"] == code, out
    assert out[0]["credentials_refused"] is True
    assert "wrong-password" not in json.dumps(out)


def test_acl_denied_subscribe_and_publish_are_reported(broker):
    out, _ = drive(spec(broker, actions=[
        ["subscribe", ["d/%s/ok" % DEVICE, "d/other-device/#"]],
        ["publish", "d/other-device/x", "v", 1]]))
    assert out[1]["error"] == "SubscribeDenied", out
    assert out[1]["denied"] == [["d/other-device/#", 0x87]]
    assert out[2]["error"] == "PublishRejected" and out[2]["code"] == 0x87, out


def test_tls_with_an_unknown_ca_is_refused(broker, tmp_path):
    s = spec(broker, True)
    s["ca"] = broker.certs_["other_ca"]
    out, _ = drive(s)
    assert out[0]["connect"] == "TLSError", out


def test_broker_restart_mid_stream(tmp_path):
    b = start_broker(str(tmp_path))
    topic = "d/%s/stream" % DEVICE
    watcher_msgs = []
    watcher = proc = None
    try:
        # at least 40 messages, and 5 of them after the push below arrived (tail)
        s = spec(b, True, mode="stream", n=40, tail=5, interval_ms=50, topic=topic,
                 sub="c/%s/in" % DEVICE, await_message=True, timeout_ms=40000)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(s, f)
        # subscribed (SUBACK) before the device starts: its first message follows its
        # connect at once, sooner than a subscriber started on the "connected" line could be
        watcher = app(b)
        watcher.subscribe(topic)
        proc = subprocess.Popen([peers.MICROPYTHON, os.path.join(peers.HERE, "mp",
                                                                   "mqtt_driver.py"), f.name],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=peers.mp_env(), cwd=peers.ROOT)
        events = []
        restarted = pushed = False
        for line in proc.stdout:
            if not line.startswith("{"):
                continue
            ev = json.loads(line)
            events.append(ev)
            if ev.get("event") == "published" and ev["n"] == 10 and not restarted:
                b.restart()
                restarted = True
                # what the old broker delivered before dying: all of it is queued once the
                # subscriber has read the end of its connection (paho reads in order)
                wait_for("the old broker's subscriber to see it go",
                         watcher.wait_disconnected)
                watcher_msgs += _drain(watcher)
                watcher.close()
                watcher = app(b)
                watcher.subscribe(topic)
            if ev.get("event") == "connected" and ev["connects"] == 2 and not pushed:
                # run() calls on_connect after the re-subscribe's SUBACK: the broker holds the
                # subscription already, nothing to wait for
                pusher = app(b)
                assert pusher.publish("c/%s/in" % DEVICE, "after-restart").value == 0
                pusher.close()
                pushed = True
        proc.wait(10)
        done = events[-1]
        assert done["event"] == "done" and done["sent"] >= 40, (events[-5:], proc.stderr.read())
        assert done["connects"] >= 2
        assert {"event": "message", "payload": "after-restart"} in events  # re-subscribed
        # the test pushed "after-restart" once the new subscriber was in place
        pushed_at = events.index({"event": "message", "payload": "after-restart"})
        after = {e["n"] - 1 for e in events[pushed_at:] if e.get("event") == "published"}
        assert len(after) >= 5
        # what was sent before the restart and everything sent after the reconnect reached
        # the subscriber (the broker forwards them on its own time: a deadline, not a pause).
        # Messages a broker acknowledges while it shuts down (persistence off, the
        # subscriber already gone) are lost by the broker: PUBACK is only broker acceptance,
        # which is why Realer acks on its own topic and the outbox waits for that.
        want = set(range(10)) | after

        def arrived():
            watcher_msgs.extend(_drain(watcher))
            return want <= {int(m.payload[1:]) for m in watcher_msgs}

        try:
            wait_for("the subscriber to get every message", arrived)
        except AssertionError:
            got = {int(m.payload[1:]) for m in watcher_msgs}
            raise AssertionError("never reached the subscriber: %s" % sorted(want - got))
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if watcher is not None:
            watcher.close()
        b.stop()


def _drain(watcher):
    """What the subscriber has received so far (no waiting)."""
    import queue

    out = []
    while True:
        try:
            out.append(watcher.messages.get_nowait())
        except queue.Empty:
            return out


def test_silent_tls_peer_times_out_instead_of_hanging(broker):
    # accepts TCP, then never answers the TLS handshake (a blackholed path); on MicroPython
    # the handshake runs inside the first write, so that write needs a timeout too
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        s = spec(broker, True)
        s["url"] = "mqtts://127.0.0.1:%d" % silent.getsockname()[1]
        out, _ = drive(s, timeout=30)
    finally:
        silent.close()
    assert out[0]["connect"] == "NetTimeout", out
