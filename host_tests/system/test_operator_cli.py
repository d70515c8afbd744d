"""The local clouds' operator commands as a user types them while `make run` runs: each says
what it did, `--wait` prints the device's answer when it arrives (or says none came), and
show-device prints human times and statuses rather than epochs and nulls. The device is the
real firmware on the MicroPython unix port."""
import os
import re
import subprocess
import sys

import pytest
from rig import FirmwareRig, scratch_dir, wait_for

from tools import operator_cli, run_local

ROOT = run_local.ROOT


def cli(platform, *args, timeout=90):
    return subprocess.run([sys.executable, "-m", "tools.%s_cloud" % platform, *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def rig(request):
    """A local cloud and the firmware against it (no proxy), until the first status line."""
    with scratch_dir("operator-cli-") as tmp:
        r = FirmwareRig(tmp, platform=request.param, api_proxy=False)
        try:
            r.start()
            wait_for("the firmware's first status line", lambda: " status: " in r.log()
                     or r.fw.poll() is not None, 60)
            assert r.fw.poll() is None, "firmware exited:\n" + r.log()[-3000:]
            r.data = r.cloud_dir
            yield r
        finally:
            r.stop()


@pytest.mark.parametrize("rig", ["realer"], indirect=True)
def test_realer_set_desired_waits_for_the_report_and_show_device_reads_well(rig):
    out = cli("realer", "set-desired", "--data", rig.data, "4", "42", "--ttl", "600",
              "--wait", "60")
    assert out.returncode == 0, out.stdout + out.stderr
    said = re.search(r"^command 4: desired value 42 set \(desired_id (des_\w+), expires in "
                     r"10 min\); the device picks it up", out.stdout, re.M)
    assert said, out.stdout
    assert re.search(r"^device reported command 4 = 42: applied, \d{4}-\d\d-\d\d "
                     r"\d\d:\d\d:\d\d UTC \(\d+ s ago\)$", out.stdout, re.M), out.stdout
    show = cli("realer", "show-device", "--data", rig.data).stdout
    line = [x for x in show.splitlines() if x.startswith("  command 4 ")][0]
    assert "desired 42 (%s, expires " % said.group(1) in line and "(in 9 min" in line, show
    assert "reported 42: applied for %s" % said.group(1) in line, show
    assert "null" not in show and not re.search(r"\b1[6-9]\d{8}\b", show), show  # no epochs
    assert re.search(r"^  sensor 7 \([\w ]+\): [\d.]+, .* UTC \(\d+ s ago\)$", show, re.M), show


@pytest.mark.parametrize("rig", ["devicehive"], indirect=True)
def test_devicehive_send_command_waits_for_the_answer(rig):
    out = cli("devicehive", "send-command", "--data", rig.data, "4", "42", "--wait", "60")
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"^command 4 queued: 4 = 42 \(id \d+\); the device gets it", out.stdout,
                     re.M), out.stdout
    assert re.search(r"^device answered command \d+: \w+", out.stdout, re.M), out.stdout
    show = cli("devicehive", "show-device", "--data", rig.data).stdout
    assert re.search(r"^  command \d+ 4 \{\"value\": 42\}: \w+.*, sent .* UTC \(", show,
                     re.M), show


@pytest.mark.parametrize("rig", ["xyte"], indirect=True)
def test_xyte_send_command_waits_for_the_answer(rig):
    out = cli("xyte", "send-command", "--data", rig.data, "set_4", "--params",
              '{"value": 42}', "--wait", "60")
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r'^command set_4 \{"value": 42\} queued \(id [\w-]+\)', out.stdout,
                     re.M), out.stdout
    assert re.search(r"^device answered command set_4: (done|error|failed)", out.stdout,
                     re.M), out.stdout
    show = cli("xyte", "show", "--data", rig.data).stdout
    assert re.search(r'^  command set_4 \{"value": 42\}: done', show, re.M), show


def test_wait_without_a_device_says_so_and_fails():
    with scratch_dir("operator-cli-") as tmp:
        proc, _ = run_local.start_cloud(os.path.join(tmp, "cloud"))
        try:
            out = cli("realer", "set-desired", "--data", os.path.join(tmp, "cloud"), "3", "1",
                      "--wait", "1")
        finally:
            proc.terminate()
            proc.wait(10)
    assert out.returncode == 1
    assert "no answer from the device within 1 s; is it running (`make run`)" in out.stdout


def test_human_times_and_durations():
    now = 1800000000.0
    assert operator_cli.when(now - 12, now) == "2027-01-15 07:59:48 UTC (12 s ago)"
    assert operator_cli.when("2027-01-15T08:03:00Z", now) == "2027-01-15 08:03:00 UTC (in 3 min)"
    assert operator_cli.when(None, now) == "-"
    assert operator_cli.duration(3725) == "1 h 2 min"
    ticks = iter(range(100))
    calls = []
    got = operator_cli.wait_for(lambda: calls.append(1) or (len(calls) == 3 and "x"), 50,
                                clock=lambda: next(ticks), sleep=lambda s: None)
    assert got == "x" and len(calls) == 3
    assert operator_cli.wait_for(lambda: None, 5, clock=lambda: next(ticks),
                                 sleep=lambda s: None) is None
