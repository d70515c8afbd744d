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
import time

import pytest

from tools import realer_cloud, run_local

ROOT = run_local.ROOT
FROZEN_MP = os.path.join(ROOT, "build", "frozen-32", "micropython")
HEAP = "64K"
MEMORY_ERRORS = ("MemoryError", "memory allocation failed")


def wait_for(what, cond, log, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        text = log()
        for marker in MEMORY_ERRORS:  # out of heap: no need to wait for the deadline
            assert marker not in text, "%r at heapsize=%s:\n%s" % (marker, HEAP, text[-3000:])
        value = cond()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError("timed out after %d s waiting for %s; log tail:\n%s" % (
        timeout, what, log()[-3000:]))


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


def run_realer(tmp, frozen, transport):
    cloud_dir = os.path.join(tmp, "cloud")
    device = os.path.join(tmp, "device")
    log_path = os.path.join(tmp, "device.log")
    cloud_proc, cloud = run_local.start_cloud(cloud_dir, mqtt=transport == "mqtt")
    fw = None

    def log():
        with open(log_path, errors="replace") as f:
            return f.read()

    try:
        run_local.write_device(device, cloud, transport=transport)
        # no code in the data root: the firmware can only come from the image
        assert not [n for n in os.listdir(device) if n.endswith((".py", ".mpy"))]
        assert not os.path.exists(os.path.join(device, "firmware"))
        argv, cwd, env = run_local.frozen_cmd(device, frozen, HEAP)
        assert env["MICROPYPATH"] == ".frozen"
        with open(log_path, "wb") as log_file:
            fw = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log_file,
                                  stderr=subprocess.STDOUT)
        wait_for("readings stored by the cloud",
                 lambda: len([r for r in realer_cloud.feed_rows(cloud_dir)
                              if r["source"].startswith("sensor")]) >= 3, log)
        desired = realer_cloud.admin_call(cloud_dir, "desired",
                                          {"command": 4, "value": "37"})["desired_id"]
        rows = wait_for("desired value 37 applied and reported",
                        lambda: [r for r in realer_cloud.feed_rows(cloud_dir)
                                 if r["desired_id"] == desired], log)
        assert rows[0]["value"] == "37" and rows[0]["report_status"] is None, rows
        status = wait_for("a status line after the desired value",
                          lambda: re.findall(r"status: readings=\d+ delivered=(\d+) "
                                             r"pending=\d+ dead=\d+ applied=([1-9]\d*)"
                                             r".*?(mode=\w+)?", log()), log)
        assert int(status[-1][0]) > 0
        assert fw.poll() is None, "the firmware exited:\n" + log()[-3000:]
        text = log()
        if transport == "mqtt":
            assert "mode=mqtt" in text, text[-3000:]
            assert {r["transport"] for r in realer_cloud.feed_rows(cloud_dir)} >= {"mqtt"}
        for marker in MEMORY_ERRORS:
            assert marker not in text, "%r at heapsize=%s:\n%s" % (marker, HEAP, text[-3000:])
    finally:
        if fw is not None and fw.poll() is None:
            fw.kill()
            fw.wait(10)
        cloud_proc.kill()
        cloud_proc.wait(10)


def test_realer_https_on_frozen_image_in_64k(frozen_mp, tmp_path):
    run_realer(str(tmp_path), frozen_mp, "https")


def test_realer_mqtt_on_frozen_image_in_64k(frozen_mp, tmp_path):
    run_realer(str(tmp_path), frozen_mp, "mqtt")
