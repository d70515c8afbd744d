# MicroPython side of bench/mqtt_throughput.py's adapter figures: the firmware's own MQTT path
# as configured by default: RealerMqtt (catalog, credential, TLS session, application acks)
# fed by App.uplink from a real Outbox holding N readings, against the local Realer cloud.
# The clock runs from the first uplink send to the empty outbox (every record acknowledged
# "accepted" on the ack topic and deleted). Prints one JSON line.
#   DEVICE_DIR N
import asyncio
import json
import sys
import time

from firmware import clock, config
from firmware.app import App, make_cloud
from firmware.outbox import Outbox


class Board:
    """The uplink only tells the board whether the link works (actuators' failsafe); after a
    reconnect the app reports its actuators' states (none here)."""
    actuators: dict = {}

    def link_ok(self):
        pass

    def link_failed(self, why):
        pass


async def main():
    root, n = sys.argv[1], int(sys.argv[2])
    cfg = config.load(root)
    outbox = Outbox(root + "/outbox")
    app = App(cfg, Board(), outbox, make_cloud)
    cloud = app.cloud
    await cloud.authenticate()
    session = asyncio.create_task(cloud.session())
    deadline = clock.Deadline(60000)
    # ready to send: connected and the ack topic subscribed (before that send() refuses the
    # batch and the uplink waits for the session, which is start-up, not throughput)
    while not (cloud.mode == "mqtt" and cloud.client.connected and
               cloud._subscribed == cloud.client.connects):
        if deadline.expired():
            raise SystemExit("no MQTT session within 60 s (mode %s)" % cloud.mode)
        await asyncio.sleep_ms(20)
    for i in range(n):
        outbox.append("sensor", 7 + i % 2, "%d.5" % (i % 40), 1777025700 + i)
    t0 = time.ticks_ms()
    uplink = asyncio.create_task(app.uplink())
    deadline = clock.Deadline(600000)
    while outbox.pending_count() and not deadline.expired():
        await asyncio.sleep_ms(5)
    ms = time.ticks_diff(time.ticks_ms(), t0)
    left = outbox.pending_count()
    uplink.cancel()
    session.cancel()
    print(json.dumps({"n": n, "ms": ms, "left": left, "delivered": app.delivered,
                      "batch": cloud.batch_max, "window": cloud.client.window,
                      "send_window": cloud.client._send_window}))


asyncio.run(main())
