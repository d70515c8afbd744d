"""Realer over MQTT resolves a record only by its application ack (docs/realer.md
"Acceptance"): a PUBACK, an ack that is not JSON, a list, an empty payload or an ack without
a status keep the record (both runtimes). The HTTPS answers are in test_realer_https.py."""
import asyncio
import json

from test_realer_https import FakeResp
from test_realer_mqtt import ACKS, _msg, _token, adapter, catalog

import support
from firmware.clouds import realer_mqtt as rm
from firmware.outbox import Record


class _Broker:
    """The mqtt.Client surface send() uses: every QoS 1 PUBLISH is PUBACKed (broker
    acceptance) and then answered on the ack topic by `answer(message_id)`."""

    connected = True
    connects = 1  # the session whose subscriptions the adapter made

    def __init__(self, cloud, answer):
        self.cloud = cloud
        self.answer = answer
        self.published: list = []

    async def publish(self, topic, payload, qos=0, retain=False, props=None, wait=True):
        self.published.append(topic)
        mid = json.loads(payload)["message_id"]
        asyncio.create_task(self._ack(mid))
        return len(self.published)  # the PUBACK: the broker took it

    async def _ack(self, mid):
        await asyncio.sleep_ms(0)
        self.cloud._on_message(_msg(ACKS, self.answer(mid)))


def _send_with_acks(answer):
    cloud, _ = adapter([_token(), FakeResp(200, catalog())])
    support.run(cloud._read_catalog())
    cloud.mode = rm.MQTT
    cloud.ack_timeout_ms = 200  # what never comes is not waited for long
    broker = cloud.client = _Broker(cloud, answer)
    cloud._subscribed = broker.connects  # the ack topic is subscribed on this session
    res = support.run(cloud.send([Record("1-1", "sensor", 7, "5", 1777025700)]))
    return res, broker


def test_only_an_accepted_or_replayed_ack_delivers():
    for answer in (lambda mid: b"<html><body>portal</body></html>", lambda mid: [mid],
                   lambda mid: b"", lambda mid: {"message_id": mid},
                   lambda mid: {"message_id": mid, "status": "ok"},
                   lambda mid: {"message_id": mid, "status": "error"}):
        res, broker = _send_with_acks(answer)
        assert broker.published, "published and PUBACKed"
        assert res.ok == [] and res.dead == [] and res.failed, answer("1-1")
    res, _ = _send_with_acks(lambda mid: {"message_id": mid, "status": "accepted"})
    assert res.ok == ["1-1"] and not res.failed
