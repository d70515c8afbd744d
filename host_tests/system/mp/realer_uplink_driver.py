# MicroPython side of test_realer_mqtt_pipeline.py: the firmware's own Realer MQTT path
# (config.load, make_cloud -> RealerMqtt, a real Outbox, App.uplink) drains N readings to the
# local Realer cloud. Prints {"ready": ...} once the broker session is up and the readings
# are in the outbox, then, when the outbox is empty, one summary line and exits.
#   DEVICE_DIR N
import asyncio
import json
import sys

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
    app = App(cfg, Board(), outbox, make_cloud)  # the app's hooks go to the adapter it makes
    cloud = app.cloud
    await cloud.authenticate()
    session = asyncio.create_task(cloud.session())
    deadline = clock.Deadline(60000)
    while not (cloud.mode == "mqtt" and cloud.client.connected):
        if deadline.expired():
            raise SystemExit("no MQTT session within 60 s (mode %s)" % cloud.mode)
        await asyncio.sleep_ms(20)
    ids = [outbox.append("sensor", 7 + i % 2, "%d.5" % i, 1777025700 + i) for i in range(n)]
    print(json.dumps({"ready": ids, "depth": cloud.send_depth, "batch": cloud.batch_max}))
    uplink = asyncio.create_task(app.uplink())
    while outbox.pending_count():
        await asyncio.sleep_ms(20)
    uplink.cancel()
    session.cancel()
    print(json.dumps({"delivered": app.delivered, "stats": outbox.stats(),
                      "connects": cloud.client.connects, "sends": app.sends}))


asyncio.run(main())
