"""NUBISON IoT over HTTP(S): login, one-time registration, data delivery, logout.

NUBISON's public HTTP protocol page has four calls and no desired-state channel, so this
adapter never calls `on_desired`; command records (local changes and desired reports) go out
as data too.
Choices (reading rules in docs/design.md; docs/nubison.md has the longer story):

- login: POST /devices/login, form `deviceKey=<product_code>_<device_id>`, HTTP Basic of
  `client_id:client_secret`. The spec's own 415 says "must be application/json", so a 415
  makes the device retry once as JSON and keep JSON for later logins. The token is read from
  `AccessToken` (also `accessToken` / `access_token`); later calls carry it as `accessToken`.
- the login answer has no lifetime: the token is used until a 401, then one new login and
  the same request once more (same message_id). `renew_at` is a long re-login period.
- register: POST /devices once; success is persisted in `<root>/nubison.json` (temp, then
  rename) with the device key, so a reboot does not register again; a new key registers.
- data: POST /devices/data {accessToken, deviceKey, data}; `data` is one record
  {"message_id", "kind", "id", "value", "time"} (+ "desired_id", "report_status" on a
  desired report). The spec has no idempotency key: message_id inside data lets the server
  de-duplicate; delivery is at-least-once. Acceptance is the spec's only success, 201,
  with an empty body or a JSON object (its response content type is JSON); any other 2xx
  (a captive portal's 200 page, a JSON list, a 200 with nothing) keeps the record, with a
  warning naming what came back. Registration reads its answer the same way.
- errors, by the `code` of a 400 (read tolerantly: any body, any type):
  ERROR401 auth_header_missing, ERROR402 device_key_missing, ERROR403 client_invalid ->
  the device is refused (hold everything, try again after a long wait);
  ERROR404 token_missing -> a new login, like 401; ERROR406 data_missing (and any other 400)
  -> this record can never be accepted: dead letter. ERROR405 is not in the spec: it is
  read as an unknown 400. HTTP 405 ("service or device unknown"): forget the registration,
  register again and retry once; a second 405 holds the device. 415 on JSON calls: held
  (the device cannot send another form). 429 / 5xx / unreadable answers: keep, back off,
  honouring Retry-After.
"""
import asyncio
import json

from micropython import const

from firmware import clock, log, statefile
from firmware.clouds import Adapter, SendResult, answer_json, shape
from firmware.config_types import join
from firmware.net import http

_TAG = "nubison"
_STATE_FILE = "nubison.json"
_RELOGIN_MS = const(21600000)  # 6 h: no lifetime is given; a 401 re-logs in sooner
_HELD_MS = const(300000)  # a refused device asks again after 5 min
_NO_DESIRED_MS = const(3600000)  # there is no catalog to poll
_CLOSE_TIMEOUT_MS = const(5000)
_OK = "ok"
_DEAD = "dead"
_KEEP = "keep"
_RELOGIN = "relogin"
_REREGISTER = "reregister"
_HELD = "held"

# 400 codes -> (name, what it means for the request)
CODES = {
    "ERROR401": ("auth_header_missing", _HELD),
    "ERROR402": ("device_key_missing", _HELD),
    "ERROR403": ("client_invalid", _HELD),
    "ERROR404": ("token_missing", _RELOGIN),
    "ERROR406": ("data_missing", _DEAD),
}


class NubisonError(Exception):
    """A NUBISON call failed; `code` is the ERROR4xx code or the HTTP status."""

    def __init__(self, msg, code=None):
        super().__init__(msg)
        self.code = code


class NubisonRefused(NubisonError):
    """The cloud refuses the device itself (bad client, unknown service or device key):
    nothing can be delivered until the configuration or the cloud changes."""


def error_code(body):
    """The `code` string of an error body, or None for any other shape."""
    if isinstance(body, dict):
        code = body.get("code")
        if isinstance(code, str):
            return code
    return None


def verdict(status, body, raw=None):
    """(what, reason) for one answer (`body` parsed, None when not JSON; `raw` the bytes):
    what is ok | dead | keep | relogin | reregister | held; reason names the error
    (`ERROR406 data_missing`, `http 503`) or, for a 2xx that is not 201, what came back."""
    if status == 201 and (isinstance(body, dict) or (body is None and not raw)):
        return _OK, "http 201"
    if 200 <= status < 300:
        return _KEEP, "http %d with %s, not the 201 that accepts" % (status, shape(raw, body))
    if status == 401:
        return _RELOGIN, "http 401 token_invalid"
    if status == 405:
        return _REREGISTER, "http 405 not_found"
    if status == 415:
        return _HELD, "http 415 unsupported_media_type"
    if status == 400:
        code = error_code(body)
        name, what = CODES.get(code, ("bad_request", _DEAD))
        return what, "%s %s" % (code or "http 400", name)
    return _KEEP, "http %d" % status


def to_wire(rec):
    """The `data` object for one outbox record."""
    data = {"message_id": rec.message_id, "kind": rec.kind, "id": rec.source,
            "value": rec.value, "time": clock.iso8601(rec.t)}
    if rec.desired_id is not None:
        data["desired_id"] = rec.desired_id
        data["report_status"] = rec.report_status or "applied"
    return data


def _token_from(body):
    if not isinstance(body, dict):
        return None
    for key in ("AccessToken", "accessToken", "access_token"):
        tok = body.get(key)
        if isinstance(tok, str) and tok:
            return tok
    return None


class Nubison(Adapter):
    def __init__(self, cfg, client=None, **hooks):
        super().__init__(**hooks)  # on_reached after a login; no desired state, no sessions
        cloud = cfg.get("cloud", {})
        self.base = cloud["api_url"].rstrip("/")
        self.device_key = "%s_%s" % (cloud["product_code"], cloud["device_id"])
        self.device_name = cloud.get("device_name") or self.device_key
        self.model_name = cloud.get("model_name")
        self.batch_max = cloud.get("batch_max", 8)
        self.http = client or http.Client(ca_file=cfg.ca_path)
        self.token = None
        self.renew_at = None  # clock.Deadline
        self.renewals = 0
        self.logins = 0
        self.enabled_sensors = None  # no sensor catalog: report every sensor
        self.held_until = None  # clock.Deadline while the cloud refuses the device
        self.held_reason = None
        self._basic = http.basic_auth(cloud["client_id"], cloud["client_secret"])
        self._login_json = False
        self._lock = asyncio.Lock()
        self._state_path = join(getattr(cfg, "root", None), _STATE_FILE)
        self.registered = self._load_registered()

    def background(self):
        return []

    # -- persisted registration ------------------------------------------------------
    def _load_registered(self):
        try:
            with open(self._state_path) as f:
                state = json.load(f)
        except OSError:
            return False  # never registered
        except ValueError as e:
            log.warn(_TAG, "%s unreadable (%s): registering again", self._state_path,
                     log.describe(e))
            return False
        return isinstance(state, dict) and state.get("registered") == self.device_key

    def _save_registered(self, yes):
        self.registered = yes
        statefile.write_json(self._state_path, {"registered": self.device_key if yes else None})

    # -- login / register -------------------------------------------------------------
    def token_due(self):
        return self.token is None or not self.registered or self.renew_at is None or \
            self.renew_at.expired()

    def _hold(self, reason):
        self.held_until = clock.Deadline(_HELD_MS)
        self.held_reason = reason
        log.error(_TAG, "cloud refuses the device (%s); holding data, asking again in %d s",
                  reason, _HELD_MS // 1000)
        return _HELD_MS

    def _held_ms(self):
        if self.held_until is None:
            return 0
        left = self.held_until.remaining_ms()
        if left == 0:
            self.held_until = None
        return left

    async def authenticate(self, force=False):
        """Log in (and register once) when due or forced. Returns the wait in ms the cloud
        asked for or a hold lasts (the token then stays due); 0 when logged in. Network
        errors propagate."""
        async with self._lock:
            held = self._held_ms()
            if held:
                return held
            if force or self.token is None or self.renew_at is None or \
                    self.renew_at.expired():
                wait = await self._login()
                if self.token is None:
                    return wait
            if not self.registered:
                return await self._register()
            return 0

    async def _login(self):
        self._drop_token()
        for attempt in (0, 1):
            kw = {"json": {"deviceKey": self.device_key}} if self._login_json else \
                {"form": {"deviceKey": self.device_key}}
            resp = await self.http.request("POST", self.base + "/devices/login",
                                           headers={"Authorization": self._basic},
                                           idempotent=True, **kw)
            if resp.status == 415 and not self._login_json and attempt == 0:
                log.info(_TAG, "login: 415 for a form, sending JSON")
                self._login_json = True
                continue
            break
        body = answer_json(resp)
        if resp.status == 200:
            tok = _token_from(body)
            if tok is None:
                log.warn(_TAG, "login: 200 without a readable AccessToken; retrying later")
                return 0
            self._set_token(tok)
            return 0
        what, reason = verdict(resp.status, body, resp.body)
        if what in (_HELD, _REREGISTER, _DEAD, _RELOGIN):  # every 4xx of login: config
            return self._hold("login " + reason)
        log.warn(_TAG, "login: %s; retrying later", reason)
        return resp.retry_after_ms() or 0

    def _set_token(self, tok):
        if self.token:
            log.forget(self.token)
        log.secret(tok)
        self.token = tok
        self.renew_at = clock.Deadline(_RELOGIN_MS)
        self.renewals += 1
        self.logins += 1
        log.info(_TAG, "logged in as %s", self.device_key)
        if self.on_reached is not None:  # the link works: the uplink stops backing off
            self.on_reached()

    def _drop_token(self):
        if self.token:
            log.forget(self.token)
        self.token = None

    async def _register(self):
        resp = await self._post("/devices", {"deviceName": self.device_name,
                                             "modelName": self.model_name})
        body = answer_json(resp)
        what, reason = verdict(resp.status, body, resp.body)
        if what == _OK:
            self._save_registered(True)
            log.info(_TAG, "registered %s (model %s)", self.device_key, self.model_name)
            return 0
        if what == _RELOGIN:
            self._drop_token()  # the next authenticate logs in first
            return 0
        if what == _KEEP:
            log.warn(_TAG, "register: %s; retrying later", reason)
            return resp.retry_after_ms() or 0
        return self._hold("register " + reason)

    async def _post(self, path, fields):
        body = {"accessToken": self.token, "deviceKey": self.device_key}
        body.update(fields)
        return await self.http.request("POST", self.base + path, json=body, idempotent=True)

    # -- data ---------------------------------------------------------------------------
    async def send(self, records):
        """Deliver records one request each, oldest first, stopping at the first that
        must wait (not logged in: all wait, at least as long as the cloud asked). Network
        errors propagate unless something was already decided."""
        result = SendResult()
        for rec in records:
            try:
                if self.token_due():
                    wait = await self.authenticate()
                    if self.token_due():
                        log.warn(_TAG, "not logged in (%s); data kept",
                                 self.held_reason if self.held_until else "login failed")
                        result.failed = True
                        result.wait_ms = wait
                        return result
                what, reason, resp = await self._send_one(rec)
            except Exception:
                if result.ok or result.dead:  # keep what was decided; the rest waits
                    result.failed = True
                    return result
                raise
            if what == _OK:
                result.ok.append(rec.message_id)
                continue
            if what == _DEAD:
                log.warn(_TAG, "record %s rejected for good: %s", rec.message_id, reason)
                result.dead.append((rec.message_id, reason))
                continue
            result.failed = True
            if what == _HELD:
                result.wait_ms = self._hold(reason)
            else:
                log.warn(_TAG, "data %s: %s; kept", rec.message_id, reason)
                result.wait_ms = resp.retry_after_ms() or 0
            break
        return result

    async def _send_one(self, rec):
        fields = {"data": to_wire(rec)}
        for attempt in (0, 1):
            resp = await self._post("/devices/data", fields)
            what, reason = verdict(resp.status, answer_json(resp), resp.body)
            if attempt or what not in (_RELOGIN, _REREGISTER):
                break
            if what == _REREGISTER:
                log.warn(_TAG, "data: %s; registering again", reason)
                self._save_registered(False)
            else:
                log.info(_TAG, "data: %s; logging in again, same message_id", reason)
                self._drop_token()
            wait = await self.authenticate(force=what == _RELOGIN)
            if self.token_due():
                return _KEEP, "not logged in again (wait %d ms)" % wait, resp
        if what == _REREGISTER:
            what = _HELD  # registered a moment ago and still unknown: configuration
        elif what == _RELOGIN:
            what = _KEEP
        return what, reason, resp

    async def poll_catalog(self, on_desired):
        """NUBISON has no catalog and no desired state: nothing to poll."""
        return _NO_DESIRED_MS

    async def close(self):
        """Log out (orderly shutdown) and close the connection; never raises."""
        try:
            if self.token:
                resp = await asyncio.wait_for(
                    self.http.request("POST", self.base + "/devices/logout",
                                      json={"accessToken": self.token,
                                            "deviceKey": self.device_key},
                                      idempotent=True, timeout_ms=_CLOSE_TIMEOUT_MS),
                    _CLOSE_TIMEOUT_MS / 1000)
                log.info(_TAG, "logout: http %d", resp.status)
        except Exception as e:  # shutting down anyway: the token simply expires
            log.warn(_TAG, "logout failed: %s", log.describe(e))
        self._drop_token()
        try:
            await self.http.close()
        except Exception:
            pass
