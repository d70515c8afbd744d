# MicroPython side of bench/ws_heap.py: over verified TLS, either N WebSocket echo round trips
# of a 200-byte text (firmware.net.ws) or N QoS 1 publishes of 200 bytes (firmware.net.mqtt,
# window 8, wait=False then flush()). Prints one JSON line when every step succeeded.
#   ws   URL CA N
#   mqtt URL CA N USER PASSWORD
import asyncio
import gc
import json
import sys
import time

TEXT = "".join("abcdefghijklmnopqrstuvwxyz0123456789"[i % 36] for i in range(200))


async def ws_run(url, ca, n):
    from firmware.net import ws

    sock = await ws.connect(url, ca_file=ca, timeout_ms=10000)
    for i in range(n):
        await sock.send_text(TEXT)
        if await sock.recv() != TEXT:
            raise SystemExit("echo %d differs" % i)
    await sock.close(1000, "done")


async def mqtt_run(url, ca, n, user, password):
    from firmware.net import mqtt

    c = mqtt.Client(url, "heap-%d" % time.ticks_us(), user, password, ca_file=ca, window=8,
                    timeout_ms=10000)
    await c.connect()
    for _ in range(n):
        await c.publish("bench/heap", TEXT, 1, wait=False)
    await c.flush()
    await c.disconnect()


def main():
    kind, url, ca, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    t0 = time.ticks_ms()
    if kind == "ws":
        asyncio.run(ws_run(url, ca, n))
    else:
        asyncio.run(mqtt_run(url, ca, n, sys.argv[5], sys.argv[6]))
    gc.collect()
    print(json.dumps({"kind": kind, "n": n, "ms": time.ticks_diff(time.ticks_ms(), t0),
                      "alloc_after": gc.mem_alloc()}))


main()
