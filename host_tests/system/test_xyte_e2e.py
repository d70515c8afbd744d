"""The whole firmware (main.py, sim board, platform xyte) on the MicroPython unix port against
the local Xyte cloud: real TLS, real mosquitto with per-device ACLs, the server side checking
user properties, and tools/faultproxy.py in front of the broker. One session goes through
registration, telemetry, a command's lifecycle (applied once), config, licenses, space info,
the firmware event, a dump, malformed
server messages, a dropped session, a network cut, a revoked device (registers again) and a
SIGKILL with restart; at the end nothing is lost (per boot the message ids the server saw are
gap-free, each reading stored once after de-duplication) and nothing was applied twice."""
import json
import os
import re
import signal

import pytest
from rig import FirmwareRig, scratch_dir, wait_for

from tools import xyte_cloud


def _configure(cfg):
    cfg["cloud"]["register_retry_s"] = 1
    cfg["sensors"] = [{"id": 7, "quantity": "temperature", "interval_s": 1},
                      {"id": 8, "quantity": "humidity", "interval_s": 2}]
    cfg["switches"] = [{"command": 3, "flip_every_s": 3}]
    cfg["intervals"] = {"catalog_poll_s": 2, "status_s": 1}


class Rig(FirmwareRig):
    """The device talks to the hub's HTTPS API directly and to the broker through
    `broker_proxy` (the hub hands out its URL)."""

    def __init__(self, tmp):
        super().__init__(tmp, platform="xyte", configure=_configure, api_proxy=False,
                         broker_knob=lambda d, url: xyte_cloud.set_knob(d, "mqtt_hub_url", url),
                         token_ttl=0)
        self.data = self.cloud_dir

    def status(self):
        return self.last_status()

    def rows(self):
        return xyte_cloud.telemetry_rows(self.data)

    def command(self, cid):
        return [c for c in xyte_cloud.commands(self.data) if c["id"] == cid][0]


@pytest.fixture
def rig():
    with scratch_dir("xyte-e2e-") as tmp:
        r = Rig(tmp)
        try:
            yield r
        finally:
            r.stop()


def test_xyte_end_to_end(rig):
    _session(rig)


def _session(rig):
    data = rig.data
    rig.start()
    wait_for("first telemetry", lambda: len(rig.rows()) >= 4)
    first_id = xyte_cloud.devices(data)[-1]["id"]
    wait_for("update + get after connect", lambda: xyte_cloud.events(data, "get"))
    assert xyte_cloud.events(data, "update")[0]["body"] == {"firmware_version": "1.0.0",
                                                            "name": "local-xyte-demo"}

    # a command through its lifecycle, applied once; an unknown one ends in error
    c_ok = xyte_cloud.send_command(data, "set_4", {"value": 55})
    c_bad = xyte_cloud.send_command(data, "set_4", {"value": 500})
    c_unknown = xyte_cloud.send_command(data, "self_destruct")
    wait_for("commands finished", lambda: all(rig.command(c)["status"] in ("done", "error")
                                              for c in (c_ok, c_bad, c_unknown)))
    assert rig.command(c_ok)["status"] == "done"
    assert rig.command(c_ok)["history"][:2] == ["in_progress", "done"]
    assert rig.command(c_bad)["status"] == "error"
    assert rig.command(c_unknown)["status"] == "error"
    # config applied and echoed with its version; the dump carries the recent log
    version = xyte_cloud.set_config(data, {"log_level": "info", "colour": "teal"})
    wait_for("config acked", lambda: (xyte_cloud.kv_get(data, "reported_config") or {}).get(
        "version") == version)
    # licenses, space info and the firmware event reach the device and are answered/kept
    xyte_cloud.put_license(data, "L-1", "seats=3")
    xyte_cloud.set_space(data, {"name": "Hall B", "temperature_units": "fahrenheit"})
    xyte_cloud.set_firmware(data, "2.0.0", "file-77")
    wait_for("license in use", lambda: xyte_cloud.licenses(data)[0]["state"] == "inuse")
    wait_for("space kept", lambda: "space Hall B, temperature in fahrenheit" in rig.log())
    wait_for("firmware noted", lambda: "firmware 2.0.0 available (file file-77)" in rig.log())
    c_dump = xyte_cloud.send_command(data, "send_dump")
    wait_for("dump", lambda: rig.command(c_dump)["status"] == "done")
    assert "config version %s applied" % version in xyte_cloud.dumps(data)[0]["body"]

    # malformed server messages are logged and survived
    xyte_cloud.set_fault(data, "garbage")
    wait_for("garbage logged", lambda: "not JSON on" in rig.log())
    n = len(rig.rows())
    wait_for("telemetry after garbage", lambda: len(rig.rows()) >= n + 3)

    # the broker drops the session: reconnect (same credentials), get again
    gets = len(xyte_cloud.events(data, "get"))
    xyte_cloud.set_fault(data, "drop")
    wait_for("get after reconnect", lambda: len(xyte_cloud.events(data, "get")) > gets)

    # a network cut to the broker: readings taken meanwhile all arrive
    rig.broker_proxy.set(mode="blackhole")
    during = int(rig.status()["readings"])
    wait_for("readings taken during the cut",
             lambda: int(rig.status()["readings"]) >= during + 3)
    rig.broker_proxy.set(mode="pass")
    n = len(rig.rows())
    wait_for("telemetry after the cut", lambda: len(rig.rows()) >= n + 3, 40)

    # the device is deleted (key revoked): the hub says 401, the device registers again
    xyte_cloud.set_fault(data, "revoke")
    wait_for("registered again", lambda: len(xyte_cloud.devices(data)) == 2, 40)
    second_id = xyte_cloud.devices(data)[-1]["id"]
    wait_for("telemetry from the new id", lambda: [r for r in rig.rows()
                                                   if r["device"] == second_id])

    # SIGKILL right after a command was applied; the restart neither loses nor repeats it
    c_kill = xyte_cloud.send_command(data, "set_4", {"value": 66})
    wait_for("applied before the kill", lambda: "desired %s: applied" % c_kill in rig.log())
    rig.kill()
    rig.start()
    wait_for("second boot delivering", lambda: len(
        {r["message_id"].split("-")[0] for r in rig.rows()}) == 2, 30)
    wait_for("killed command done", lambda: rig.command(c_kill)["status"] == "done")
    wait_for("outbox drained", lambda: rig.status().get("pending") == "0", 30)
    rig.kill()

    log = rig.log()
    for cid in (c_ok, c_kill):
        assert log.count("desired %s: applied" % cid) == 1, cid
    assert "hub answered 401" in log and "registers again" in log
    assert xyte_cloud.events(data, "violation") == []
    # nothing lost: per boot, the message ids the server saw (telemetry and command reports)
    # are gap-free; duplicates from re-publishing were stored once
    seen = [r["message_id"] for r in rig.rows()]
    assert len(seen) == len(set(seen))
    for c in xyte_cloud.commands(data):
        seen += c["reports"]
    ids: dict = {}
    for mid in set(seen):
        boot, seq = mid.split("-")
        ids.setdefault(boot, []).append(int(seq, 16))
    assert len(ids) == 2
    for boot, seqs in ids.items():
        assert sorted(seqs) == list(range(min(seqs), max(seqs) + 1)), "gap in boot %s" % boot
    assert {r["device"] for r in rig.rows()} == {first_id, second_id}
    # the access keys never reached the log
    keys = [k for (k,) in xyte_cloud.db(data).execute("select access_key from device")]
    assert not [k for k in keys + [rig.cloud["hardware_key"]] if k in log]


def test_xyte_firmware_message_hands_the_file_record_to_the_updater(rig):
    """With an OTA key configured the app gives the adapter an updater: a firmware message
    makes the device read files/<id> from the hub and start the updater on the record's URL
    (the local cloud records the download; it serves no bundle, so the update fails and the
    app runs on). A record without an https URL is only logged."""
    data = rig.data
    path = os.path.join(rig.device, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg["ota"] = {"public_key": "11" * 32}
    with open(path, "w") as f:
        json.dump(cfg, f)
    hub = rig.cloud["device_cloud"]["registration_url"].rstrip("/")
    xyte_cloud.set_file(data, "fw-8", "http://127.0.0.1/plain.bin", "ab" * 32)
    xyte_cloud.set_file(data, "fw-9", hub + "/bundles/fw-9.bin", "cd" * 32)
    rig.start()
    wait_for("session up", lambda: xyte_cloud.events(data, "get"))
    xyte_cloud.set_firmware(data, "1.9.0", "fw-8")
    wait_for("plain http refused", lambda: "without an https url" in rig.log())
    assert xyte_cloud.events(data, "bundle") == []
    xyte_cloud.set_firmware(data, "2.0.0", "fw-9")
    wait_for("the bundle download", lambda: xyte_cloud.events(data, "bundle"))
    wait_for("the update given up", lambda: "update 2.0.0 failed" in rig.log())
    n = len(rig.rows())
    wait_for("telemetry after the failed update", lambda: len(rig.rows()) > n)
    assert rig.fw.poll() is None
    log = rig.log()
    assert [e["body"] for e in xyte_cloud.events(data, "file")] == ["fw-8", "fw-9"]
    assert [e["body"] for e in xyte_cloud.events(data, "bundle")] == ["fw-9.bin"]
    assert "firmware 2.0.0 available (file fw-9)" in log
    assert "crashed" not in log and "Traceback" not in log


def test_sigint_says_offline_and_stops(rig):
    """Ctrl-C on the host: main() stops the tasks and the adapter's close() publishes an
    `offline` telemetry message before the session ends; the log says "stopped", exit 0."""
    rig.start()
    wait_for("first telemetry", lambda: len(rig.rows()) >= 2, log=rig.log)
    rig.fw.send_signal(signal.SIGINT)
    # the adapter's orderly close runs on a busy machine too: wait for the exit itself
    wait_for("the firmware to stop on SIGINT", lambda: rig.fw.poll() is not None, 60,
             log=rig.log)
    code = rig.fw.returncode
    # the broker hands the last publish to the server side asynchronously
    wait_for("offline telemetry", lambda: [r for r in rig.rows() if r["status"] == "offline"],
             log=rig.log)
    log = rig.log()
    assert code == 0, log[-2000:]
    assert re.search(r" app: stopped", log) and "Traceback" not in log, log[-2000:]
    assert xyte_cloud.events(rig.data, "violation") == []
