# MicroPython side of bench/mqtt_throughput.py's allocation figures: heap allocated per QoS 1
# publish by firmware.net.mqtt, measured with the collector off (gc.mem_alloc() before and
# after N publishes with wait=False and the flush() that takes their PUBACKs: the whole
# publish path, sending and acknowledging, asyncio included), and whether encoding one
# PUBLISH allocates at all (micropython.heap_lock(): a MemoryError means it does). Prints
# micropython.mem_info() around the measured run, then one JSON line.
#   URL USER PASSWORD N
import asyncio
import gc
import json
import sys

import micropython

from firmware.net import mqtt

PAYLOAD = b'{"sensor_id": 7, "value": 21.5, "unit": "C", "seq": 0000000000}'  # 64 bytes
TOPIC = "bench/alloc"


def encode_allocates(c):
    """True when encoding one PUBLISH allocates (heap locked: MemoryError)."""
    put = getattr(c, "_put_publish", None)
    micropython.heap_lock()
    try:
        if put is None:  # the older codec: a bytes object per packet
            mqtt.encode_publish(TOPIC, PAYLOAD, 1, False, 1, False, None, True)
        else:
            put(TOPIC, PAYLOAD, 1, False, 1, False, None)  # into its preallocated buffer
        return False
    except MemoryError:
        return True
    finally:
        micropython.heap_unlock()


async def main():
    url, user, password, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    c = mqtt.Client(url, "bench-alloc", user, password, keepalive_s=60, window=32,
                    timeout_ms=30000)
    await c.connect()
    for _ in range(50):  # warm up: the topic cache, buffers, the scheduler's queues
        await c.publish(TOPIC, PAYLOAD, 1, wait=False)
    await c.flush()
    encode_allocates(c)  # once, so a first-use cache fill is not counted
    locked = encode_allocates(c)
    gc.collect()
    micropython.mem_info()
    gc.disable()
    a0 = gc.mem_alloc()
    for _ in range(n):
        await c.publish(TOPIC, PAYLOAD, 1, wait=False)
    await c.flush()
    a1 = gc.mem_alloc()
    gc.enable()
    micropython.mem_info()
    await c.disconnect()
    print(json.dumps({"n": n, "bytes_per_publish": (a1 - a0) / n,
                      "encode_allocates": locked}))


asyncio.run(main())
