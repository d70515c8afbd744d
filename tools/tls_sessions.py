"""Peak number of TLS sessions the firmware holds open at once, per platform.

On a board without PSRAM the IDF heap beside Wi-Fi has room for a bounded number of mbedTLS
sessions (docs/boards.md has the arithmetic), so the firmware must never hold more than that.
Every connection the firmware makes is TLS (https, mqtts, wss: verification is never off), so
the established TCP connections of its process are its TLS sessions: a sampler thread reads
them from /proc (the process's socket inodes against /proc/net/tcp{,6}) every 10 ms while the
firmware runs on the unix port against its local cloud with short token lifetimes, so token /
credential renewals happen while a broker or WebSocket session is open.

    python -m tools.tls_sessions [--platform realer|nubison|devicehive|xyte]
        [--transport https|mqtt] [--seconds 60] [--frozen build/frozen-32/micropython]
"""
import argparse
import calendar
import os
import re
import subprocess
import tempfile
import threading
import time

from firmware import platforms
from tools import run_local

_ESTABLISHED = "01"


def established(pid):
    """The peers ("port" on loopback, else "address:port", hex as /proc has them) of the
    ESTABLISHED TCP connections process pid holds, one entry per socket (inode).

    One entry per inode, not per line: /proc/net/tcp is not a snapshot. The kernel writes it
    a page per read() and resumes by counting entries, so connections opened or closed
    meanwhile (any process's: the machine is shared) can shift it and the same socket comes
    out twice. Seen here (2026-12-06, 2 cores, kernel 6.18): 4 of 3505 reads of the whole
    table listed one ESTABLISHED socket (same inode and ports) twice; beside a loopback
    connect/close loop the firmware's one DeviceHive WebSocket was listed twice in 14
    samples of a 35 s run, which counting lines took for 2 sessions (test_tls_sessions had
    failed DeviceHive with 2 and 3 and no reconnect in the log). The same shift can skip a
    line, so a sample may also read one low; a real overlap lasts many samples."""
    inodes = set()
    fd_dir = "/proc/%d/fd" % pid
    try:
        for fd in os.listdir(fd_dir):
            try:
                link = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue  # closed meanwhile
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return []
    lines: list = []
    for table in ("tcp", "tcp6"):
        try:
            with open("/proc/%d/net/%s" % (pid, table)) as f:
                next(f)
                lines += f
        except OSError:
            pass
    return held(lines, inodes)


def held(lines, inodes):
    """The peers of the ESTABLISHED sockets among `inodes` in /proc/net/tcp lines, one per
    socket however often the table listed it."""
    peers = {}
    for line in lines:
        cols = line.split()
        if cols[3] == _ESTABLISHED and cols[9] in inodes:
            peers[cols[9]] = _peer(cols[2])
    return list(peers.values())


def _peer(hex_addr):
    addr, port = hex_addr.split(":")
    port = str(int(port, 16))
    return port if addr in ("0100007F", "00000000000000000000000001000000") else addr + ":" + port


class Sampler(threading.Thread):
    """Samples established(pid) every `every_s` until stop(); peak and history kept."""

    def __init__(self, pid, every_s=0.01):
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.peak = 0
        self.samples = 0
        self.at_peak = None  # seconds since start when the peak was first seen
        self.peak_wall = None  # time.time() then: to find the log lines around it
        self.peak_samples = 0  # samples at the peak: how long it is held
        self.peak_peers: list = []  # the peers held when the peak was first seen
        self._halt = threading.Event()

    def run(self):
        t0 = time.time()
        while not self._halt.is_set():
            peers = established(self.pid)
            n = len(peers)
            self.samples += 1
            if n > self.peak:
                self.peak, self.at_peak, self.peak_samples = n, time.time() - t0, 0
                self.peak_wall, self.peak_peers = time.time(), sorted(peers)
            if n == self.peak:
                self.peak_samples += 1
            self._halt.wait(self.every_s)

    def stop(self):
        self._halt.set()
        self.join(5)


# short lifetimes so renewals fall inside a short run (seconds)
TOKEN_TTL = 20
MQTT_CRED_TTL = 20


def _status(text):
    found = re.findall(r"status: readings=\d+ delivered=(\d+) .*?renewals=(\d+)", text)
    return (int(found[-1][0]), int(found[-1][1])) if found else (0, 0)


def run(platform, transport, seconds, frozen=None, workdir=None, renewals=None):
    """Run the firmware for `seconds`, or until it delivered and renewed its token
    `renewals` times; returns {"peak", "samples", "peak_samples", "renewals", "delivered",
    "log", "peak_wall", "peak_peers", "cloud_ports"}: peak_peers are the peer ports of the
    connections at the peak, cloud_ports what each of the cloud's services listens on."""
    tmp = workdir or tempfile.mkdtemp(prefix="tls-sessions-")
    cloud_dir = os.path.join(tmp, "cloud")
    device = os.path.join(tmp, "device")
    log_path = os.path.join(tmp, "device.log")
    mqtt = platform == "realer" and transport == "mqtt"
    cloud_proc, cloud = run_local.start_cloud(cloud_dir, token_ttl=TOKEN_TTL, platform=platform,
                                              mqtt=mqtt,
                                              mqtt_cred_ttl=MQTT_CRED_TTL if mqtt else None)
    fw = sampler = None
    try:
        run_local.write_device(device, cloud, transport=transport)
        with open(log_path, "wb") as log_file:
            if frozen:
                argv, cwd, env = run_local.frozen_cmd(device, frozen)
                fw = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log_file,
                                      stderr=subprocess.STDOUT)
            else:
                fw = run_local.start_firmware(device, log_file)
        sampler = Sampler(fw.pid)
        sampler.start()
        end = time.time() + seconds
        while time.time() < end and fw.poll() is None:
            time.sleep(0.5)
            if renewals is not None:
                with open(log_path, errors="replace") as f:
                    done, renewed = _status(f.read())
                if done and renewed >= renewals:
                    break
    finally:
        if sampler is not None:
            sampler.stop()
        if fw is not None and fw.poll() is None:
            fw.kill()
            fw.wait(10)
        cloud_proc.kill()
        cloud_proc.wait(10)
    with open(log_path, errors="replace") as f:
        text = f.read()
    delivered, renewed = _status(text)
    return {"peak": sampler.peak, "samples": sampler.samples,
            "peak_samples": sampler.peak_samples, "delivered": delivered,
            "renewals": renewed, "log": text, "peak_wall": sampler.peak_wall,
            "peak_peers": sampler.peak_peers, "cloud_ports": _ports(cloud)}


def _ports(cloud):
    """{service: port} from the local cloud's description (its URLs)."""
    out = {}
    for k, v in cloud.items():
        m = re.match(r"\w+://[^/:]+:(\d+)", v) if isinstance(v, str) else None
        if m:
            out[k] = m.group(1)
    return out


def around(text, wall, seconds=3):
    """The log lines (stamped like 2026-12-06T08:57:07Z) within `seconds` of time `wall`:
    what the firmware was doing when the peak was first seen."""
    out = []
    for line in text.splitlines():
        m = re.match(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)Z", line)
        if m and wall is not None:
            t = calendar.timegm(tuple(int(x) for x in m.groups()) + (0, 0, 0))
            if abs(t - wall) <= seconds:
                out.append(line)
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--platform", default="realer", choices=platforms.names())
    ap.add_argument("--transport", default="https", choices=run_local.transports())
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--frozen", help="run this frozen image instead of firmware/ from source")
    a = ap.parse_args()
    r = run(a.platform, a.transport, a.seconds, a.frozen)
    print("%s%s: peak TLS sessions %d (held in %d of %d samples), renewals %d, delivered %d, "
          "%.0f s, token ttl %d s" % (
              a.platform, " " + a.transport if a.platform == "realer" else "", r["peak"],
              r["peak_samples"], r["samples"], r["renewals"], r["delivered"], a.seconds,
              TOKEN_TTL))


if __name__ == "__main__":
    main()
