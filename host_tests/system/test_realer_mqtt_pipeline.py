"""The Realer MQTT uplink pipelines its batches, against the local Realer cloud and its real
mosquitto (dynamic security, TLS): the firmware's own path (RealerMqtt + App.uplink + a real
Outbox) on the MicroPython unix port.

- The next batch is published while the previous one still waits for its application acks:
  with the first batch's acks withheld (the cloud's mqtt-silent knob) and an ack timeout far
  longer than the test, every later record still reaches the cloud and is acknowledged.
  (Before, the uplink took the next batch only when every ack of the last one was in.)
- A broker session that ends while batches wait for acks hands their records back at once:
  they are published again with the same message_id after the reconnect (the cloud answers
  `replayed`), none lost, none stored twice, each resolved once in the outbox. (Before, they
  waited out ack_timeout_s.)
Conditions with deadlines, never sleeps; the deadlines are far below the ack timeout."""
import json
import os
import signal
import subprocess

import peers
import pytest
from rig import scratch_dir, wait_for

from tools import realer_cloud, run_local

N = 60
BATCH = 20  # the default batch_max
ACK_TIMEOUT_S = 600  # the old uplink would wait this long: far beyond every deadline here


@pytest.fixture
def cloud():
    with scratch_dir("realer-mqtt-pipeline-") as d:
        data = os.path.join(d, "cloud")
        proc, info = run_local.start_cloud(data, token_ttl=3600, mqtt=True, mqtt_cred_ttl=3600)
        try:
            yield d, data, info
        finally:
            proc.send_signal(signal.SIGINT)  # the cloud stops the broker it started
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def start_device(d, info):
    dev = os.path.join(d, "dev")
    run_local.write_device(dev, info, transport="mqtt")
    path = os.path.join(dev, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg["cloud"]["ack_timeout_s"] = ACK_TIMEOUT_S
    with open(path, "w") as f:
        json.dump(cfg, f)
    if not os.path.exists(peers.MICROPYTHON):
        raise AssertionError("MicroPython unix port missing at %s: run `make deps`" %
                             peers.MICROPYTHON)
    out = os.path.join(d, "device.log")  # a file, not a pipe nobody reads while we wait
    with open(out, "w") as f:
        proc = subprocess.Popen([peers.MICROPYTHON, os.path.join(peers.HERE, "mp",
                                                                 "realer_uplink_driver.py"),
                                 dev, str(N)], stdout=f, stderr=subprocess.STDOUT,
                                env=peers.mp_env(), cwd=peers.ROOT)
    proc.log = out
    try:
        ready = wait_for("the device's broker session and readings",
                         lambda: proc.poll() is None and lines(proc), timeout=60)[0]
    except AssertionError:
        proc.kill()
        proc.wait(10)
        with open(out) as f:
            raise AssertionError("device did not start:\n" + f.read()[-3000:])
    assert ready["depth"] >= 2 and ready["batch"] == BATCH, ready
    return proc, ready["ready"]


def lines(proc):
    with open(proc.log) as f:
        return peers.json_lines(f.read())


def stored(data):
    """message_id -> how many feed rows the cloud holds for it."""
    counts: dict = {}
    for r in realer_cloud.feed_rows(data):
        counts[r["message_id"]] = counts.get(r["message_id"], 0) + 1
    return counts


def finish(proc, timeout):
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    with open(proc.log) as f:
        out = f.read()
    assert proc.returncode == 0 and len(lines(proc)) == 2, \
        "the outbox did not drain within %d s:\n%s" % (timeout, out[-3000:])
    return lines(proc)[-1], out


def test_the_next_batch_goes_out_while_the_last_waits_for_its_acks(cloud):
    d, data, info = cloud
    # the first batch is stored but never acknowledged (its ack timeout is 600 s)
    realer_cloud.admin_call(data, "fault", {"kind": "mqtt-silent", "count": BATCH})
    proc, ids = start_device(d, info)
    try:
        wait_for("every record stored while the first batch waits for its acks",
                 lambda: set(ids) <= set(stored(data)), timeout=60)
        assert proc.poll() is None  # the first batch is still pending: the outbox not empty
    finally:
        proc.kill()
        proc.wait(10)


def test_a_dropped_session_replays_the_unacknowledged_at_once_with_the_same_ids(cloud):
    d, data, info = cloud
    realer_cloud.admin_call(data, "fault", {"kind": "mqtt-silent", "count": BATCH})
    proc, ids = start_device(d, info)
    # the later batches drain past the silent first one, which waits for its acks...
    try:
        wait_for("every record stored while the first batch waits for its acks",
                 lambda: set(ids) <= set(stored(data)), timeout=60)
    except AssertionError:
        proc.kill()
        proc.wait(10)
        raise
    # ...until the broker session drops: its records come back and go out again
    realer_cloud.admin_call(data, "fault", {"kind": "drop-mqtt"})
    summary, err = finish(proc, 60)
    counts = stored(data)
    assert set(counts) == set(ids) and set(counts.values()) == {1}, counts  # once each
    assert summary["connects"] >= 2, summary  # it did reconnect
    assert summary["delivered"] == N, summary  # each record resolved once
    st = summary["stats"]
    assert (st["pending"], st["delivered"], st["dead"]) == (0, N, 0), st
    assert "published again" in err, err[-3000:]
