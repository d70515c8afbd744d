# MicroPython side of bench/http_keepalive.py: N POSTs with our keep-alive Client, then N with
# a new connection per request (the urequests pattern), timing each and the peak heap.
import asyncio
import sys
import time

import micropython

from firmware.net import http


async def run(url, ca, n, keep):
    client = http.Client(ca_file=ca)
    t0 = time.ticks_ms()
    for i in range(n):
        resp = await client.request("POST", url, json={"sensor_id": 7, "value": str(i)},
                                    idempotent=True)
        if resp.status != 201:
            raise SystemExit("unexpected status %d" % resp.status)
        if not keep:
            await client.close()  # what a connect-send-close client does every time
    await client.close()
    return time.ticks_diff(time.ticks_ms(), t0), client.handshakes


async def main():
    url, ca, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ms, hs = await run(url, ca, n, True)
    print("keepalive ms=%d handshakes=%d mem_peak=%d" % (ms, hs, micropython.mem_peak()))
    if len(sys.argv) > 4 and sys.argv[4] == "keepalive-only":
        return
    ms, hs = await run(url, ca, n, False)
    print("per_request ms=%d handshakes=%d" % (ms, hs))


asyncio.run(main())
