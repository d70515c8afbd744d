"""Realer over HTTPS: OAuth client-credentials token, catalog polling, feed-data delivery.

What each answer means for an outbox record (the Realer HTTPS runtime guide's table, read
tolerantly as docs/realer.md says: `code` may be absent, `error` may be an object or a string):

- 2xx whose JSON object says `status` created / idempotent (with `code` 2000 or no code,
  no `error`) -> delivered. Nothing else is Realer's acceptance: a 2xx with an HTML page (a
  captive portal, a proxy), a JSON list, an empty body, `code` 2000 without a status, a
  batch item carrying only its `message_id` -> kept, with one warning naming what came back
- 409 message_conflict, 422 validation_failed, 413 (one record), 415, 400 -> dead letter:
  the record itself can never be accepted, retrying it would block the queue forever
- 401 -> new token, then the same request once more with the same message_id
- 402 / 403 / 404 -> the device or plan is wrong, not the record: keep everything, wait long
- 429 -> keep, wait at least Retry-After; 5xx, timeout, network -> keep, back off with jitter

Batches (`feed-data/batches`) carry up to `batch_max` records; the per-item result shape is
not documented, so each item is read like a single answer (`status`, `code`, `error`,
`http_status`) and an item without a created / idempotent status stays pending
(docs/realer.md "Acceptance"). Command catalog entries with a `desired_id`
are desired state; the downlink hands them to `on_desired` and firmware/desired.py decides
whether they are new.
"""
import asyncio

from micropython import const

from firmware import clock, log
from firmware.clouds import Adapter, SendResult, answer_json, shape
from firmware.net import http

_TAG = "realer"
_PERMANENT = (400, 409, 413, 415, 422)
_DEVICE_BLOCKED = (402, 403, 404)
_DEFAULT_RENEW_S = const(300)
_BLOCKED_WAIT_MS = const(300000)
_OK = "ok"
_DEAD = "dead"
_KEEP = "keep"
_NO_ANSWER = "no created/idempotent status"  # a 2xx that is not Realer's acceptance


class RealerError(Exception):
    """The cloud refused this device (bad client, no subscription, wrong scope)."""


def error_type(body):
    """`error.type` from a Realer error body, which may carry an object or a plain string."""
    if not isinstance(body, dict):
        return None
    err = body.get("error")
    if isinstance(err, dict):
        return err.get("type")
    if isinstance(err, str):
        return err
    return None


def to_wire(rec):
    """The feed-data JSON for one outbox record: value as string, time as ISO 8601 UTC,
    `report_status` only with a desired_id and omitted for the default `applied`."""
    body = {"value": rec.value, "value_received_at": clock.iso8601(rec.t),
            "message_id": rec.message_id}
    if rec.kind == "command":
        body["command_id"] = rec.source
        if rec.desired_id is not None:
            body["desired_id"] = rec.desired_id
            if rec.report_status and rec.report_status != "applied":
                body["report_status"] = rec.report_status
    else:
        body["sensor_id"] = rec.source
    return body


def verdict(status, body):
    """(`ok` | `dead` | `keep`, reason) for one feed-data answer or batch item. Only a 2xx
    JSON object with `status` created / idempotent is acceptance (`code` may be absent)."""
    if isinstance(body, dict):
        item_status = body.get("status")
        if item_status == "error" or body.get("error") is not None:
            etype = error_type(body) or "error"
            if etype in ("message_conflict", "validation_failed", "payload_too_large",
                         "unsupported_media_type"):
                return _DEAD, etype
            return _KEEP, etype
        if 200 <= status < 300 and item_status in ("created", "idempotent") and \
                body.get("code", 2000) in (2000, "2000"):
            return _OK, item_status
    if status in _PERMANENT:
        return _DEAD, error_type(body) or "http %d" % status
    if 200 <= status < 300:
        return _KEEP, _NO_ANSWER
    return _KEEP, error_type(body) or "http %d" % status


class RealerHttps(Adapter):
    def __init__(self, cfg, client=None, **hooks):
        super().__init__(**hooks)  # on_reached: after a token or catalog success
        cloud = cfg.get("cloud", {})
        self.base = cloud["api_url"].rstrip("/")
        self.device_id = cloud["device_id"]
        self.client_id = cloud["client_id"]
        self.client_secret = cloud["client_secret"]
        self.scope = cloud.get("scope")
        self.batch_max = cloud.get("batch_max", 20)
        self.http = client or http.Client(ca_file=cfg.ca_path)
        self.token = None
        self.renew_at = None  # clock.Deadline
        self.renewals = 0
        self.enabled_sensors = None  # None until the sensor catalog was read: report all
        self._basic = http.basic_auth(self.client_id, self.client_secret)
        self._auth_lock = asyncio.Lock()  # several tasks may find the token due at once

    def _url(self, tail):
        return "%s/iot/v1/devices/%s/%s" % (self.base, self.device_id, tail)

    # The token request; called at start, at renew_after, and after a 401. Returns the wait
    # (ms) the server asked for when it could not issue one now.
    async def authenticate(self, force=False):
        async with self._auth_lock:
            if force or self.token_due():
                return await self._token_request()
            return 0

    async def _token_request(self):
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        resp = await self.http.request("POST", self.base + "/oauth/token", form=form,
                                       headers={"Authorization": self._basic}, idempotent=True)
        body = answer_json(resp)
        if resp.status == 200 and isinstance(body, dict) and body.get("access_token"):
            if self.token:
                log.forget(self.token)
            self.token = body["access_token"]
            log.secret(self.token)
            renew_s = body.get("renew_after") or body.get("expires_in") or _DEFAULT_RENEW_S
            self.renew_at = clock.Deadline(int(renew_s) * 1000)
            self.renewals += 1
            log.info(_TAG, "token issued, renew in %ss", renew_s)
            self._reached()
            return 0
        if resp.status == 429 or resp.status >= 500:
            return resp.retry_after_ms() or 0
        raise RealerError("token request refused: %d %s" % (resp.status,
                                                             error_type(body) or ""))

    # The cloud answered a documented success: the link works (the uplink stops backing off).
    def _reached(self):
        if self.on_reached is not None:
            self.on_reached()

    def token_due(self):
        return self.token is None or self.renew_at is None or self.renew_at.expired()

    async def _call(self, method, url, json=None, idempotent=True):
        if self.token_due():
            await self.authenticate()
            if self.token_due():
                raise RealerError("no token yet (the token endpoint asked to wait)")
        for attempt in (0, 1):
            resp = await self.http.request(method, url, json=json, idempotent=idempotent,
                                           headers={"Authorization": "Bearer %s" % self.token})
            if resp.status != 401 or attempt:
                return resp
            log.info(_TAG, "401 on %s: renewing the token and retrying once", method)
            await self.authenticate(force=True)
        return resp

    async def send(self, records):
        """Deliver records (oldest first); returns a SendResult. Raises nothing for
        answers; network errors propagate to the uplink, which keeps the records."""
        result = SendResult()
        if len(records) == 1:
            rec = records[0]
            resp = await self._call("POST", self._url("feed-data"), json=to_wire(rec))
            body = answer_json(resp)
            if self._judge(result, rec, resp.status, body, resp):
                log.warn(_TAG, "feed-data answered %d with %s: not an acceptance, %s kept",
                         resp.status, shape(resp.body, body), rec.message_id)
            return result
        items = [to_wire(r) for r in records]
        resp = await self._call("POST", self._url("feed-data/batches"), json={"items": items})
        body = answer_json(resp)
        results = body.get("results") if isinstance(body, dict) else None
        if not (200 <= resp.status < 300) or not isinstance(results, list):
            if resp.status == 413:  # too big as a batch: the next attempt goes one by one
                self.batch_max = max(1, len(records) // 2)
            if 200 <= resp.status < 300:
                log.warn(_TAG, "batch answered %d with %s: not an acceptance, %d records "
                         "kept", resp.status, shape(resp.body, body), len(records))
            self._blocked_or_retry(result, resp.status, body, resp)
            return result
        by_id = {}
        for item in results:
            if isinstance(item, dict) and isinstance(item.get("message_id"), str):
                by_id[item["message_id"]] = item
        unanswered: list = []
        for rec in records:
            item = by_id.get(rec.message_id)
            if item is None:
                result.failed = True  # no answer for this one: it stays pending
                unanswered.append((rec.message_id, None))
                continue
            status = item.get("http_status", 200)
            if isinstance(status, bool) or not isinstance(status, int):
                status = 200  # unreadable: the item's own status and error decide
            if self._judge(result, rec, status, item, None):
                unanswered.append((rec.message_id, item))
        if unanswered:  # one line for the whole batch, naming the first odd item
            mid, item = unanswered[0]
            log.warn(_TAG, "batch answered %d: %d of %d items without created/idempotent "
                     "(%s: %s); kept", resp.status, len(unanswered), len(records), mid,
                     "no result" if item is None else shape(None, item))
        return result

    # Sorts one answer into the result; True when it was a 2xx without acceptance (the
    # caller warns once, naming what came back).
    def _judge(self, result, rec, status, body, resp):
        what, reason = verdict(status, body)
        if what == _OK:
            result.ok.append(rec.message_id)
        elif what == _DEAD:
            log.warn(_TAG, "record %s rejected for good: %s", rec.message_id, reason)
            result.dead.append((rec.message_id, reason))
        else:
            self._blocked_or_retry(result, status, body, resp)
        return reason == _NO_ANSWER

    def _blocked_or_retry(self, result, status, body, resp):
        result.failed = True
        if status in _DEVICE_BLOCKED:
            log.error(_TAG, "cloud refuses the device (%d %s); holding data", status,
                      error_type(body) or "")
            result.wait_ms = max(result.wait_ms, _BLOCKED_WAIT_MS)
        elif resp is not None:
            result.wait_ms = max(result.wait_ms, resp.retry_after_ms() or 0)

    async def poll_catalog(self, on_desired):
        """Read both catalogs; hand each desired command state to on_desired(cmd) (with
        on_desired None only the sensor catalog is read). Returns the wait the server asked
        for (429 Retry-After) in ms, else 0."""
        resp = await self._call("GET", self._url("sensors"))
        body = answer_json(resp)
        if resp.status == 200 and isinstance(body, dict) and isinstance(body.get("sensors"),
                                                                         list):
            self.enabled_sensors = [s.get("id") for s in body["sensors"] if isinstance(s, dict)]
            self._reached()
        elif resp.status != 200:
            return self._catalog_wait(resp, body)
        if on_desired is None:
            return 0
        resp = await self._call("GET", self._url("commands"))
        body = answer_json(resp)
        if resp.status != 200:
            return self._catalog_wait(resp, body)
        commands = body.get("commands") if isinstance(body, dict) else None
        if not isinstance(commands, list):
            log.warn(_TAG, "command catalog without a commands list; ignored: %r",
                     bytes(resp.body[:80]))
            return 0
        for cmd in commands:
            if isinstance(cmd, dict) and cmd.get("desired_id") is not None:
                on_desired(cmd)
        return 0

    def _catalog_wait(self, resp, body):
        log.warn(_TAG, "catalog answered %d %s", resp.status, error_type(body) or "")
        if resp.status in _DEVICE_BLOCKED:
            return _BLOCKED_WAIT_MS
        return resp.retry_after_ms() or 0
