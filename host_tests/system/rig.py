"""The e2e rig shared by the system tests: one `wait_for` (a condition polled against a
deadline, never a fixed sleep), a scratch directory that is removed even when the test fails,
and `FirmwareRig`: a local cloud (tools/run_local.py), a fault proxy in front of it and the
firmware (main.py on the MicroPython unix port, sim board) pointed at the proxy."""
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

from tools import run_local
from tools.faultproxy import FaultProxy

# the FirmwareRigs alive in this process (one test at a time per xdist worker): wait_for
# shows the newest one's device log when no `log` is given
_rigs: list = []


def wait_for(what, cond, timeout=30, step=0.1, log=None, fail_on=(), tail=3000):
    """Poll cond() until it returns something truthy, and return that; after `timeout`
    seconds (monotonic) fail the test naming `what`. cond() gets one last look at the
    deadline, so a slow machine's final poll still counts. The last `tail` characters of
    `log()` (the device's log text; by default the live FirmwareRig's) end the failure
    message; a log containing one of the `fail_on` markers fails at once (no use waiting out
    the deadline after a crash)."""
    if log is None and _rigs:
        log = _rigs[-1].log
    end = time.monotonic() + timeout
    while True:
        if fail_on:
            text = log()
            for marker in fail_on:
                if marker in text:
                    raise AssertionError("%r while waiting for %s:\n%s" % (
                        marker, what, text[-tail:]))
        value = cond()
        if value:
            return value
        if time.monotonic() >= end:
            text = "\n--- log ---\n" + log()[-tail:] if log is not None else ""
            raise AssertionError("timed out after %g s waiting for %s%s" % (timeout, what, text))
        time.sleep(step)


@contextlib.contextmanager
def scratch_dir(prefix="e2e-"):
    """A fresh directory, removed on the way out whatever happened (pytest's tmp_path keeps
    the last runs' directories, with their databases, certificates and logs)."""
    path = tempfile.mkdtemp(prefix=prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def status_of(log_text):
    """The last `status:` line of a firmware log as a dict ({} before the first)."""
    found = re.findall(r"status: (.*)", log_text)
    return dict(kv.split("=", 1) for kv in found[-1].split()) if found else {}


def _port(url):
    return int(url.rsplit(":", 1)[1])


class FirmwareRig:
    """Cloud + fault proxy + firmware in `tmp`. `configure(cfg)` edits the device's
    config.json dict before the first start; `cloud_kw` goes to run_local.start_cloud;
    `scheme` is the device's URL scheme for the proxy (https, or wss for DeviceHive).
    `proxy` stands in front of the cloud's API (api_proxy=False: none, the device talks to the
    API directly). With `broker_knob(cloud_dir, url)` a second proxy, `broker_proxy`, stands in
    front of the cloud's MQTT broker and the knob tells the cloud to hand its URL to devices.
    stop() ends every process it started, each step on its own, so a failure in one does not
    leave the others running."""

    def __init__(self, tmp, platform="realer", configure=None, scheme="https", transport="https",
                 api_proxy=True, broker_knob=None, **cloud_kw):
        self.cloud_dir = os.path.join(tmp, "cloud")
        self.device = os.path.join(tmp, "device")
        self.log_path = os.path.join(tmp, "device.log")
        self.fw = None
        self.proxy = None
        self.broker_proxy = None
        self.log_file = None
        if not os.path.exists(run_local.MICROPYTHON):
            raise AssertionError("no MicroPython unix port at %s: run `make deps`" %
                                 run_local.MICROPYTHON)
        try:
            self.cloud_proc, self.cloud = run_local.start_cloud(
                self.cloud_dir, platform=platform, **cloud_kw)
        except SystemExit as e:  # run_local's CLI way of failing
            raise AssertionError("local %s cloud: %s" % (platform, e))
        try:
            api_url = None
            if api_proxy:
                self.proxy = FaultProxy("127.0.0.1", _port(self.cloud["api_url"]))
                api_url = "%s://127.0.0.1:%d" % (scheme, self.proxy.start_in_thread())
            if broker_knob is not None:
                self.broker_port = _port(self.cloud["mqtt_url"])
                self.broker_proxy = FaultProxy("127.0.0.1", self.broker_port)
                broker_knob(self.cloud_dir, "mqtts://127.0.0.1:%d"
                            % self.broker_proxy.start_in_thread())
            run_local.write_device(self.device, self.cloud, api_url=api_url,
                                   transport=transport)
            if configure is not None:
                path = os.path.join(self.device, "config.json")
                with open(path) as f:
                    cfg = json.load(f)
                configure(cfg)
                with open(path, "w") as f:
                    json.dump(cfg, f)
            self.log_file = open(self.log_path, "ab")
        except BaseException:
            self.stop()
            raise
        _rigs.append(self)

    def start(self):
        self.fw = run_local.start_firmware(self.device, self.log_file)

    def kill(self):
        self.fw.send_signal(signal.SIGKILL)
        self.fw.wait(10)

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def last_status(self):
        return status_of(self.log())

    def stop(self):
        if self in _rigs:
            _rigs.remove(self)
        steps = []
        if self.fw is not None:
            steps.append(self._stop_firmware)
        for proxy in (self.proxy, self.broker_proxy):
            if proxy is not None:
                steps.append(proxy.stop)
        steps.append(self._stop_cloud)
        if self.log_file is not None:
            steps.append(self.log_file.close)
        for step in steps:
            with contextlib.suppress(Exception):
                step()

    def _stop_firmware(self):
        if self.fw.poll() is None:
            self.fw.kill()
            self.fw.wait(10)

    def _stop_cloud(self):
        stop_cloud(self.cloud_proc)


def stop_cloud(proc):
    """End a local cloud with SIGINT first, which lets it stop the broker it started (a
    SIGKILL would leave that mosquitto running); SIGKILL only if it does not end in 10 s."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
