"""Xyte's MQTT 5 session: one broker session per registration.

Part of the Xyte adapter (firmware/clouds/xyte.py composes it): the `Session` mixin gives the
hooks of the shared broker session loop (firmware/clouds/__init__.py: `mqtt_session`,
Xyte's background task): connect with client id = user name = device id, password = access
key; subscribe to config, commands, license, space_info, firmware; after every connect
`update` and `get`. It queues the answers the reader may not publish itself, and says goodbye
on close().
"""
import asyncio
import json

from micropython import const

from firmware import clock, log
from firmware.clouds import mqtt_session
from firmware.clouds.xyte_reg import XyteError
from firmware.net import mqtt
from firmware.tasks import within_ms

MYPY = False
if MYPY:  # the type checker only (MicroPython has no typing module)
    from typing import Any

_TAG = "xyte"
_RECHECK_MS = const(1000)


def mqtt_url(url):
    """mqtt_hub_url may come with or without a scheme (then mqtts on 8883)."""
    if "://" not in url:
        return "mqtts://" + url + ("" if ":" in url else ":8883")
    return url


class Session:
    # set by Xyte.__init__ or the other parts (annotations only, no per-object cost)
    reg: dict
    ca_file: str
    cmd_topic: str
    fw_version: str
    name: str
    sn: str
    client: "Any"
    credentials: int
    generation: int
    on_link_up: "Any"
    _out: list
    _out_lock: "Any"
    _jobs: list
    _wake: "Any"
    _on_message: "Any"  # a method of another part
    _reg_wait_ms: "Any"  # a method of another part
    authenticate: "Any"  # a method of another part
    probe: "Any"  # a method of another part

    def topic(self, leaf):
        return "v1/device/%s/%s" % (self.reg["id"], leaf)

    def props(self):
        return {mqtt.USER_PROPERTY: [("device_id", self.reg["id"]),
                                     ("access_key", self.reg["access_key"])]}

    def answer(self, leaf, body, msg=None):
        """Queue an answer for the session task (never published from the reader: a full
        window would wait for PUBACKs the reader itself must read)."""
        topic = self.topic(leaf)
        if msg is not None:
            rt = msg.props.get(mqtt.RESPONSE_TOPIC)
            if isinstance(rt, str) and rt.startswith(self.topic("")) and \
                    "+" not in rt and "#" not in rt:
                topic = rt
        props = self.props()
        if msg is not None and mqtt.CORRELATION_DATA in msg.props:
            props[mqtt.CORRELATION_DATA] = msg.props[mqtt.CORRELATION_DATA]
        self._out.append((topic, json.dumps(body), props))
        self._wake.set()

    async def _flush_out(self):
        async with self._out_lock:
            while self._out and self.client is not None and self.client.connected:
                topic, payload, props = self._out[0]
                await self.client.publish(topic, payload, 1, props=props, wait=False)
                self._out.pop(0)

    def set_cloud_setting(self, prop, value):
        """Set Cloud Settings (cloud_settings/update); sent when the session is up."""
        if self.reg:
            self.answer("cloud_settings/update", {"property": prop, "value": value})

    async def close(self, status="offline"):
        """Say `status` (offline before deep sleep or a planned stop) in a telemetry message
        without readings, then end the broker session. Best effort: never raises."""
        client = self.client
        if not self.reg or client is None or not client.connected:
            return
        try:
            body = {"status": status, "timestamp": clock.iso8601(),
                    "telemetries": {"message_id": "status-%d" % clock.unix_time()}}
            await client.publish(self.topic("telemetry"), json.dumps(body), 1,
                                 props=self.props())
            await client.disconnect()
        except Exception as e:  # the broker learns it from the closed session anyway
            log.info(_TAG, "close: %s", log.describe(e))

    # Background task: one broker session per registration, answers and jobs sent (the
    # shared loop, bound like a method: cloud.session() is mqtt_session(cloud))
    session = mqtt_session

    async def session_open(self, ended):
        self.client = None  # the last session's, if any, ended
        if not self.reg:  # deleted while running: the auth task may sleep for long
            try:
                wait = await self.authenticate()
            except Exception as e:  # tried again after the registrar's pause
                log.warn(_TAG, "registration: %s", log.describe(e))
                wait = self._reg_wait_ms()
            await asyncio.sleep_ms(wait or _RECHECK_MS)
            return None
        self.client = mqtt.Client(mqtt_url(self.reg.get("mqtt_hub_url") or ""),
                                  self.reg["id"], ca_file=self.ca_file, keepalive_s=60,
                                  on_message=self._on_message)
        for leaf in ("config", self.cmd_topic, "license", "space_info", "firmware"):
            self.client.subscriptions[self.topic(leaf)] = 1
        return self.client

    async def session_tend(self, client):
        gen = self.generation  # a new registration ends this session
        while gen == self.generation:
            try:
                await within_ms(self._wake.wait(), _RECHECK_MS)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self._flush_out()
                while self._jobs:
                    await self._jobs.pop(0)
            except Exception as e:  # kept for the next round; the session reports its end
                log.warn(_TAG, "answers: %s", log.describe(e))

    async def session_prepare(self, client):
        if not self.reg:
            raise XyteError("not registered")
        if isinstance(client.error, mqtt.CredentialsRefused):
            await self.probe()
        client.client_id = client.username = self.reg["id"]
        client.password = self.reg["access_key"]

    async def session_up(self, client):
        self.credentials += 1
        self.answer("update", {"firmware_version": self.fw_version,
                               "name": self.name or self.sn})
        self.answer("get", {})
        await self._flush_out()
        if self.on_link_up is not None:
            self.on_link_up(client.connects == 1)
