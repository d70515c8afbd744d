"""The frozen image (`make frozen`: the unix port, 32-bit like the ESP32, firmware/, boot.py and
main.py frozen from manifest.py) runs Realer over HTTPS and over MQTT under
`-X heapsize=64K`: readings delivered and stored, an operator's desired value applied and
reported, and no `MemoryError` / `memory allocation failed` in the log. The same firmware from
`.mpy` needs 112K / 140K on this interpreter (bench/memory.md), so a memory regression of the
frozen image fails here.

The firmware runs from a data root holding only config.json, the CA and what the firmware
writes, with only `.frozen` on the path: nothing on the filesystem can shadow the frozen code."""
import os
import re
import subprocess

import pytest
import rig
from rig import scratch_dir

from tools import realer_cloud, run_local

ROOT = run_local.ROOT
FROZEN_MP = os.path.join(ROOT, "build", "frozen-32", "micropython")
HEAP = "64K"
MEMORY_ERRORS = ("MemoryError", "memory allocation failed")


def wait_for(what, cond, log, timeout=120):
    """Out of heap: no need to wait for the deadline."""
    try:
        return rig.wait_for(what, cond, timeout, step=0.5, log=log, fail_on=MEMORY_ERRORS)
    except AssertionError as e:
        raise AssertionError("heapsize=%s: %s" % (HEAP, e))


@pytest.fixture(scope="module")
def frozen_mp():
    """`make frozen` (a no-op when the image is up to date)."""
    try:
        out = subprocess.run(["make", "frozen"], cwd=ROOT, capture_output=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.fail("cannot build the frozen interpreter (make frozen): %s" % e)
    if out.returncode != 0 or not os.path.exists(FROZEN_MP):
        pytest.fail("cannot build the frozen interpreter (make frozen, exit %d):\n%s" % (
            out.returncode, (out.stdout + out.stderr).decode(errors="replace")[-3000:]))
    return FROZEN_MP


def run_realer(frozen, transport):
    with scratch_dir("frozen-image-") as tmp:
        r = rig.FirmwareRig(tmp, api_proxy=False, transport=transport,
                            mqtt=transport == "mqtt")
        try:
            _run(r, frozen, transport)
        finally:
            r.stop()


def _run(r, frozen, transport):
    cloud_dir, device, log = r.cloud_dir, r.device, r.log
    # no code in the data root: the firmware can only come from the image
    assert not [n for n in os.listdir(device) if n.endswith((".py", ".mpy"))]
    assert not os.path.exists(os.path.join(device, "firmware"))
    argv, cwd, env = run_local.frozen_cmd(device, frozen, HEAP)
    assert env["MICROPYPATH"] == ".frozen"
    r.fw = subprocess.Popen(argv, cwd=cwd, env=env, stdout=r.log_file, stderr=subprocess.STDOUT)
    wait_for("readings stored by the cloud",
             lambda: len([row for row in realer_cloud.feed_rows(cloud_dir)
                          if row["source"].startswith("sensor")]) >= 3, log)
    desired = realer_cloud.admin_call(cloud_dir, "desired",
                                      {"command": 4, "value": "37"})["desired_id"]
    rows = wait_for("desired value 37 applied and reported",
                    lambda: [row for row in realer_cloud.feed_rows(cloud_dir)
                             if row["desired_id"] == desired], log)
    assert rows[0]["value"] == "37" and rows[0]["report_status"] is None, rows
    status = wait_for("a status line after the desired value",
                      lambda: re.findall(r"status: readings=\d+ delivered=(\d+) "
                                         r"pending=\d+ dead=\d+ applied=([1-9]\d*)"
                                         r".*?(mode=\w+)?", log()), log)
    assert int(status[-1][0]) > 0
    assert r.fw.poll() is None, "the firmware exited:\n" + log()[-3000:]
    text = log()
    if transport == "mqtt":
        assert "mode=mqtt" in text, text[-3000:]
        assert {row["transport"] for row in realer_cloud.feed_rows(cloud_dir)} >= {"mqtt"}
    for marker in MEMORY_ERRORS:
        assert marker not in text, "%r at heapsize=%s:\n%s" % (marker, HEAP, text[-3000:])


def test_realer_https_on_frozen_image_in_64k(frozen_mp):
    run_realer(frozen_mp, "https")


def test_realer_mqtt_on_frozen_image_in_64k(frozen_mp):
    run_realer(frozen_mp, "mqtt")
