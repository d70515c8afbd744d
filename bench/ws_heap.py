"""Benchmark: the smallest MicroPython heap (-X heapsize, found by bisection in 1K steps) at
which firmware.net.ws completes 100 echo round trips of a 200-byte text over verified TLS
against an aiohttp WebSocket echo server, and at which firmware.net.mqtt completes 100 QoS 1
publishes of 200 bytes over verified TLS against mosquitto; each with the modules imported
from .py source and from mpy-cross .mpy (as deployed). Prints Markdown.

    .venv/bin/python bench/ws_heap.py [N]
"""
import os
import secrets
import ssl
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "host_tests", "system"), os.path.join(ROOT, "bench"), ROOT]

from mqtt_throughput import compile_into, machine, smallest_heap_of  # noqa: E402
from test_ws_client import AioServer  # noqa: E402

from tools.mosquitto import Broker  # noqa: E402
from tools.pki import make_certs  # noqa: E402

MP_SCRIPT = os.path.join(ROOT, "bench", "ws_heap_mp.py")


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    work = tempfile.mkdtemp(prefix="ws-heap-")
    tree = os.path.join(work, "tree")
    compile_into(ROOT, "firmware", tree)
    pki = make_certs(os.path.join(work, "certs"))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki["server_cert"], pki["server_key"])
    server = AioServer(ctx)
    password = secrets.token_urlsafe(12)
    broker = Broker(os.path.join(work, "broker"), certs=pki, dynsec=False,
                    users={"bench": password}).start()
    runs = [("firmware.net.ws: %d echo round trips, 200-byte text, wss" % n,
             ["ws", "wss://127.0.0.1:%d/echo" % server.port, pki["ca"], n]),
            ("firmware.net.mqtt: %d QoS 1 publishes, 200 bytes, window 8, mqtts" % n,
             ["mqtt", broker.tls_url, pki["ca"], n, "bench", password])]
    rows = []
    try:
        for name, args in runs:
            src = smallest_heap_of(MP_SCRIPT, args, None)
            mpy = smallest_heap_of(MP_SCRIPT, args, tree)
            rows.append((name, src, mpy))
    finally:
        server.stop()
        broker.stop()
    print("machine: %s\n" % machine())
    print("| run | smallest heap, .py source | smallest heap, .mpy |")
    print("|---|---|---|")
    for name, src, mpy in rows:
        print("| %s | %s | %s |" % (name, "%dK" % src if src else "failed at 256K",
                                    "%dK" % mpy if mpy else "failed at 256K"))
    print("\nsmallest -X heapsize in 1K steps by bisection between 4K and 256K; a size passes "
          "when the script completes every round trip (exit 0, result line printed)")


if __name__ == "__main__":
    main()
