"""Benchmark: the DeviceHive adapter delivering 100 readings to the local cloud over wss on
the MicroPython unix port, stop-and-wait (batch 1: one round trip per record) vs pipelined
(batch 10), without added delay and at 50 ms RTT (tools/faultproxy.py latency 25 ms each
way), all in one invocation. Prints a Markdown table.

    .venv/bin/python bench/devicehive_send.py [N]
"""
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tools import run_local  # noqa: E402
from tools.faultproxy import FaultProxy  # noqa: E402


def mp(info_path, url, n, batch):
    root = tempfile.mkdtemp()
    out = subprocess.run([run_local.MICROPYTHON, os.path.join(ROOT, "bench",
                                                              "devicehive_send_mp.py"),
                          info_path, url, str(n), str(batch), root],
                         capture_output=True, text=True, env=run_local.firmware_env(root),
                         cwd=ROOT, timeout=600)
    if out.returncode:
        sys.exit(out.stdout + out.stderr)
    line = [ln for ln in out.stdout.split("\n") if ln.startswith("batch=")][-1]
    return int(dict(kv.split("=") for kv in line.split())["ms"])


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    data = tempfile.mkdtemp()
    proc, info = run_local.start_cloud(data, token_ttl=600, platform="devicehive")
    port = int(info["api_url"].rsplit(":", 1)[1])
    proxy = FaultProxy("127.0.0.1", port)
    pport = proxy.start_in_thread()
    info_path = os.path.join(data, "cloud.json")
    rows = []
    try:
        for rtt in (0, 50):
            proxy.set(mode="latency", ms=rtt // 2) if rtt else proxy.set(mode="pass")
            url = "wss://127.0.0.1:%d" % pport
            for batch in (1, 10):
                rows.append((rtt, batch, mp(info_path, url, n, batch)))
    finally:
        proxy.stop()
        proc.kill()
    print("machine: %s, %d cores, %s" % (platform.machine(), os.cpu_count(),
                                          time.strftime("%Y-%m-%d")))
    print("| RTT ms | records per send() | records | total ms | ms/record |")
    print("|---|---|---|---|---|")
    for rtt, batch, ms in rows:
        print("| %d | %d | %d | %d | %.1f |" % (rtt, batch, n, ms, ms / n))
    by = {(r, b): ms for r, b, ms in rows}
    for rtt in (0, 50):
        print("RTT %d ms: pipelined (10) is %.1fx stop-and-wait (1)" %
              (rtt, by[(rtt, 1)] / by[(rtt, 10)]))


if __name__ == "__main__":
    main()
