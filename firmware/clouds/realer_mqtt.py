"""Realer over MQTT 5 (the Realer MQTT guide): HTTPS token and catalog, a short-lived broker
credential, feed data on route topics, desired state and application acks on subscriptions.

The HTTPS side (token, sensor catalog, fallback delivery) is a RealerHttps inside. The
`mqtt` background task reads `GET .../mqtt`, asks `credential_endpoint` for a credential,
connects to the catalog's `broker_url` with exactly the returned client id / user name /
credential (never the bearer token), subscribes to `feed_data_ack_topic` and every command
route's `desired_topic`, and at `renew_after` fetches the next credential and reconnects
(the MQTT client re-subscribes). A catalog without `credential_endpoint` (or no MQTT catalog
at all) means this device has no MQTT yet: everything stays on HTTPS, logged.

The catalog is read again every `cloud.mqtt_catalog_s` (600 s by default) and before the
reconnect that follows a refusal, a TLS failure or a connection (DNS) failure: a moved
`broker_url` or changed routes reconnect the session, a removed `credential_endpoint` ends
it (HTTPS). A credential the broker refused is never offered again.

Routes (docs/realer.md, "MQTT routes"): an item is {"source_type", "mqtt": {...}}; an id in it
(`source_id`, `sensor_id`/`command_id`) is used when present, never required. A record goes
to the route naming its source, else to the first route of its type without an id (the
payload names the source). What the firmware cannot use is logged once, naming what is
missing; a record without a route goes over HTTPS (also logged once).

Delivery: a record is published QoS 1, retain off, on its route's `feed_data_topic` and
leaves the outbox only on an `accepted` / `replayed` ack on the ack topic (a PUBACK is
broker acceptance only). `conflict` / `rejected` dead-letter it; `error` follows its
`retryable` (absent: retry). A record without an ack within `ack_timeout_s`, or whose
broker session ended before its ack, stays pending and is published again, with the same
message_id, on the next attempt. Sends may overlap (`send_depth`): the uplink publishes the
next batch while the last one waits for its acks; each send waits for its own records.

Ack and desired bodies are not documented; they are read tolerantly:
ack {"message_id", "status", "retryable"?, "error"?: {"type"} or "text"};
desired {"command_id"?, "desired_id", "value", "seq" | "sequence" | "sequence_number"?,
"expires_at"?} (the route's id gives the command when command_id is absent).
"""
import asyncio
import json

from micropython import const

from firmware import clock, log
from firmware.clouds import Adapter, answer_json, mqtt_session
from firmware.clouds.realer_https import RealerError, RealerHttps, SendResult, error_type, to_wire
from firmware.net import conn, mqtt

_TAG = "realer-mqtt"
HTTPS = "https"
MQTT = "mqtt"
_DEFAULT_SCOPE = ("iot:catalog:read iot:feed-data:write iot:mqtt:connect iot:mqtt:ack:read "
                  "iot:mqtt:feed-data:write iot:mqtt:desired:read")
_CATALOG_MS = const(600000)  # how often the catalog is read again (cloud.mqtt_catalog_s)
_RETRY_MS = const(30000)
# In-flight QoS 1 window: a whole batch (batch_max, 20 by default) goes out in one round
# trip; the broker's Receive Maximum still caps it (mosquitto: 20). docs/realer.md.
_WINDOW = const(32)
# Send attempts the uplink may run at once over MQTT: the next batch is published while the
# previous one waits for its application acks, so one round trip (and the cloud's work on a
# batch) no longer stalls the drain at every batch boundary (bench/mqtt-throughput.md).
_DEPTH = const(2)
_SEQ_NAMES = ("seq", "sequence", "sequence_number")
_ACK_TIMEOUT_MS = const(15000)
_SESSION_CHECK_MS = const(1000)  # how often a send waiting for acks looks at the session
_DEFAULT_CRED_RENEW_S = const(300)


class RealerMqtt(Adapter):
    def __init__(self, cfg, client=None, on_reached=None, **hooks):
        super().__init__(**hooks)
        # token and catalog calls run in the inner HTTPS adapter (also in HTTPS fallback):
        # the app's on_reached goes there, or a success there would not end the backoff
        self.https = RealerHttps(cfg, client, on_reached=on_reached)
        self.https.scope = self.https.scope or _DEFAULT_SCOPE  # the MQTT calls need them
        self.ca_file = cfg.ca_path
        self.ack_timeout_ms = int(cfg.get("cloud").get("ack_timeout_s", 0) * 1000) or \
            _ACK_TIMEOUT_MS
        self.catalog_ms = int(cfg.get("cloud").get("mqtt_catalog_s", 0) * 1000) or _CATALOG_MS
        self.mode = None  # None until the MQTT catalog was read, then HTTPS or MQTT
        self.client = None  # mqtt.Client once the catalog named a broker
        mqtt.reserve()  # its buffers, made now while the heap is whole
        self.routes: dict = {}  # (kind, source id) -> feed_data_topic, routes naming an id
        self.type_routes: dict = {}  # kind -> feed_data_topic of its first route without id
        self.desired_routes: dict = {}  # desired_topic -> command id, or None (no id)
        self.refused = False  # the broker refused the current credential
        self._stale = clock.Deadline(0)  # when the catalog is to be read again
        self._no_mqtt = False  # a re-read catalog no longer offers MQTT
        self._connects_seen = 0  # client.connects at the last session_prepare
        self._prep_failed = False  # the last session_prepare raised
        self._subscribed = 0  # client.connects when the subscriptions were last made
        self._reported: set = set()  # catalog problems already logged
        self.ack_topic = None
        self.cred_request = None  # (method, path, body) from the catalog
        self.cred_renew = None  # clock.Deadline
        self.credentials = 0
        self.depth = _DEPTH
        # the records of the sends running now (several may overlap): acks for others (late
        # or duplicate) are not kept; each send waits on its own event (no lost wake-up)
        self._acks: dict = {}  # message_id -> ack body
        self._waiting: dict = {}  # message_id -> the asyncio.Event of the send it is in

    # -- what the app uses, shared with RealerHttps -------------------------------------

    @property
    def batch_max(self):
        return self.https.batch_max

    @property
    def send_depth(self):
        """How many send() calls the uplink may run at once: over MQTT, `depth` (each send
        waits for its own records' acks); over HTTPS one."""
        return self.depth if self.mode == MQTT else 1

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
        return await self._refresh() is not None

    async def _refresh(self):
        """Read the catalog and apply it. None: it offers no MQTT now (logged); else whether
        a live session must reconnect (the broker moved or the subscriptions changed)."""
        self._stale = clock.Deadline(self.catalog_ms)
        resp = await self.https._call("GET", self.https._url("mqtt"))
        body = answer_json(resp)
        cat = body.get("mqtt") if isinstance(body, dict) else None
        if resp.status != 200 or not isinstance(cat, dict):
            self._error_once("no MQTT catalog (%d %s): staying on HTTPS" %
                             (resp.status, error_type(body) or ""), warn=True)
            return None
        endpoint = cat.get("credential_endpoint")
        if not isinstance(endpoint, dict) or not endpoint.get("endpoint"):
            self._error_once("catalog has no credential_endpoint: MQTT credentials are not "
                             "available for this device yet, staying on HTTPS", warn=True)
            return None
        url, ack = cat.get("broker_url"), cat.get("feed_data_ack_topic")
        missing = [k for k, v in (("mqtt.broker_url", url), ("mqtt.feed_data_ack_topic", ack))
                   if not isinstance(v, str) or not v]
        host, port, secure = None, 0, True
        try:
            if not missing:
                _, host, port, _, secure = conn.parse_url(url)
        except conn.URLError as e:
            missing = ["a usable mqtt.broker_url (%s)" % e]
        if missing:
            self._error_once("MQTT catalog unusable, it lacks %s: staying on HTTPS" %
                             " and ".join(missing))
            return None
        self.cred_request = (endpoint.get("http_method") or "POST", endpoint["endpoint"],
                             endpoint.get("body"))
        before = (self.ack_topic, self.routes, self.type_routes, self.desired_routes)
        self.ack_topic = ack
        self._read_routes(body.get("mqtt_routes"))
        rerouted = before != (ack, self.routes, self.type_routes, self.desired_routes)
        subs = {ack: 1}
        for topic in self.desired_routes:
            subs[topic] = 1
        client = self.client
        if client is None:
            self.client = mqtt.Client(url, cat.get("client_id") or "", ca_file=self.ca_file,
                                      keepalive_s=60, window=_WINDOW,
                                      on_message=self._on_message)
            self.client.subscriptions = subs
            return False
        moved = (client.host, client.port, client.secure) != (host, port, secure)
        if moved:  # the next connect goes there, with a credential asked for it
            log.info(_TAG, "catalog moved the broker to %s:%d", host, port)
            client.host, client.port, client.secure = host, port, secure
            self.cred_renew = None
        if rerouted:  # the broker's ACL follows the credential: ask for one with the routes
            log.info(_TAG, "catalog routes changed")
            self.cred_renew = None
        client.subscriptions = subs  # (subscribe() drops refused filters from it)
        return moved or rerouted

    def _read_routes(self, routes):
        """Routes by source_type (the Realer MQTT guide): a record goes to the route that names
        its source (source_id, sensor_id or command_id, when the item has one), else to the
        first route of its type without an id. Every command route's desired_topic is
        subscribed. Items the firmware cannot use are logged once, naming what is missing."""
        self.routes = {}
        self.type_routes = {}
        self.desired_routes = {}
        if not isinstance(routes, list) or not routes:
            self._error_once("MQTT catalog lists no mqtt_routes: nothing can be published "
                             "over MQTT, records go over HTTPS")
            return
        for i, r in enumerate(routes):
            topics = r.get("mqtt") if isinstance(r, dict) else None
            kind = r.get("source_type") if isinstance(r, dict) else None
            if kind not in ("sensor", "command"):
                self._error_once("mqtt_routes[%d] ignored: source_type must be \"sensor\" or "
                                 "\"command\", got %r" % (i, kind))
                continue
            if not isinstance(topics, dict):
                topics = {}
            feed = topics.get("feed_data_topic")
            if not isinstance(feed, str) or not feed:
                self._error_once("mqtt_routes[%d] (%s) ignored: no mqtt.feed_data_topic" %
                                 (i, kind))
                continue
            source = r.get("source_id", r.get(kind + "_id"))
            if source is not None:
                self.routes.setdefault((kind, source), feed)
            elif kind not in self.type_routes:
                self.type_routes[kind] = feed
            desired = topics.get("desired_topic")
            if kind == "command" and isinstance(desired, str) and desired:
                self.desired_routes[desired] = source
        for kind in ("sensor", "command"):
            if kind not in self.type_routes and \
                    not any(k == kind for k, _ in self.routes):
                self._error_once("MQTT catalog has no usable %s route: %s records go over "
                                 "HTTPS" % (kind, kind))

    def route_for(self, kind, source):
        """The feed_data_topic for one record, or None when the catalog has no route for it."""
        return self.routes.get((kind, source)) or self.type_routes.get(kind)

    def _error_once(self, text, warn=False):
        # a catalog problem is logged when first seen, not at every re-read
        if text in self._reported:
            return
        if len(self._reported) >= 16:
            self._reported.clear()
        self._reported.add(text)
        (log.warn if warn else log.error)(_TAG, text)

    async def _new_credential(self, client):
        if self.cred_request is None:
            raise RealerError("no credential_endpoint read yet")
        method, path, body = self.cred_request
        resp = await self.https._call(method, self.https.base + path, json=body)
        data = answer_json(resp)
        cred = data.get("mqtt") if isinstance(data, dict) else None
        if resp.status != 200 or not isinstance(cred, dict) or not cred.get("mqtt_credential"):
            raise RealerError("credential request answered %d %s" % (resp.status,
                                                                      error_type(data) or ""))
        log.secret(cred["mqtt_credential"])
        old = client.password
        client.client_id = cred.get("mqtt_client_id") or client.client_id
        client.username = cred.get("mqtt_username")
        client.password = cred["mqtt_credential"]
        if old and old != client.password:
            log.forget(old)
        self.refused = False
        renew_s = cred.get("renew_after") or cred.get("expires_in") or _DEFAULT_CRED_RENEW_S
        self.cred_renew = clock.Deadline(int(renew_s) * 1000)
        self.credentials += 1
        log.info(_TAG, "MQTT credential %d issued, renew in %ss", self.credentials, renew_s)

    async def session_prepare(self, client):
        # before every connect. A refused credential stays refused until a new one came
        # (also when asking for it failed in between). After a refusal or a connect that
        # failed (TLS, DNS, refused, unreachable) the catalog is read again first: the
        # broker may have moved. A session that merely dropped reconnects as it was.
        err = client.error
        # run() also records why the previous session_prepare raised: that was no connect
        failed = err is not None and client.connects == self._connects_seen and \
            not self._prep_failed
        self._connects_seen = client.connects
        self._prep_failed = True
        if _refusal(err):
            self.refused = True
        if failed or _refusal(err) or self._stale.expired():
            if await self._refresh() is None:
                self._no_mqtt = True
                raise RealerError("the catalog no longer offers MQTT")
        if client.password is None or self.cred_renew is None or self.cred_renew.expired() \
                or self.refused:
            await self._new_credential(client)
        self._prep_failed = False

    # -- the session task (firmware/clouds/__init__.py: mqtt_session and its hooks) -------

    # Background task: HTTPS fallback until the catalog offers MQTT, then one broker session
    # kept up, with the credential renewed at renew_after and the catalog read again every
    # catalog interval (and after refusals, TLS and connection failures). The shared loop
    # as a class attribute binds like a method: cloud.session() is mqtt_session(cloud).
    session = mqtt_session

    async def session_open(self, ended):
        if ended:  # session_tend returned: the catalog stopped offering MQTT
            log.warn(_TAG, "the catalog no longer offers MQTT: records go over HTTPS")
            self.mode = HTTPS
            await asyncio.sleep_ms(self.catalog_ms)
        try:
            offered = await self._read_catalog()
        except Exception as e:  # the catalog is read again after a pause
            log.warn(_TAG, "MQTT catalog: %s", log.describe(e))
            await asyncio.sleep_ms(min(_RETRY_MS, self.catalog_ms))
            return None
        if not offered:
            self.mode = HTTPS
            await asyncio.sleep_ms(self.catalog_ms)
            return None
        client = self.client
        if client is not None:
            self.mode = MQTT
            self._no_mqtt = False
        return client

    async def session_up(self, client):
        self._subscribed = client.connects  # the ack topic is subscribed on this session
        if self.on_link_up is not None:
            self.on_link_up(client.connects == 1)

    async def session_tend(self, client):
        """Returns when the catalog stops offering MQTT. Meanwhile: the credential renewed at
        renew_after, the catalog re-read when its interval is over."""
        while not self._no_mqtt:
            waits = [self._stale.remaining_ms()]
            if self.cred_renew is not None and client.connected:
                waits.append(self.cred_renew.remaining_ms())
            await asyncio.sleep_ms(max(200, min(1000, min(waits))))
            if self._stale.expired():
                try:
                    reconnect = await self._refresh()
                except Exception as e:  # the session goes on with what it has
                    log.warn(_TAG, "MQTT catalog: %s", log.describe(e))
                    continue
                if reconnect is None:
                    return
                if reconnect and client.connected:
                    log.info(_TAG, "catalog changed: reconnecting")
                    await client.disconnect()  # run() reconnects and subscribes anew
                continue
            if self.cred_renew is None or not client.connected or \
                    not self.cred_renew.expired():
                continue
            try:
                await self._new_credential(client)
            except Exception as e:  # the current credential is still valid for a while
                log.warn(_TAG, "credential renewal: %s", log.describe(e))
                self.cred_renew = clock.Deadline(_RETRY_MS)
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
                self._waiting[mid].set()  # stays set until its send looked
            else:  # for a record already judged (a re-publish was acked twice)
                log.debug(_TAG, "late ack for %s dropped", mid)
        elif msg.topic in self.desired_routes:
            command = body.get("command_id", self.desired_routes[msg.topic])
            cmd = {"id": command, "desired_id": body.get("desired_id"),
                   "value": body.get("value"), "seq": None, "expires_at": body.get("expires_at")}
            for name in _SEQ_NAMES:  # the name is not documented: any of the likely ones
                if body.get(name) is not None:
                    cmd["seq"] = body[name]
                    break
            if command is None:
                log.warn(_TAG, "desired message on %s names no command_id and its route no "
                               "id: ignored", msg.topic)
            elif cmd["desired_id"] is None or self.on_desired is None:
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
        if self._subscribed != client.connects:  # an ack before that would be lost
            raise mqtt.NotConnected("broker session not subscribed yet")
        result = SendResult()
        sent: list = []
        event = asyncio.Event()
        for rec in records:
            self._waiting[rec.message_id] = event
        session = client.connects  # acks come on this session only
        try:
            await self._publish(client, records, sent, result)
            ended = bool(sent) and not await self._await_acks(sent, event, client, session)
            if ended:
                log.info(_TAG, "broker session ended with %d of %d acks outstanding: those "
                         "records are published again", sum(
                             1 for r in sent if r.message_id not in self._acks), len(sent))
            for rec in sent:
                self._judge(result, rec, self._acks.get(rec.message_id), ended)
        finally:
            for rec in records:
                self._waiting.pop(rec.message_id, None)
                self._acks.pop(rec.message_id, None)
        return result

    async def _publish(self, client, records, sent, result):
        for rec in records:
            topic = self.route_for(rec.kind, rec.source)
            if topic is None:  # no route: HTTPS still takes it, said once
                self._error_once("no MQTT route for %s %s in the catalog: its records go "
                                 "over HTTPS" % (rec.kind, rec.source))
                sub = await self.https.send([rec])
                result.ok += sub.ok
                result.dead += sub.dead
                result.failed = result.failed or sub.failed
                result.wait_ms = max(result.wait_ms, sub.wait_ms)
                continue
            await client.publish(topic, json.dumps(to_wire(rec)), 1, wait=False)
            sent.append(rec)

    async def _await_acks(self, sent, event, client, session):
        """Waits until every record sent has its ack, at most ack_timeout; False when the
        broker session ended first: acks published meanwhile went to a session that is gone,
        so the records go back to the uplink at once (published again, same message_id)
        instead of waiting out ack_timeout."""
        # cleared before each look, set by every ack: an ack that comes while wait_for's
        # task is not yet waiting still wakes it (a pulse then was lost, up to ack_timeout)
        deadline = clock.Deadline(self.ack_timeout_ms)
        while not deadline.expired():
            event.clear()
            if all(r.message_id in self._acks for r in sent):
                break
            if client.connects != session or not client.connected:
                return False
            try:
                await asyncio.wait_for(event.wait(), max(1, min(
                    deadline.remaining_ms(), _SESSION_CHECK_MS)) / 1000)
            except asyncio.TimeoutError:
                pass
        return True

    def _judge(self, result, rec, ack, ended=False):
        if ack is None:
            if not ended:  # (a session that ended was said once for the batch)
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


def _refusal(err):
    # the broker will not take this credential: at CONNACK, or by ending the session
    return isinstance(err, mqtt.CredentialsRefused) or (
        isinstance(err, mqtt.ServerDisconnect) and err.code in (0x86, 0x87))
