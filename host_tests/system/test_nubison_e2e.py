"""The whole firmware (main.py, sim board) on the MicroPython unix port against the local
NUBISON cloud over real TLS, through the fault proxy: login and one registration, token
expiry, malformed answers, a network cut that loses answers, a SIGKILL and a restart; every
reading's message_id stored exactly once, nothing lost, the device registered once."""
import base64
import re
import signal

import pytest
from rig import FirmwareRig, scratch_dir, wait_for

from tools import nubison_cloud as nc


def _configure(cfg):
    cfg["sensors"] = [{"id": 7, "quantity": "temperature", "interval_s": 1},
                      {"id": 8, "quantity": "humidity", "interval_s": 2}]
    cfg["switches"] = [{"command": 3, "flip_every_s": 3}]
    cfg["intervals"] = {"catalog_poll_s": 1, "status_s": 1}


class Rig(FirmwareRig):
    def __init__(self, tmp):
        super().__init__(tmp, platform="nubison", configure=_configure, token_ttl=300)

    def rows(self):
        return nc.data_rows(self.cloud_dir)

    def count(self, event):
        return nc.count(self.cloud_dir, event)


@pytest.fixture
def rig():
    with scratch_dir("nubison-e2e-") as tmp:
        r = Rig(tmp)
        try:
            yield r
        finally:
            r.stop()


def test_nubison_end_to_end(rig):
    rig.start()
    wait_for("first readings", lambda: len(rig.rows()) >= 4)
    assert rig.count("register") == 1 and rig.count("login") == 1

    # the token expires (the cloud's knob, instead of waiting out a short lifetime) and the
    # device is not told: a 401, one new login, same message_id
    nc.expire_tokens(rig.cloud_dir)
    wait_for("re-login after token expiry", lambda: rig.count("login") >= 2)
    assert rig.count("unauthorized") >= 1

    # malformed answers: wrong types on data (500 with a list as message), broken JSON on a
    # login after the token expired, a 503 with Retry-After
    nc.set_fault(rig.cloud_dir, "wrong-types", count=2)
    wait_for("wrong-typed answers used up", lambda: "http 500; kept" in rig.log())
    logins = rig.count("login")
    nc.set_fault(rig.cloud_dir, "garbage", count=2)  # the 401's answer, then the login's
    nc.expire_tokens(rig.cloud_dir)
    wait_for("garbage login survived", lambda: "without a readable AccessToken" in rig.log())
    wait_for("a good login after it", lambda: rig.count("login") >= logins + 2)
    nc.set_fault(rig.cloud_dir, "503", count=1, retry_after=2)
    n = len(rig.rows())
    wait_for("readings after the faults", lambda: len(rig.rows()) >= n + 3)
    assert "(server asked 2 s)" in rig.log()

    # a network cut: the cloud stores a data call and its connection is reset before the
    # answer (the cloud's knob: a proxy switched from here raced the answer in flight and cut
    # the next connection's handshake instead), then refused connects
    nc.set_fault(rig.cloud_dir, "lost-answer", count=1)
    wait_for("a delivery whose answer is lost", lambda: rig.count("lost-answer") == 1, 30,
             log=rig.log)
    conns = rig.proxy.connections
    rig.proxy.set(mode="refuse")
    # a connection the device opened just before keeps passing in refuse mode: cut it too
    rig.proxy.drop()
    # the uplink's backoff (full jitter, doubling per failure) decides when it tries again:
    # after a few failures on a busy machine that was more than 30 s once
    wait_for("a refused reconnect", lambda: rig.proxy.connections > conns, 90, log=rig.log)
    during = int(rig.last_status()["readings"])
    wait_for("readings taken during the cut",
             lambda: int(rig.last_status()["readings"]) >= during + 2)
    cut_readings = int(rig.last_status()["readings"])
    rig.proxy.set(mode="pass")
    wait_for("readings taken during the cut", lambda: len(rig.rows()) >= cut_readings, 25)

    # SIGKILL mid-stream; the restart replays what was pending, logs in, does not register
    logins = rig.count("login")
    rig.kill()
    rig.start()
    wait_for("second boot delivering", lambda: len(
        {r["message_id"].split("-")[0] for r in rig.rows()}) == 2)
    wait_for("outbox drained", lambda: rig.last_status().get("pending") == "0")
    rig.kill()

    rows = rig.rows()
    log = rig.log()
    assert rig.count("login") > logins
    assert [(r["device_key"], r["registrations"]) for r in nc.registrations(rig.cloud_dir)] \
        == [(nc.DEVICE_KEY, 1)]
    assert rig.count("register") == 1
    # nothing lost: per boot the stored message ids are gap-free; stored once each, and
    # every replay carried the same data as the first delivery
    ids: dict = {}
    for r in rows:
        assert r["data"]["message_id"] == r["message_id"]
        boot, seq = r["message_id"].split("-")
        ids.setdefault(boot, []).append(int(seq, 16))
    assert len(ids) == 2
    for boot, seqs in ids.items():
        assert sorted(seqs) == list(range(min(seqs), max(seqs) + 1)), "gap in boot %s" % boot
    assert sum(r["replays"] for r in rows) >= 1  # the cut lost at least one answer
    assert not [r for r in rows if r["conflicts"]]
    # readings and the switch's state changes both went out as data
    kinds = {(r["data"]["kind"], r["data"]["id"]) for r in rows}
    assert {("sensor", 7), ("sensor", 8), ("command", 3)} <= kinds
    assert all(isinstance(r["data"]["value"], str) for r in rows)
    assert "logging in again, same message_id" in log and "crashed" not in log
    secrets = [rig.cloud["client_secret"]] + nc.tokens(rig.cloud_dir)
    basic = base64.b64encode(("%s:%s" % (rig.cloud["client_id"],
                                         rig.cloud["client_secret"])).encode()).decode()
    assert len(secrets) >= 4
    assert not [s for s in secrets + [basic] if s in log]


def test_sigint_logs_out_and_stops(rig):
    """Ctrl-C on the host: main() stops the tasks, the adapter logs out (the cloud records
    it and drops the token), the log says "stopped" and the process exits 0."""
    rig.start()
    wait_for("first delivery", lambda: len(rig.rows()) >= 1)
    assert rig.count("logout") == 0 and len(nc.tokens(rig.cloud_dir)) >= 1
    rig.fw.send_signal(signal.SIGINT)
    try:
        code = rig.fw.wait(15)
    except Exception:
        raise AssertionError("firmware did not stop on SIGINT:\n" + rig.log()[-2000:])
    log = rig.log()
    assert code == 0, log[-2000:]
    assert rig.count("logout") == 1, (nc.timeline(rig.cloud_dir)[-5:], log[-2000:])
    assert nc.timeline(rig.cloud_dir)[-1]["event"] == "logout"
    assert "logout: http 200" in log and re.search(r" app: stopped", log), log[-2000:]
    assert "crashed" not in log and "Traceback" not in log
