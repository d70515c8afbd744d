# MicroPython side of bench/devicehive_send.py: the DeviceHive adapter delivers N readings to
# the local cloud over wss, `batch` records per send() (1 = stop-and-wait, one round trip per
# record; more = pipelined), and prints the time taken.
import asyncio
import json
import sys
import time

from firmware.clouds.devicehive import DeviceHive
from firmware.outbox import Record


class Cfg:
    def __init__(self, cloud, ca, root):
        self.cloud = cloud
        self.ca_path = ca
        self.root = root

    def get(self, key, default=None):
        return {"cloud": self.cloud, "commands": []}.get(key, default)


async def main():
    info_path, url, n, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    with open(info_path) as f:
        info = json.load(f)
    cloud = dict(info["device_cloud"], api_url=url, ack_timeout_s=30)
    dh = DeviceHive(Cfg(cloud, info["ca_file"], sys.argv[5]))
    task = asyncio.create_task(dh.session())
    while not dh.ready:
        await asyncio.sleep_ms(20)
    recs = [Record("%x-%x" % (batch, i), "sensor", 7, str(i), 1777025700 + i) for i in range(n)]
    t0 = time.ticks_ms()
    done = 0
    while done < n:
        res = await dh.send(recs[done:done + batch])
        if res.failed or res.dead or len(res.ok) != len(recs[done:done + batch]):
            raise SystemExit("send failed: %r %r" % (res.ok, res.dead))
        done += len(res.ok)
    print("batch=%d n=%d ms=%d" % (batch, n, time.ticks_diff(time.ticks_ms(), t0)))
    task.cancel()


asyncio.run(main())
