# MicroPython side of bench/mqtt_throughput.py: N QoS 1 publishes with one client, then one
# JSON line {"client", "n", "ms", "rtt_ms", "imported_alloc"}. rtt_ms is the median of 5
# single QoS 1 publishes that each wait for their PUBACK (one network round trip), taken
# before the timed run; imported_alloc the heap held once the client's modules are imported.
#   ours  URL USER PASSWORD N WINDOW [CA]    firmware.net.mqtt, wait=False then flush()
#   umqtt HOST PORT USER PASSWORD N [nodelay] umqtt.simple 1.3.4, publish(qos=1): stop-and-wait;
#                                            nodelay: TCP_NODELAY set on its socket after connect
import gc
import json
import random
import sys
import time

PAYLOAD = b'{"sensor_id": 7, "value": 21.5, "unit": "C", "seq": 0000000000}'  # 64 bytes


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def code_alloc():
    # heap still held once the client's modules are imported (bytecode, qstrs, module state)
    gc.collect()
    return gc.mem_alloc()


async def ours(url, user, password, n, window, ca):
    from firmware.net import mqtt

    imported = code_alloc()
    cid = "bench-ours-%06x" % random.getrandbits(24)  # heap trials run side by side
    c = mqtt.Client(url, cid, user, password, keepalive_s=60, window=window, ca_file=ca or None,
                    timeout_ms=30000)
    await c.connect()
    rtts = []
    for _ in range(5):
        t = time.ticks_ms()
        await c.publish("bench/ours", PAYLOAD, 1)
        rtts.append(time.ticks_diff(time.ticks_ms(), t))
    t0 = time.ticks_ms()
    for _ in range(n):
        await c.publish("bench/ours", PAYLOAD, 1, wait=False)
    await c.flush()
    ms = time.ticks_diff(time.ticks_ms(), t0)
    await c.disconnect()
    return ms, median(rtts), imported


def umqtt(host, port, user, password, n, nodelay):
    from umqtt.simple import MQTTClient

    imported = code_alloc()
    c = MQTTClient("bench-umqtt-%06x" % random.getrandbits(24), host, port, user, password)
    c.connect()
    if nodelay:  # its five small writes per PUBLISH otherwise meet Nagle + delayed ACK
        c.sock.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY
    rtts = []
    for _ in range(5):
        t = time.ticks_ms()
        c.publish(b"bench/umqtt", PAYLOAD, qos=1)
        rtts.append(time.ticks_diff(time.ticks_ms(), t))
    t0 = time.ticks_ms()
    for _ in range(n):
        c.publish(b"bench/umqtt", PAYLOAD, qos=1)
    ms = time.ticks_diff(time.ticks_ms(), t0)
    c.disconnect()
    return ms, median(rtts), imported


def main():
    kind = sys.argv[1]
    if kind == "ours":
        import asyncio

        url, user, password, n, window = sys.argv[2], sys.argv[3], sys.argv[4], \
            int(sys.argv[5]), int(sys.argv[6])
        ca = sys.argv[7] if len(sys.argv) > 7 else None
        ms, rtt, imported = asyncio.run(ours(url, user, password, n, window, ca))
        name = "ours-w%d" % window
    else:
        host, port, user, password, n = sys.argv[2], int(sys.argv[3]), sys.argv[4], \
            sys.argv[5], int(sys.argv[6])
        nodelay = len(sys.argv) > 7 and sys.argv[7] == "nodelay"
        ms, rtt, imported = umqtt(host, port, user, password, n, nodelay)
        name = "umqtt.simple" + (" nodelay" if nodelay else "")
    print(json.dumps({"client": name, "n": n, "ms": ms, "rtt_ms": rtt,
                      "imported_alloc": imported}))


main()
