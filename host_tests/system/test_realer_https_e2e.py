"""The whole firmware (main.py, sim board) on the MicroPython unix port against the local
Realer cloud over real TLS, through the fault proxy: tokens, desired state, local changes,
faults, a network cut and a SIGKILL, with nothing lost and nothing applied twice."""
import base64

import pytest
from rig import FirmwareRig, scratch_dir, wait_for

from tools import realer_cloud


def _configure(cfg):
    cfg["sensors"] = [{"id": 7, "quantity": "temperature", "interval_s": 1},
                      {"id": 8, "quantity": "humidity", "interval_s": 2}]
    cfg["switches"] = [{"command": 3, "flip_every_s": 3}]
    cfg["intervals"] = {"catalog_poll_s": 1, "status_s": 1}


class Rig(FirmwareRig):
    def __init__(self, tmp):
        super().__init__(tmp, configure=_configure, token_ttl=4)

    def rows(self):
        return realer_cloud.feed_rows(self.cloud_dir)


@pytest.fixture
def rig():
    with scratch_dir("realer-https-e2e-") as tmp:
        r = Rig(tmp)
        try:
            yield r
        finally:
            r.stop()


def sensor_rows(rig):
    return [r for r in rig.rows() if r["source"].startswith("sensor:")]


def test_realer_https_end_to_end(rig):
    rig.start()
    wait_for("first readings", lambda: len(sensor_rows(rig)) >= 4)

    # desired state: applied once with the observed value, rejected, stale
    d_ok = realer_cloud.set_desired(rig.cloud_dir, 4, 55)
    wait_for("applied report", lambda: [r for r in rig.rows() if r["desired_id"] == d_ok])
    d_bad = realer_cloud.set_desired(rig.cloud_dir, 4, 500)
    wait_for("rejected report", lambda: [r for r in rig.rows() if r["desired_id"] == d_bad])
    d_old = realer_cloud.set_desired(rig.cloud_dir, 4, 20, ttl=-60)
    wait_for("stale report", lambda: [r for r in rig.rows() if r["desired_id"] == d_old])

    # faults: a 401 mid-flight, then 429 with Retry-After, then a network cut
    realer_cloud.set_knob(rig.cloud_dir, "fault", {"kind": "401", "count": 1})
    # one fault knob at a time: the 429 would replace the 401 before any request met it
    wait_for("the 401 answered", lambda: "401 on" in rig.log())
    realer_cloud.set_knob(rig.cloud_dir, "fault", {"kind": "429", "count": 2, "retry_after": 2})
    n = len(sensor_rows(rig))
    wait_for("readings after faults", lambda: len(sensor_rows(rig)) >= n + 3)
    rig.proxy.set(mode="blackhole")
    during = int(rig.last_status()["readings"])
    wait_for("readings taken during the cut",
             lambda: int(rig.last_status()["readings"]) >= during + 4)
    cut_readings = int(rig.last_status()["readings"])
    rig.proxy.set(mode="pass")
    wait_for("readings taken during the cut", lambda: len(sensor_rows(rig)) >= cut_readings, 60)

    # SIGKILL mid-stream, restart: pending records replayed with the same ids
    rig.kill()
    rig.start()
    wait_for("second boot delivering", lambda: len(
        {r["message_id"].split("-")[0] for r in sensor_rows(rig)}) == 2, 30)
    wait_for("outbox drained", lambda: rig.last_status().get("pending") == "0", 30)
    rig.kill()

    rows = rig.rows()
    log = rig.log()
    # each desired value reported exactly once, with the right status, across the reboot
    by_desired = {}
    for r in rows:
        if r["desired_id"]:
            by_desired.setdefault(r["desired_id"], []).append(r)
    assert [(r["value"], r["report_status"]) for r in by_desired[d_ok]] == [("55", None)]
    assert [r["report_status"] for r in by_desired[d_bad]] == ["rejected"]
    assert [r["report_status"] for r in by_desired[d_old]] == ["stale"]
    # local switch flips reported without desired_id
    assert any(r["source"] == "command:3" and r["desired_id"] is None for r in rows)
    # nothing lost: per boot, the message ids the cloud created are gap-free
    ids = {}
    for r in rows:
        boot, seq = r["message_id"].split("-")
        ids.setdefault(boot, []).append(int(seq, 16))
    for boot, seqs in ids.items():
        assert sorted(seqs) == list(range(min(seqs), max(seqs) + 1)), "gap in boot %s" % boot
    assert len(ids) == 2
    assert sorted(int(b, 16) for b in ids)[1] == sorted(int(b, 16) for b in ids)[0] + 1
    # tokens were renewed (ttl 4 s) and the 401 led to a fresh token, never a logged secret
    assert log.count("token issued") >= 3
    assert "401 on" in log
    # 429 Retry-After: 2 was honoured: by the uplink as a floor, or by the client, which
    # sends nothing to the host until it passes
    assert "(server asked 2 s)" in log or "answered 429: no request to it for 2 s" in log
    # the whole log of both runs holds no secret: client secret, Basic value, any token
    secrets = [rig.cloud["client_secret"]] + [t for (t,) in realer_cloud.db(
        rig.cloud_dir).execute("select token from token")]
    basic = base64.b64encode(("%s:%s" % (rig.cloud["client_id"],
                                         rig.cloud["client_secret"])).encode()).decode()
    assert len(secrets) >= 4
    assert not [s for s in secrets + [basic] if s in log]
