"""The low-power duty cycle end to end: main.py on the MicroPython unix port (no RTC there, so
the wake state lives in the data root's lowpower.state file and deep sleep is a pause) against
the local Realer cloud over TLS through the fault proxy. Each wake samples, applies desired
state, flushes and sleeps; during an outage readings are kept and the radio is skipped on
some wakes; afterwards everything arrives, each message_id once, with no gap."""
import json
import os
import re

import pytest
from rig import FirmwareRig, scratch_dir
from rig import wait_for as _wait_for

from tools import realer_cloud


def wait_for(what, cond, timeout=60):
    return _wait_for(what, cond, timeout)  # a low-power cycle is slow: a longer deadline


def _configure(cfg):
    cfg["switches"] = []
    cfg["intervals"] = {"catalog_poll_s": 1, "status_s": 1}
    cfg["lowpower"] = {"enabled": True, "budget_s": 4, "sleep_s": 2}


class Rig(FirmwareRig):
    def __init__(self, tmp):
        super().__init__(tmp, configure=_configure, token_ttl=300)
        self.start()

    def wakes(self):
        return re.findall(r"wake (\d+): readings=\d+ pending=(\d+) network=(\w+)", self.log())

    def sensor_rows(self):
        return [r for r in realer_cloud.feed_rows(self.cloud_dir)
                if r["source"].startswith("sensor:")]


@pytest.fixture
def rig():
    with scratch_dir("lowpower-e2e-") as tmp:
        r = Rig(tmp)
        try:
            yield r
        finally:
            r.stop()


def test_lowpower_cycles_deliver_everything_through_an_outage(rig):
    # each wake reads both sensors once and drains the outbox before it sleeps
    wait_for("two drained wakes", lambda: sum(
        1 for _, pending, net in rig.wakes() if pending == "0" and net == "yes") >= 2)
    assert rig.fw.poll() is None, rig.log()[-2000:]
    assert len(rig.sensor_rows()) >= 4

    # desired state set while the board sleeps is applied on a later wake
    d_ok = realer_cloud.set_desired(rig.cloud_dir, 4, 42)
    wait_for("applied report", lambda: [r for r in realer_cloud.feed_rows(rig.cloud_dir)
                                        if r["desired_id"] == d_ok])

    # outage: wakes keep sampling, fail to flush, then skip the radio on some wakes
    rig.proxy.set(mode="blackhole")
    seen = len(rig.wakes())
    wait_for("a wake that skipped the radio", lambda: any(
        net == "skipped" for _, _, net in rig.wakes()[seen:]), 90)
    kept = [int(p) for _, p, _ in rig.wakes()[seen:]]
    assert max(kept) >= 2  # readings were kept, not dropped
    rig.proxy.set(mode="pass")
    wait_for("drained after the outage", lambda: rig.wakes()[-1][1] == "0" and
             rig.wakes()[-1][2] == "yes", 120)
    rig.fw.kill()
    rig.fw.wait(10)

    rows = rig.sensor_rows()
    ids = [r["message_id"] for r in rows]
    assert len(ids) == len(set(ids))  # each reading created once
    seqs = sorted(int(m.split("-")[1], 16) for m in ids)
    all_rows = realer_cloud.feed_rows(rig.cloud_dir)
    all_seqs = sorted(int(r["message_id"].split("-")[1], 16) for r in all_rows)
    assert all_seqs == list(range(all_seqs[0], all_seqs[-1] + 1)), "a record was lost"
    assert len(seqs) == 2 * len(rig.wakes())  # two sensors read on every wake, all delivered
    with open(os.path.join(rig.device, "lowpower.state")) as f:
        state = json.load(f)
    assert state["n"] == len(rig.wakes()) and state["fail"] == 0
    assert "Traceback" not in rig.log()
