"""Xyte registration: the device's Xyte identity, made once and kept across resets.

Part of the Xyte adapter (firmware/clouds/xyte.py composes it): the `Registration` mixin
holds the registrar (`authenticate()`, the POST to `{registration_url}/v1/devices` with its
pause after a refusal), the persisted state in `xyte.json` (firmware/statefile.py) and the
hub's HTTPS calls (`_hub`, where a 401 means the device was deleted: register again).
"""
import json
from time import ticks_add, ticks_diff

from micropython import const

from firmware import clock, log, statefile
from firmware.clouds import answer_json, shape
from firmware.config_types import join
from firmware.net import conn

MYPY = False
if MYPY:  # the type checker only (MicroPython has no typing module)
    from typing import Any

_TAG = "xyte"
_FILE = "xyte.json"
_RENEW_CHECK_MS = const(60000)  # the app's auth task looks again this often
_REG_RATE_MS = const(30000)  # a 429 means the plan's rate per 30 s was exceeded
_REG_NET_MS = const(5000)  # registration did not reach the cloud: try again soon
_REG_CAP_MS = const(900000)  # refusals in a row double the pause up to 15 min


class XyteError(conn.NetError):
    """Registration or an HTTPS call to the hub failed."""


class Reregister(XyteError):
    """The hub answered 401: this device was deleted; it registers again."""


class Registration:
    # set by Xyte.__init__ (the names this part uses; annotations only, no per-object cost)
    root: str
    ca_file: str
    reg_url: str
    hardware_key: str
    sn: str
    fw_version: str
    name: str
    mac: str
    retry_ms: int
    http: "Any"
    reg: dict
    config: dict
    licenses: dict
    space: dict
    done: list
    generation: int
    renewals: int
    renew_at: "Any"
    _out: list
    _reg_lock: "Any"
    _ticks: "Any"
    _reg_at: "Any"
    _refusals: int
    _apply_config: "Any"  # a method of another part

    def _path(self):
        return join(self.root, _FILE)

    def _load(self):
        try:
            with open(self._path()) as f:
                data = json.load(f)
        except OSError:
            return
        except ValueError as e:
            log.warn(_TAG, "%s unreadable (%s): registering again", _FILE, log.describe(e))
            return
        if not isinstance(data, dict):
            return
        reg = data.get("reg")
        if isinstance(reg, dict) and isinstance(reg.get("id"), str) and \
                isinstance(reg.get("access_key"), str):
            if reg.get("for") == self._identity():
                self._use(reg)
            else:  # the config now names another cloud or device: a new identity
                log.info(_TAG, "registration_url, hardware key or serial number changed: "
                               "registering again")
        for name in ("config", "licenses", "space"):
            if isinstance(data.get(name), dict):
                setattr(self, name, data[name])
        if isinstance(data.get("done"), list):
            self.done = data["done"]
        self._apply_config(self.config)

    def _identity(self):
        # what the registration was made for; kept as a digest, the hardware key is secret
        import hashlib

        raw = "%s|%s|%s" % (self.reg_url, self.hardware_key, self.sn)
        return "".join("%02x" % b for b in hashlib.sha256(raw.encode()).digest()[:8])

    def _save(self):
        statefile.write_json(self._path(), {"reg": self.reg, "config": self.config,
                                            "licenses": self.licenses, "space": self.space,
                                            "done": self.done})

    def _save_quietly(self):
        try:
            self._save()
        except OSError as e:
            log.warn(_TAG, "%s not written: %s", _FILE, log.describe(e))

    def _use(self, reg):
        log.secret(reg["access_key"])
        self.reg = reg
        self.renew_at = clock.Deadline(_RENEW_CHECK_MS)
        self.generation += 1

    def token_due(self):
        return not self.reg

    def _http(self):
        if self.http is None:
            from firmware.net import http

            self.http = http.Client(ca_file=self.ca_file)
        return self.http

    async def authenticate(self, force=False):
        """The one registrar (only when no registration is kept). Returns the wait before
        the next try: 0 after success, else what is left of the pause a refusal set. At
        most one POST is in flight, and none goes out before that pause ends, whichever
        task asks."""
        async with self._reg_lock:  # the auth and session tasks may both ask
            if self.reg and not force:
                return 0
            left = self._reg_wait_ms()
            if left:
                return left
            try:
                wait = await self._register()
            except Exception:  # no answer: the caller logs it; a short pause all the same
                self._reg_at = ticks_add(self._ticks(), _REG_NET_MS)
                raise
            self._reg_at = ticks_add(self._ticks(), wait) if wait else None
            return wait

    def _reg_wait_ms(self):
        if self._reg_at is None:
            return 0
        left = ticks_diff(self._reg_at, self._ticks())
        if left <= 0:
            self._reg_at = None
            return 0
        return left

    async def _register(self):
        body = {"hardware_key": self.hardware_key, "sn": self.sn,
                "firmware_version": self.fw_version, "mac": self.mac or _mac()}
        if self.name:
            body["name"] = self.name
        resp = await self._http().request("POST", self.reg_url + "/v1/devices", json=body)
        data = answer_json(resp)
        if resp.status not in (200, 201) or not isinstance(data, dict) or \
                not isinstance(data.get("id"), str) or not isinstance(data.get("access_key"),
                                                                       str):
            self._refusals += 1
            wait = min(_REG_CAP_MS, self.retry_ms << min(self._refusals - 1, 4))
            if resp.status == 429:
                wait = max(wait, _REG_RATE_MS, resp.retry_after_ms() or 0)
            log.warn(_TAG, "registration answered %d with %s; again in %d s", resp.status,
                     shape(resp.body, data), wait // 1000)
            return wait
        self._refusals = 0
        reg = {k: data.get(k) for k in ("id", "access_key", "hub_url", "hub_url_static_cert",
                                        "mqtt_hub_url")}
        reg["for"] = self._identity()
        log.secret(reg["access_key"])
        old, self.reg = self.reg, {}
        self._use(reg)
        self._save()
        if old:
            log.forget(old["access_key"])
        self.renewals += 1
        log.info(_TAG, "registered as %s (hub %s, broker %s)", reg["id"], reg["hub_url"],
                 reg["mqtt_hub_url"])
        return 0

    def forget_registration(self, why):
        log.warn(_TAG, "%s: the device registers again", why)
        self.reg = {}
        self._out = []  # answers addressed to the deleted id
        self.generation += 1
        try:
            self._save()
        except OSError as e:
            log.warn(_TAG, "%s not written: %s", _FILE, log.describe(e))

    async def probe(self):
        """After the broker refused the access key: a 401 from the hub means the device is
        gone (register again), anything else is the broker's problem (keep trying)."""
        resp = await self._hub("GET", "config")
        log.info(_TAG, "access key refused by the broker; hub answers %d", resp.status)

    async def _hub(self, method, path, body=None, headers=None):
        h = {"Authorization": self.reg["access_key"]}
        h.update(headers or {})
        url = "%s/v1/devices/%s/%s" % ((self.reg.get("hub_url") or "").rstrip("/"),
                                       self.reg["id"], path)
        resp = await self._http().request(method, url, headers=h, body=body)
        if resp.status == 401:
            self.forget_registration("hub answered 401 to %s %s" % (method, path))
            raise Reregister("device deleted")
        return resp


def _mac():
    try:
        import network

        raw = network.WLAN(network.STA_IF).config("mac")
        return ":".join("%02x" % b for b in raw)
    except Exception:  # no radio (host): a fixed placeholder; config `mac` overrides
        return "00:00:00:00:00:00"
