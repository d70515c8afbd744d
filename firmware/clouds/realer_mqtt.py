"""Realer over MQTT 5 (realer-mqtt.txt): HTTPS token and catalog, a short-lived broker
credential, feed data on route topics, desired state and application acks on subscriptions.

The HTTPS side (token, sensor catalog, fallback delivery) is a RealerHttps inside. The
`mqtt` background task reads `GET .../mqtt`, asks `credential_endpoint` for a credential,
connects to the catalog's `broker_url` with exactly the returned client id / user name /
credential (never the bearer token), subscribes to `feed_data_ack_topic` and every command
route's `desired_topic`, and at `renew_after` fetches the next credential and reconnects
(the MQTT client re-subscribes). A catalog without `credential_endpoint` (or no MQTT catalog
at all) means this device has no MQTT yet: everything stays on HTTPS, logged, and the
catalog is read again later.

Delivery: a record is published QoS 1, retain off, on its route's `feed_data_topic` and
leaves the outbox only on an `accepted` / `replayed` ack on the ack topic (a PUBACK is
broker acceptance only). `conflict` / `rejected` dead-letter it; `error` follows its
`retryable` (absent: retry). A record without an ack within `ack_timeout_s` stays pending
and is published again, with the same message_id, on the next attempt.

Ack and desired bodies are not documented; the local cloud's shapes are read tolerantly:
ack {"message_id", "status", "retryable"?, "error"?: {"type"} or "text"};
desired {"command_id"?, "desired_id", "value", "seq"?, "expires_at"?} (the route gives the
command when command_id is absent).
"""
import asyncio
import json

from micropython import const

from firmware import clock, log
from firmware.clouds.realer_https import RealerError, RealerHttps, SendResult, error_type
from firmware.clouds.realer_https import record_body as _record_body
from firmware.net import conn, mqtt

_TAG = "realer-mqtt"
HTTPS = "https"
MQTT = "mqtt"
_DEFAULT_SCOPE = ("iot:catalog:read iot:feed-data:write iot:mqtt:connect iot:mqtt:ack:read "
                  "iot:mqtt:feed-data:write iot:mqtt:desired:read")
_RECHECK_MS = const(600000)  # how often a device without MQTT asks again
_RETRY_MS = const(30000)
_ACK_TIMEOUT_MS = const(15000)
_DEFAULT_CRED_RENEW_S = const(300)


class RealerMqtt:
    def __init__(self, cfg, client=None):
        self.https = RealerHttps(cfg, client)
        self.https.scope = self.https.scope or _DEFAULT_SCOPE  # the MQTT calls need them
        self.ca_file = cfg.ca_path
        self.ack_timeout_ms = int(cfg.get("cloud").get("ack_timeout_s", 0) * 1000) or \
            _ACK_TIMEOUT_MS
        self.mode = None  # None until the MQTT catalog was read, then HTTPS or MQTT
        self.client = None  # mqtt.Client once the catalog named a broker
        self.routes: dict = {}  # (kind, source id) -> feed_data_topic
        self.desired_routes: dict = {}  # desired_topic -> command id
        self.ack_topic = None
        self.cred_request = None  # (method, path, body) from the catalog
        self.cred_renew = None  # clock.Deadline
        self.credentials = 0
        self.on_desired = None  # set by the app: handles one desired command state
        self.on_link_up = None  # set by the app: on_link_up(first) after every connect
        self._acks: dict = {}  # message_id -> ack body, for the records being sent
        self._waiting: set = set()  # their ids: late or duplicate acks are not kept
        self._ack_event = asyncio.Event()

    # -- what the app uses, shared with RealerHttps -------------------------------------

    @property
    def batch_max(self):
        return self.https.batch_max

    @property
    def enabled_sensors(self):
        return self.https.enabled_sensors

    @property
    def renewals(self):
        return self.https.renewals

    @property
    def renew_at(self):
        return self.https.renew_at

    def token_due(self):
        return self.https.token_due()

    async def authenticate(self, force=False):
        return await self.https.authenticate(force)

    async def poll_catalog(self, on_desired):
        """On MQTT only the sensor catalog is polled (desired state arrives by
        subscription); on HTTPS fallback everything is, as RealerHttps does."""
        if self.mode == MQTT:
            return await self.https.poll_catalog(None)
        return await self.https.poll_catalog(on_desired)

    def background(self):
        return [("mqtt", self.session)]

    # -- catalog and credential ---------------------------------------------------------

    async def _read_catalog(self):
        """True when the catalog offers MQTT to this device (and sets it up)."""
        resp = await self.https._call("GET", self.https._url("mqtt"))
        body = _json(resp)
        cat = body.get("mqtt") if isinstance(body, dict) else None
        if resp.status != 200 or not isinstance(cat, dict):
            log.warn(_TAG, "no MQTT catalog (%d %s): staying on HTTPS", resp.status,
                     error_type(body) or "")
            return False
        endpoint = cat.get("credential_endpoint")
        if not isinstance(endpoint, dict) or not endpoint.get("endpoint"):
            log.warn(_TAG, "catalog has no credential_endpoint: MQTT credentials are not "
                           "available for this device yet, staying on HTTPS")
            return False
        url = cat.get("broker_url")
        if not isinstance(url, str) or not isinstance(cat.get("feed_data_ack_topic"), str):
            log.warn(_TAG, "MQTT catalog without broker_url or ack topic: staying on HTTPS")
            return False
        self.cred_request = (endpoint.get("http_method") or "POST", endpoint["endpoint"],
                             endpoint.get("body"))
        self.ack_topic = cat["feed_data_ack_topic"]
        self._read_routes(body.get("mqtt_routes"))
        if self.client is None or (self.client.host, self.client.port) != \
                conn.parse_url(url)[1:3]:
            self.client = mqtt.Client(url, cat.get("client_id") or "", ca_file=self.ca_file,
                                      keepalive_s=60, on_message=self._on_message)
        self.client.subscriptions = {self.ack_topic: 1}
        for topic in self.desired_routes:
            self.client.subscriptions[topic] = 1
        return True

    def _read_routes(self, routes):
        self.routes = {}
        self.desired_routes = {}
        for r in routes if isinstance(routes, list) else ():
            if not isinstance(r, dict) or not isinstance(r.get("mqtt"), dict):
                continue
            kind, source, topics = r.get("source_type"), r.get("source_id"), r["mqtt"]
            if kind not in ("sensor", "command") or source is None:
                log.warn(_TAG, "route without source_type/source_id ignored")
                continue
            if isinstance(topics.get("feed_data_topic"), str):
                self.routes[(kind, source)] = topics["feed_data_topic"]
            if kind == "command" and isinstance(topics.get("desired_topic"), str):
                self.desired_routes[topics["desired_topic"]] = source

    async def _new_credential(self, client):
        if self.cred_request is None:
            raise RealerError("no credential_endpoint read yet")
        method, path, body = self.cred_request
        resp = await self.https._call(method, self.https.base + path, json=body)
        data = _json(resp)
        cred = data.get("mqtt") if isinstance(data, dict) else None
        if resp.status != 200 or not isinstance(cred, dict) or not cred.get("mqtt_credential"):
            raise RealerError("credential request answered %d %s" % (resp.status,
                                                                      error_type(data) or ""))
        log.secret(cred["mqtt_credential"])
        old = client.password
        client.client_id = cred.get("mqtt_client_id") or client.client_id
        client.username = cred.get("mqtt_username")
        client.password = cred["mqtt_credential"]
        if old:
            log.forget(old)
        renew_s = cred.get("renew_after") or cred.get("expires_in") or _DEFAULT_CRED_RENEW_S
        self.cred_renew = clock.Deadline(int(renew_s) * 1000)
        self.credentials += 1
        log.info(_TAG, "MQTT credential %d issued, renew in %ss", self.credentials, renew_s)

    async def _prepare(self, client):
        # before every connect: a credential that is due, or was refused, is replaced
        if client.password is None or self.cred_renew is None or self.cred_renew.expired() \
                or isinstance(client.error, mqtt.CredentialsRefused):
            await self._new_credential(client)

    # -- the session task ---------------------------------------------------------------

    async def session(self):
        """Background task: HTTPS fallback until the catalog offers MQTT, then one broker
        session kept up, with the credential renewed at renew_after."""
        while True:
            try:
                offered = await self._read_catalog()
            except Exception as e:  # the catalog is read again after a pause
                log.warn(_TAG, "MQTT catalog: %s", log.describe(e))
                await asyncio.sleep_ms(_RETRY_MS)
                continue
            if not offered:
                self.mode = HTTPS
                await asyncio.sleep_ms(_RECHECK_MS)
                continue
            client = self.client
            if client is None:
                continue
            self.mode = MQTT
            runner = asyncio.create_task(client.run(prepare=self._prepare,
                                                    on_connect=self._connected))
            try:
                await self._renew_forever(client)
            finally:
                runner.cancel()
                await client.disconnect()

    async def _connected(self, client):
        if self.on_link_up is not None:
            self.on_link_up(client.connects == 1)

    async def _renew_forever(self, client):
        while True:
            if self.cred_renew is None or not client.connected:
                await asyncio.sleep_ms(1000)
                continue
            await asyncio.sleep_ms(max(1000, self.cred_renew.remaining_ms()))
            if not self.cred_renew.expired():
                continue
            try:
                await self._new_credential(client)
            except Exception as e:  # the current credential is still valid for a while
                log.warn(_TAG, "credential renewal: %s", log.describe(e))
                await asyncio.sleep_ms(_RETRY_MS)
                continue
            log.info(_TAG, "reconnecting with the new credential")
            await client.disconnect()  # run() reconnects with it and re-subscribes

    # -- incoming -----------------------------------------------------------------------

    def _on_message(self, msg):
        try:
            body = json.loads(msg.payload)
        except ValueError:
            log.warn(_TAG, "not JSON on %s; ignored", msg.topic)
            return
        if not isinstance(body, dict):
            log.warn(_TAG, "not a JSON object on %s; ignored", msg.topic)
        elif msg.topic == self.ack_topic:
            mid = body.get("message_id")
            if not isinstance(mid, str) or not isinstance(body.get("status"), str):
                log.warn(_TAG, "ack without message_id/status ignored")
            elif mid in self._waiting:
                self._acks[mid] = body
                self._ack_event.set()
                self._ack_event.clear()
            else:  # for a record already judged (a re-publish was acked twice)
                log.debug(_TAG, "late ack for %s dropped", mid)
        elif msg.topic in self.desired_routes:
            body.setdefault("command_id", self.desired_routes[msg.topic])
            cmd = {"id": body["command_id"], "desired_id": body.get("desired_id"),
                   "value": body.get("value"), "seq": body.get("seq"),
                   "expires_at": body.get("expires_at")}
            if cmd["desired_id"] is None or self.on_desired is None:
                log.warn(_TAG, "desired message without desired_id ignored")
            else:
                self.on_desired(cmd)
        else:
            log.warn(_TAG, "message on unexpected topic %s ignored", msg.topic)

    # -- outgoing -----------------------------------------------------------------------

    async def send(self, records):
        """Deliver records; returns a SendResult like RealerHttps.send. Raises a NetError
        when the broker session is down (the uplink keeps the records and backs off)."""
        if self.mode == HTTPS:
            return await self.https.send(records)
        client = self.client
        if self.mode is None or client is None or not client.connected:
            raise mqtt.NotConnected("no broker session yet")
        result = SendResult()
        sent = []
        self._waiting = set(r.message_id for r in records)
        self._acks = {}
        for rec in records:
            topic = self.routes.get((rec.kind, rec.source))
            if topic is None:  # no route for it: the HTTPS endpoint still takes it
                sub = await self.https.send([rec])
                result.ok += sub.ok
                result.dead += sub.dead
                result.failed = result.failed or sub.failed
                result.wait_ms = max(result.wait_ms, sub.wait_ms)
                continue
            await client.publish(topic, json.dumps(_record_body(rec)), 1, wait=False)
            sent.append(rec)
        try:
            if sent:
                await self._await_acks(sent)
            for rec in sent:
                self._judge(result, rec, self._acks.get(rec.message_id))
        finally:
            self._waiting = set()
            self._acks = {}
        return result

    async def _await_acks(self, sent):
        deadline = clock.Deadline(self.ack_timeout_ms)
        while not deadline.expired() and any(r.message_id not in self._acks for r in sent):
            try:
                await asyncio.wait_for(self._ack_event.wait(),
                                       max(1, deadline.remaining_ms()) / 1000)
            except asyncio.TimeoutError:
                break

    def _judge(self, result, rec, ack):
        if ack is None:
            log.info(_TAG, "no ack for %s within %d ms; it will be published again",
                     rec.message_id, self.ack_timeout_ms)
            result.failed = True
            return
        status = ack.get("status")
        if status in ("accepted", "replayed"):
            result.ok.append(rec.message_id)
        elif status in ("conflict", "rejected") or (status == "error" and
                                                     ack.get("retryable") is False):
            reason = "%s %s" % (status, error_type(ack) or "")
            log.warn(_TAG, "record %s refused for good: %s", rec.message_id, reason)
            result.dead.append((rec.message_id, reason.strip()))
        else:
            log.info(_TAG, "ack %s for %s: kept for a retry", status, rec.message_id)
            result.failed = True


def _json(resp):
    try:
        return resp.json()
    except ValueError:
        return None
