"""`make run`: the firmware on the MicroPython unix port against a local cloud.

Each platform (and each Realer transport) has its own run directory, run/<name> with <name>
one of realer-https, realer-mqtt, nubison, devicehive, xyte: switching platforms never opens
one cloud's database with another's schema. In it: the platform's local cloud
(tools/<platform>_cloud.py) in cloud/, the device's data root in device/ with config.json (sim
board) and the cloud's CA, and the firmware log device.log. Runs `micropython main.py` there
and shows the firmware's status line live until Ctrl-C. `--fresh` (`make run FRESH=1`) starts
that run directory over (a new cloud, an empty outbox).

    python -m tools.run_local [--platform P] [--transport https|mqtt] [--fresh]
                              [--run-dir DIR]

(the platforms: firmware/platforms.py's registry)

Contract for every local cloud module: `python -m tools.<platform>_cloud serve --data DIR
--port 0` writes DIR/cloud.json once it listens, holding at least "ca_file" (the CA PEM the
device must trust) and, except for Realer, "device_cloud" (the `cloud` section of the
device's config.json, with "ca_file": "ca.pem") and optionally "hint" (one line for the user).
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from firmware import platforms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICROPYTHON = os.path.join(ROOT, ".venv", "bin", "micropython")


def _default_sigint():
    # a process started from a background shell inherits SIGINT ignored; the cloud and the
    # firmware must stop on Ctrl-C / send_signal(SIGINT) (logout, clean broker shutdown)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def device_config(cloud, ca_name="ca.pem", api_url=None, transport="https"):
    """The sim-board config.json for the local cloud's demo device. Realer: transport "https"
    or "mqtt" (with mqtt the device still reads the broker from the cloud's MQTT catalog);
    other platforms: the cloud section their local cloud wrote as "device_cloud"."""
    if "device_cloud" in cloud:
        section = dict(cloud["device_cloud"], ca_file=ca_name)
        if api_url:
            section["api_url"] = api_url
    else:
        section = {"platform": "realer", "transport": transport,
                   "api_url": api_url or cloud["api_url"], "device_id": cloud["device_id"],
                   "client_id": cloud["client_id"], "client_secret": cloud["client_secret"],
                   "ca_file": ca_name}
    return {
        "cloud": section,
        "board": "sim",
        "sensors": [{"id": 7, "quantity": "temperature", "interval_s": 5},
                    {"id": 8, "quantity": "humidity", "interval_s": 10}],
        "commands": [{"id": 3, "kind": "switch", "safe_value": 0},
                     {"id": 4, "kind": "dimmer", "min": 0, "max": 100, "safe_value": 0}],
        "switches": [{"command": 3, "flip_every_s": 30}],
        "intervals": {"catalog_poll_s": 5, "status_s": 2},
    }


_CLOUD_START_S = 60


def start_cloud(data, token_ttl=300, port=0, mqtt=False, mqtt_cred_ttl=None, platform="realer",
                extra_args=()):
    """Start a local cloud; returns (process, cloud.json contents). Realer with mqtt=True also
    runs its broker and cloud.json holds "mqtt_url" (mqtts://127.0.0.1:PORT). extra_args go
    to the cloud's `serve` command as they are."""
    info_path = os.path.join(data, "cloud.json")
    if os.path.exists(info_path):
        os.remove(info_path)
    extra = (["--mqtt"] if mqtt else []) + (
        ["--mqtt-cred-ttl", str(mqtt_cred_ttl)] if mqtt_cred_ttl else []) + list(extra_args)
    proc = subprocess.Popen([sys.executable, "-m", "tools.%s_cloud" % platform, "serve",
                             "--data", data, "--token-ttl", str(token_ttl), "--port", str(port)]
                            + extra,
                            cwd=ROOT, preexec_fn=_default_sigint,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # a start holds steps with deadlines of their own (the broker's is 10 s) and a crash ends
    # the wait at once: this deadline only has to outlast a slow start on a busy machine
    end = time.monotonic() + _CLOUD_START_S
    while not os.path.exists(info_path):
        if proc.poll() is not None:
            raise SystemExit("local cloud failed to start:\n" + proc.stderr.read().decode())
        if time.monotonic() >= end:
            proc.kill()
            raise SystemExit("local cloud did not start within %d s:\n%s" % (
                _CLOUD_START_S, proc.communicate()[1].decode(errors="replace")[-2000:]))
        time.sleep(0.05)
    with open(info_path) as f:
        return proc, json.load(f)


def write_device(device_dir, cloud, api_url=None, transport="https"):
    os.makedirs(device_dir, exist_ok=True)
    shutil.copy(cloud["ca_file"], os.path.join(device_dir, "ca.pem"))
    with open(os.path.join(device_dir, "config.json"), "w") as f:
        json.dump(device_config(cloud, api_url=api_url, transport=transport), f, indent=2)


def firmware_env(device_dir):
    return dict(os.environ, FIRMWARE_ROOT=device_dir,
                MICROPYPATH=":".join([ROOT, os.path.join(ROOT, "lib"), ".frozen"]))


def frozen_cmd(device_dir, micropython, heap=None):
    """(argv, cwd, env) to run a frozen image (`make frozen`): firmware/, boot.py and main.py
    are in the binary; from the data root with only `.frozen` on the path nothing on the
    filesystem can shadow them (an import that is not frozen fails)."""
    heap_arg = ["-X", "heapsize=" + heap] if heap else []
    argv = [os.path.abspath(micropython)] + heap_arg + ["-m", "main"]
    return argv, device_dir, dict(os.environ, FIRMWARE_ROOT=device_dir, MICROPYPATH=".frozen")


def start_firmware(device_dir, log_file, micropython=None):
    argv, cwd, env = ([MICROPYTHON, os.path.join(ROOT, "main.py")], ROOT,
                      firmware_env(device_dir))
    if micropython:
        argv, cwd, env = frozen_cmd(device_dir, micropython)
    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=log_file,
                            stderr=subprocess.STDOUT, preexec_fn=_default_sigint)


def run_name(platform, transport="https"):
    """The run directory's name: the platform, and for Realer its transport too (the MQTT
    cloud keeps other tables than the HTTPS one)."""
    return "%s-%s" % (platform, transport) if platforms.transports(platform) else platform


def transports():
    """Every transport some platform offers (the --transport choices)."""
    out: list = []
    for p in platforms.names():
        out += [t for t in platforms.transports(p) if t not in out]
    return out


def main(argv=None):
    # Ctrl-C must stop us even when started with SIGINT ignored (a background shell, a test
    # runner's worker): Python then installs no KeyboardInterrupt handler of its own
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--platform", default="realer", choices=platforms.names())
    ap.add_argument("--transport", default="https", choices=transports())
    ap.add_argument("--fresh", action="store_true",
                    help="start this platform's run directory over (cloud, outbox, state)")
    ap.add_argument("--run-dir", default=os.path.join(ROOT, "run"),
                    help="where the per-platform run directories live (default: run/)")
    ap.add_argument("--micropython", help="a frozen image to run (make run FROZEN=1)")
    a = ap.parse_args(argv)
    run = os.path.join(os.path.abspath(a.run_dir), run_name(a.platform, a.transport))
    device = os.path.join(run, "device")
    if a.fresh:
        shutil.rmtree(run, ignore_errors=True)
    os.makedirs(run, exist_ok=True)
    cloud_dir = os.path.join(run, "cloud")
    cloud_proc, cloud = start_cloud(cloud_dir, platform=a.platform,
                                    mqtt=a.platform == "realer" and a.transport == "mqtt")
    write_device(device, cloud, transport=a.transport)
    log_path = os.path.join(run, "device.log")
    print("local %s cloud: %s   device data root: %s" % (
        a.platform, cloud.get("api_url", "-"), device))
    if cloud.get("mqtt_url"):
        print("local MQTT broker: %s" % cloud["mqtt_url"])
    data_arg = os.path.relpath(cloud_dir)
    hint = cloud.get("hint", "try: .venv/bin/python -m tools.realer_cloud set-desired "
                             "--data run/cloud 4 42")
    print(hint.replace(cloud_dir, data_arg).replace("run/cloud", data_arg))
    print("firmware log: %s   (Ctrl-C stops both)" % log_path)
    started = time.monotonic()
    last = {}
    with open(log_path, "ab") as log_file:
        fw = start_firmware(device, log_file, a.micropython)
        try:
            follow(log_path, fw, last)
            print("\nfirmware exited with %s; see %s" % (fw.returncode, log_path))
        except KeyboardInterrupt:
            print()
        finally:
            for p in (fw, cloud_proc):
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
                    try:
                        p.wait(5)
                    except subprocess.TimeoutExpired:
                        p.kill()
        print(summary(last, time.monotonic() - started))


# Log lines shown above the live status line: warnings, errors, and what the cloud made the
# device do (a desired value applied, a command handled, a local switch change).
_SHOWN = (" E ", " W ", ": command ", ": local change ", ": desired ")


def follow(log_path, fw, last, out=sys.stdout):
    """Tail the firmware log until it exits: the status line in place, notable lines above
    it; `last` gets the newest status line's fields (readings=, delivered=, ...)."""
    with open(log_path, "rb") as tail:
        tail.seek(0, 2)
        while fw.poll() is None:
            line = tail.readline().decode(errors="replace")
            if not line:
                time.sleep(0.2)
            elif " status: " in line:
                text = line.split(" status: ", 1)[1].rstrip()
                last.update(status_fields(text))
                out.write("\r" + text + "  ")
                out.flush()
            elif any(s in line for s in _SHOWN):
                out.write("\n" + line)
                out.flush()


def status_fields(text):
    """{"readings": "12", ...} from a status line's `key=value` words."""
    return dict(w.split("=", 1) for w in text.split() if "=" in w)


def duration(seconds):
    """A duration people read: `42 s`, `3 min 5 s`, `2 h 7 min`."""
    s = int(seconds)
    if s < 60:
        return "%d s" % s
    if s < 3600:
        return "%d min %d s" % (s // 60, s % 60)
    return "%d h %d min" % (s // 3600, s % 3600 // 60)


def summary(last, uptime_s):
    """The line printed when `make run` stops."""
    if not last:
        return "summary: no status line yet (nothing delivered); uptime %s" % duration(uptime_s)
    return "summary: readings %s, delivered %s, pending %s, uptime %s" % (
        last.get("readings", "?"), last.get("delivered", "?"), last.get("pending", "?"),
        duration(uptime_s))

if __name__ == "__main__":
    main()
