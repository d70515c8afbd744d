"""The whole firmware (main.py, sim board) on the MicroPython unix port against the local
DeviceHive cloud over real TLS, through the fault proxy: token expiry and refresh, commands
applied once and updated, an expired command, malformed server messages, a network cut and
a SIGKILL, with nothing lost and nothing applied twice; and a fuzz of the adapter's handling
of arbitrary server JSON."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rig import FirmwareRig, scratch_dir, wait_for

from tools import devicehive_cloud as dhc


def _configure(cfg):
    cfg["cloud"]["ack_timeout_s"] = 2
    cfg["sensors"] = [{"id": 7, "quantity": "temperature", "interval_s": 1},
                      {"id": 8, "quantity": "humidity", "interval_s": 2}]
    cfg["switches"] = [{"command": 3, "flip_every_s": 3}]
    cfg["intervals"] = {"catalog_poll_s": 5, "status_s": 1}


TOKEN_TTL = 300  # expired by the cloud's clock knob, not waited out


class Rig(FirmwareRig):
    def __init__(self, tmp):
        super().__init__(tmp, platform="devicehive", configure=_configure, scheme="wss",
                         token_ttl=TOKEN_TTL)

    def notes(self):
        return dhc.notifications(self.cloud_dir)

    def sensor_notes(self):
        return [n for n in self.notes() if n["notification"] == "sensor"]

    def command(self, cid):
        return [c for c in dhc.commands(self.cloud_dir) if c["id"] == cid][0]

    def requests(self, action=None):
        return [r for r in dhc.request_log(self.cloud_dir, action) if r["user"] == dhc.DEVICE_USER]


@pytest.fixture
def rig():
    with scratch_dir("devicehive-e2e-") as tmp:
        r = Rig(tmp)
        try:
            yield r
        finally:
            r.stop()


def done(rig, cid):
    return rig.command(cid)["status"]


def test_devicehive_end_to_end(rig):
    rig.start()
    wait_for("first readings", lambda: len(rig.sensor_notes()) >= 3)

    # commands: applied once with the observed value, rejected (out of range), expired
    ok = dhc.send_command(rig.cloud_dir, "4", 55, lifetime=60)
    bad = dhc.send_command(rig.cloud_dir, "4", 500, lifetime=60)
    old = dhc.send_command(rig.cloud_dir, "4", 20, lifetime=30, age=120)
    wait_for("three command updates", lambda: all(done(rig, c) for c in (ok, bad, old)))
    assert (done(rig, ok), rig.command(ok)["result"]["value"]) == ("applied", "55")
    assert done(rig, bad) == "rejected"
    assert (done(rig, old), rig.command(old)["result"]["value"]) == ("expired", "55")

    # the access token expires on the open socket (the cloud's clock moves past its lifetime):
    # 401, token/refresh, authenticate
    dhc.set_knob(rig.cloud_dir, "clock", TOKEN_TTL + 1)
    wait_for("a token refresh", lambda: [r for r in rig.requests("token/refresh")
                                         if r["code"] == 200])
    assert [r for r in rig.requests() if r["code"] == 401 and r["detail"] == "Token expired"]

    # malformed server messages: logged, and the same socket goes on delivering
    conn_before = rig.requests("notification/insert")[-1]["conn"]
    dhc.set_knob(rig.cloud_dir, "garbage", {"count": 1})
    wait_for("garbage sent", lambda: rig.requests("garbage (fault knob)"))
    n = len(rig.sensor_notes())
    wait_for("readings after the garbage", lambda: len(rig.sensor_notes()) >= n + 2)
    assert rig.requests("notification/insert")[-1]["conn"] == conn_before
    log = rig.log()
    assert "message is not JSON; ignored" in log and "no/such/action" in log
    assert "command without a usable id or name; ignored" in log

    # network cut: readings and a command sent meanwhile arrive afterwards, once each
    rig.proxy.set(mode="blackhole")
    during = int(rig.last_status()["readings"])
    wait_for("readings taken during the cut",
             lambda: int(rig.last_status()["readings"]) >= during + 3)
    offline = dhc.send_command(rig.cloud_dir, "4", 77, lifetime=120)
    wait_for("a reading after the offline command",
             lambda: int(rig.last_status()["readings"]) >= during + 4)
    cut_readings = int(rig.last_status()["readings"])
    rig.proxy.set(mode="pass")
    wait_for("the offline command applied", lambda: done(rig, offline) == "applied", 25)
    wait_for("readings taken during the cut",
             lambda: len(rig.sensor_notes()) >= cut_readings, 20)

    # SIGKILL mid-stream, restart: pending records replayed, no command applied again
    rig.kill()
    rig.start()
    wait_for("second boot delivering", lambda: len(
        {n["parameters"]["message_id"].split("-")[0] for n in rig.sensor_notes()}) == 2)
    wait_for("outbox drained", lambda: rig.last_status().get("pending") == "0", 20)
    rig.kill()

    log = rig.log()
    # each command handled exactly once over both boots and every reconnect; its report
    # may reach the cloud twice (SIGKILL after the cloud took it, before the outbox knew),
    # but then as a replay of the same record, never a second application
    for cid, status in ((ok, "applied"), (bad, "rejected"), (old, "stale"),
                        (offline, "applied")):
        assert log.count("desired %d: %s" % (cid, status)) == 1, cid
        updates = {r["detail"] for r in rig.requests("command/update")
                   if r["detail"].split()[0] == str(cid)}
        assert len(updates) == 1, (cid, updates)
    # after a reconnect / reboot the device subscribed from its last handled command
    froms = [r["detail"] for r in rig.requests("command/subscribe-from")]
    assert froms[0] == "now" and rig.command(offline)["timestamp"] in froms[-1]
    assert len(froms) >= 3  # first session, after the cut, after the reboot
    # nothing lost: per boot, the message ids the cloud stored are gap-free, none twice
    mids = [n["parameters"]["message_id"] for n in rig.notes()]
    assert len(mids) == len(set(mids))
    mids += [c["result"]["message_id"] for c in dhc.commands(rig.cloud_dir) if c["result"]]
    ids: dict = {}
    for mid in mids:
        boot, seq = mid.split("-")
        ids.setdefault(boot, []).append(int(seq, 16))
    assert len(ids) == 2
    for boot, seqs in ids.items():
        assert sorted(seqs) == list(range(min(seqs), max(seqs) + 1)), "gap in boot %s" % boot
    # tokens never in the log
    tokens = [rig.cloud["device_cloud"]["access_token"],
              rig.cloud["device_cloud"]["refresh_token"]]
    assert not [t for t in tokens if t in log]


# -- fuzz: the adapter's message handling on arbitrary server JSON (no socket needed) -----

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) |
                     st.text(max_size=20),
                     lambda kids: st.lists(kids, max_size=4) |
                     st.dictionaries(st.text(max_size=12), kids, max_size=5), max_leaves=20)
_command = st.fixed_dictionaries({}, optional={
    "id": _json | st.integers(), "command": _json | st.sampled_from(["3", "4", "x"]),
    "parameters": _json, "timestamp": _json | st.just("2026-04-24T10:15:00.000"),
    "lifetime": _json | st.integers(-5, 100), "deviceId": _json | st.just("esp32-sim-1")})
_message = st.fixed_dictionaries({}, optional={
    "action": _json | st.sampled_from(["command/insert", "authenticate", "x"]),
    "requestId": _json | st.just("0-1"), "status": _json, "code": _json,
    "command": _command | _json, "subscriptionId": _json})


class _Cfg:
    ca_path = None
    root = None

    def get(self, key, default=None):
        return {"cloud": {"api_url": "wss://h", "device_id": "esp32-sim-1",
                          "access_token": "acc-token-x", "refresh_token": "ref-token-x"},
                "commands": [{"id": 3}, {"id": 4}]}.get(key, default)


@settings(max_examples=400, deadline=None)
@given(msg=_message | _json, raw=st.booleans())
def test_adapter_survives_fuzzed_server_messages(tmp_path_factory, msg, raw):
    from firmware.clouds import devicehive as dh

    cfg = _Cfg()
    cfg.root = str(tmp_path_factory.mktemp("dhfuzz"))
    cloud = dh.DeviceHive(cfg)
    got: list = []
    cloud.on_desired = got.append
    cloud._responses["0-1"] = None
    text = json.dumps(msg)
    cloud.dispatch(text[: len(text) // 2] if raw else text)  # never raises
    for d in got:  # what reaches the app is well-typed
        assert set(d) == {"id", "desired_id", "value", "expires_at"}
        assert isinstance(d["desired_id"], (int, str)) and not isinstance(d["desired_id"], bool)
        assert d["expires_at"] is None or isinstance(d["expires_at"], int)
