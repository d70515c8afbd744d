"""The local DeviceHive cloud against clients nobody here wrote: the PyPI `devicehive` library
(an operator sending a command to the real firmware and reading its command/update and
notifications) and plain `websocket-client` requests for the protocol details (errors by
code, token expiry and refresh on the same socket, de-duplication, subscription catch-up,
pushes)."""
import json
import os
import threading
import time
import uuid

import pytest
import websocket
from rig import scratch_dir, stop_cloud, wait_for

from tools import devicehive_cloud as dhc
from tools import run_local

TTL = 60


@pytest.fixture
def cloud():
    with scratch_dir("devicehive-cloud-") as tmp:
        data = os.path.join(tmp, "cloud")
        # access tokens live TTL s on the cloud's clock, which a test advances past that
        proc, info = run_local.start_cloud(data, token_ttl=TTL, platform="devicehive")
        info["data"] = data
        try:
            yield info
        finally:
            stop_cloud(proc)


class Raw:
    """One socket speaking the envelope by hand; pushes are kept aside."""

    def __init__(self, info):
        self.ws = websocket.create_connection(info["ws_url"], timeout=10,
                                              sslopt={"ca_certs": info["ca_file"]})
        self.pushes: list = []

    def send(self, text):
        self.ws.send(text)
        return json.loads(self.ws.recv())

    def call(self, action, **body):
        rid = str(uuid.uuid4())
        body.update(action=action, requestId=rid)
        self.ws.send(json.dumps(body))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("requestId") == rid:
                return msg
            self.pushes.append(msg)

    def push(self, timeout=5):
        if self.pushes:
            return self.pushes.pop(0)
        self.ws.settimeout(timeout)
        return json.loads(self.ws.recv())

    def close(self):
        self.ws.close()


def device_socket(info):
    raw = Raw(info)
    assert raw.call("authenticate", token=info["device_cloud"]["access_token"])["status"] == \
        "success"
    return raw


def test_errors_carry_codes(cloud):
    raw = Raw(cloud)
    assert raw.call("device/save", deviceId="x", device={"name": "x"})["code"] == 401
    bad = raw.send("{not json")
    assert bad["status"] == "error" and bad["code"] == 400
    info = raw.call("server/info")
    assert info["status"] == "success" and info["info"]["apiVersion"]
    assert dhc.parse_time(info["info"]["serverTimestamp"]) is not None
    r = raw.call("authenticate", token="a.b.c")
    assert (r["action"], r["status"], r["code"], r["error"]) == ("authenticate", "error", 401,
                                                                 "Invalid token")
    r = raw.call("authenticate", token=cloud["device_cloud"]["access_token"])
    assert r["status"] == "success"
    assert raw.call("no/such")["code"] == 400
    assert raw.call("device/save", deviceId="someone-else", device={"name": "x"})["code"] == 403
    assert raw.call("device/save", deviceId=dhc.DEVICE_ID, device={"name": 5})["code"] == 400
    assert raw.call("command/update", deviceId=dhc.DEVICE_ID, commandId=999,
                    command={"status": "applied"})["code"] == 404
    assert raw.call("notification/insert", deviceId=dhc.DEVICE_ID,
                    notification="not an object")["code"] == 400
    raw.close()


def test_expired_token_then_refresh_and_authenticate_on_the_same_socket(cloud):
    raw = device_socket(cloud)
    dc = cloud["device_cloud"]
    assert raw.call("device/save", deviceId=dhc.DEVICE_ID, device={"name": "a"})["status"] == \
        "success"
    dhc.set_knob(cloud["data"], "clock", TTL + 1)  # the access token has expired
    r = raw.call("device/save", deviceId=dhc.DEVICE_ID, device={"name": "a"})
    assert (r["status"], r["code"], r["error"]) == ("error", 401, "Token expired")
    assert raw.call("authenticate", token=dc["access_token"])["error"] == "Token expired"
    new = raw.call("token/refresh", refreshToken=dc["refresh_token"])["accessToken"]
    assert raw.call("authenticate", token=new)["status"] == "success"
    assert raw.call("device/save", deviceId=dhc.DEVICE_ID, device={"name": "a"})["status"] == \
        "success"
    assert raw.call("token/refresh", refreshToken=new)["code"] == 401  # not a refresh token
    # the expire-tokens knob expires every live session at once
    dhc.set_knob(cloud["data"], "expire-tokens", time.time())  # after this session's auth
    assert raw.call("device/save", deviceId=dhc.DEVICE_ID, device={"name": "a"})["code"] == 401
    raw.close()


def test_notifications_are_deduplicated_by_message_id(cloud):
    raw = device_socket(cloud)
    raw.call("device/save", deviceId=dhc.DEVICE_ID, device={"name": "a"})
    note = {"notification": "sensor", "timestamp": "2026-04-24T10:15:00.000",
            "parameters": {"id": 7, "value": "21.5", "message_id": "1-a"}}
    first = raw.call("notification/insert", deviceId=dhc.DEVICE_ID, notification=note)
    again = raw.call("notification/insert", deviceId=dhc.DEVICE_ID, notification=note)
    other = raw.call("notification/insert", deviceId=dhc.DEVICE_ID,
                     notification=dict(note, parameters={"message_id": "1-b"}))
    assert first["notification"]["id"] == again["notification"]["id"] != \
        other["notification"]["id"]
    assert [n["parameters"]["message_id"] for n in dhc.notifications(cloud["data"])] == \
        ["1-a", "1-b"]
    assert dhc.notifications(cloud["data"])[0]["timestamp"] == "2026-04-24T10:15:00.000"
    raw.close()


def test_subscribe_catches_up_from_a_timestamp_and_pushes_updates(cloud):
    data = cloud["data"]
    raw = device_socket(cloud)
    raw.call("device/save", deviceId=dhc.DEVICE_ID, device={"name": "a"})
    c1 = dhc.send_command(data, "4", 10, age=30)
    c2 = dhc.send_command(data, "4", 11, age=20)
    c3 = dhc.send_command(data, "3", 1, age=10)
    since = [c for c in dhc.commands(data) if c["id"] == c2][0]["timestamp"]
    sub = raw.call("command/subscribe", deviceId=dhc.DEVICE_ID, timestamp=since)
    got = [raw.push(), raw.push()]
    assert [g["command"]["id"] for g in got] == [c2, c3]  # inclusive of the timestamp
    assert all(g["action"] == "command/insert" and g["subscriptionId"] ==
               sub["subscriptionId"] and "requestId" not in g for g in got)
    assert got[0]["command"]["parameters"] == {"value": 11} and c1 < c2
    c4 = dhc.send_command(data, "4", 12, age=3600)  # new, though stamped long ago
    assert raw.push()["command"]["id"] == c4
    # an operator socket inserts a command and hears the device's update
    op = Raw(cloud)
    assert op.call("authenticate", token=cloud["operator"]["access_token"])["status"] == \
        "success"
    ins = op.call("command/insert", deviceId=dhc.DEVICE_ID,
                  command={"command": "4", "parameters": {"value": 5}, "lifetime": 60})
    cmd = ins["command"]
    assert set(cmd) >= {"id", "timestamp", "userId", "lastUpdated", "deviceId", "lifetime"}
    pushed = raw.push()
    assert pushed["command"]["id"] == cmd["id"] and pushed["command"]["lifetime"] == 60
    up = raw.call("command/update", deviceId=dhc.DEVICE_ID, commandId=cmd["id"],
                  command={"status": "applied", "result": {"value": "5"}})
    assert up["status"] == "success"
    upd = op.push()
    assert upd["action"] == "command/update" and upd["command"]["status"] == "applied"
    assert upd["command"]["result"] == {"value": "5"}
    raw.close()
    op.close()


class Operator:
    """A handler for the devicehive library: subscribes to the device's notifications and
    command updates, then sends one command. Mixed into the library's Handler (which owns
    `api`)."""

    def __init__(self, device_id, command, value):
        self.device_id = device_id
        self.want = (command, value)
        self.sent = None
        self.updates: list = []
        self.notes: list = []
        self.info = None

    def handle_connect(self):
        self.info = self.api.get_info()
        device = self.api.get_device(self.device_id)
        device.subscribe_notifications()
        device.subscribe_update_commands()
        self.sent = device.send_command(self.want[0], {"value": self.want[1]}, lifetime=120)

    def handle_command_insert(self, command):
        pass

    def handle_command_update(self, command):
        self.updates.append(command)

    def handle_notification(self, notification):
        self.notes.append(notification)


def test_devicehive_library_operator_commands_the_real_firmware(cloud, monkeypatch):
    try:
        from devicehive import DeviceHive, Handler
    except ImportError as e:
        raise AssertionError("the PyPI devicehive library is missing (pip install -r "
                             "requirements.txt): %s" % e)
    if not os.path.exists(run_local.MICROPYTHON):
        raise AssertionError("no MicroPython unix port at %s: run `make deps`" %
                             run_local.MICROPYTHON)
    tmp = os.path.dirname(cloud["data"])  # the cloud's scratch directory
    device_dir = os.path.join(tmp, "device")
    run_local.write_device(device_dir, cloud)
    with open(os.path.join(tmp, "device.log"), "ab") as log_file:
        fw = run_local.start_firmware(device_dir, log_file)
        try:
            wait_for("the device saved", lambda: dhc.device_state(cloud["data"])["device"])
            monkeypatch.setenv("WEBSOCKET_CLIENT_CA_BUNDLE", cloud["ca_file"])

            class LibHandler(Operator, Handler):
                def __init__(self, api):
                    Handler.__init__(self, api)
                    Operator.__init__(self, dhc.DEVICE_ID, "4", 42)

            hive = DeviceHive(LibHandler)
            errors: list = []

            def run():
                try:
                    hive.connect(cloud["ws_url"],
                                 refresh_token=cloud["operator"]["refresh_token"])
                except Exception as e:  # reported by the assertions below
                    errors.append(e)

            t = threading.Thread(target=run, daemon=True)
            t.start()
            wait_for("the library connected", lambda: errors or (
                hive.transport is not None and hive.handler.sent is not None))
            assert not errors, errors
            op = hive.handler
            cid = op.sent.id
            done = wait_for("the device's command/update", lambda: [
                u for u in op.updates if u.id == cid and u.status], 20)
            assert done[0].status == "applied" and done[0].result["value"] == "42"
            assert done[0].command == "4" and done[0].device_id == dhc.DEVICE_ID
            wait_for("two notifications", lambda: len(op.notes) >= 2)
            for n in op.notes[:2]:
                assert n.device_id == dhc.DEVICE_ID and n.notification in ("sensor", "command")
                assert n.parameters["message_id"] and "value" in n.parameters
            assert op.info["api_version"] == dhc.API_VERSION
            # the operator's access token expires on the open socket (the cloud's clock moves
            # past its lifetime; the device's expires too and it refreshes as well)
            dhc.set_knob(cloud["data"], "clock", TTL + 1)
            again = op.api.list_commands(dhc.DEVICE_ID)  # 401 -> the library refreshes
            assert [c.id for c in again if c.id == cid] == [cid]
            hive.handler.api.disconnect()
            t.join(10)
        finally:
            fw.kill()
            fw.wait(10)
    log = dhc.request_log(cloud["data"])
    # the operator's session saw its token expire and the library refreshed it
    assert [r for r in log if r["user"] == dhc.OPERATOR and r["code"] == 401 and
            r["detail"] == "Token expired"]
    assert [r for r in log if r["user"] == dhc.OPERATOR and r["action"] == "token/refresh" and
            r["code"] == 200]
