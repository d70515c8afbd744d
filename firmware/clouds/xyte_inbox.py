"""What Xyte sends the device: config, commands, licenses, space info, firmware news.

Part of the Xyte adapter (firmware/clouds/xyte.py composes it): the `Inbox` mixin is the
session's on_message. Commands for an actuator go to the app's desired-state path
(`on_desired`); `send_dump` uploads the recent log (`Ring`), `update_firmware` starts the OTA
updater; config, licenses and space info are kept (firmware/clouds/xyte_reg.py saves them).
"""
import asyncio
import json

from micropython import const

from firmware import log

MYPY = False
if MYPY:  # the type checker only (MicroPython has no typing module)
    from typing import Any

_TAG = "xyte"
_RING = const(24)  # recent log lines kept for a dump (~3 KB of strings)
_MAX_DONE = const(8)
_ring: list = [None]


class Ring:
    """The last `n` log lines (already redacted) for Send Dump; wraps the log sink."""

    def __init__(self, n=_RING):
        self.lines: list = [None] * n
        self.pos = 0
        self.prev = None

    def install(self):
        self.prev = log._sink[0]  # log.py has no getter; see docs/xyte.md
        log.set_sink(self.add)

    def add(self, line):
        self.lines[self.pos] = line
        self.pos = (self.pos + 1) % len(self.lines)
        if self.prev is None:
            print(line)
        else:
            self.prev(line)

    def text(self):
        n = len(self.lines)
        return "\n".join(x for x in (self.lines[(self.pos + i) % n] for i in range(n))
                         if x is not None) + "\n"


def ring():
    """The one Ring of the process, installed on the log sink the first time."""
    if _ring[0] is None:  # one per process: every adapter object shares it
        r = Ring()
        r.install()
        _ring[0] = r
    return _ring[0]


def command_target(cmd):
    """(actuator command id, value) for an actuator command, else (None, None)."""
    params = cmd.get("parameters")
    params = params if isinstance(params, dict) else {}
    name = cmd.get("name")
    target = params.get("command")
    if target is None and isinstance(name, str):
        digits = name[4:] if name.startswith("set_") else name
        if digits.isdigit():
            target = int(digits)
    if isinstance(target, str) and target.isdigit():
        target = int(target)
    if not isinstance(target, int) or isinstance(target, bool):
        return None, None
    return target, params.get("value")


class Inbox:
    # set by Xyte.__init__ or the other parts (annotations only, no per-object cost)
    reg: dict
    cmd_topic: str
    fw_version: str
    config: dict
    licenses: dict
    space: dict
    done: list
    latest_fw: "Any"
    enabled_sensors: "Any"
    on_desired: "Any"
    ota: "Any"
    ring: "Any"
    _jobs: list
    _hub: "Any"  # a method of another part
    _save_quietly: "Any"  # a method of another part
    answer: "Any"  # a method of another part
    topic: "Any"  # a method of another part

    def _on_message(self, msg):
        if not self.reg:
            return
        leaf = msg.topic[len(self.topic("")):] if msg.topic.startswith(self.topic("")) \
            else None
        try:
            body = json.loads(msg.payload)
        except ValueError:
            log.warn(_TAG, "not JSON on %s; ignored", msg.topic)
            return
        if leaf == "license" and isinstance(body, list):
            for item in body:
                self._license(item, msg)
            return
        if not isinstance(body, dict):
            log.warn(_TAG, "not a JSON object on %s; ignored", msg.topic)
        elif leaf == "config":
            self._config(body, msg)
        elif leaf == self.cmd_topic:
            self._command(body, msg)
        elif leaf == "license":
            self._license(body, msg)
        elif leaf == "space_info":
            self.space = body
            log.info(_TAG, "space %s, temperature in %s", body.get("name"),
                     self.temperature_units)
            self._save_quietly()
        elif leaf == "firmware":
            version, file_id = body.get("latest_fw_version"), body.get("latest_fw_file_id")
            if not isinstance(version, str):
                log.warn(_TAG, "firmware message without latest_fw_version; ignored")
            else:
                self.firmware_available(version, file_id)
        else:
            log.warn(_TAG, "message on unexpected topic %s ignored", msg.topic)

    @property
    def temperature_units(self):
        return self.space.get("temperature_units", "celsius")

    def _apply_config(self, body):
        sensors = body.get("enabled_sensors")
        if isinstance(sensors, list) and all(isinstance(s, int) for s in sensors):
            self.enabled_sensors = set(sensors)
        elif sensors is None:
            self.enabled_sensors = None
        else:
            log.warn(_TAG, "config enabled_sensors must be a list of sensor ids; ignored")
        name = body.get("log_level")
        if name is None:
            return
        level = {"debug": log.DEBUG, "info": log.INFO, "warn": log.WARN,
                 "error": log.ERROR}.get(name) if isinstance(name, str) else None
        if level is None:  # a list or object here would not even hash
            log.warn(_TAG, "config log_level must be debug, info, warn or error; ignored")
        else:
            log.set_level(level)

    def _config(self, body, msg):
        if body.get("version") is None:
            log.warn(_TAG, "config without version ignored")
            return
        self._apply_config(body)
        self.config = body
        self._save_quietly()
        log.info(_TAG, "config version %s applied", body["version"])
        self.answer("config/update", body, msg)

    def _command(self, body, msg):
        cid = body.get("id")
        if not isinstance(cid, str) or not cid:
            log.warn(_TAG, "command without id ignored")
            return
        status = body.get("status")
        if status not in (None, "pending", "in_progress"):
            log.info(_TAG, "command %s is %s already; nothing to do", cid, status)
            return
        update = self.cmd_topic + "/update"
        target, value = command_target(body)
        name = body.get("name")
        if target is not None:
            self.answer(update, {"id": cid, "status": "in_progress", "message": "applying"},
                        msg)
            if self.on_desired is not None:
                self.on_desired({"id": target, "desired_id": cid, "value": value,
                                 "expires_at": None})
            return
        if cid in self.done:
            log.info(_TAG, "command %s handled before; nothing to do", cid)
            return
        self.answer(update, {"id": cid, "status": "in_progress", "message": "working"}, msg)
        self._remember(cid)
        if name == "send_dump":
            self._jobs.append(self._dump(cid, update))
        elif name == "update_firmware":
            params = body.get("parameters") if isinstance(body.get("parameters"), dict) else {}
            status, text = self._update_command(params)
            self.answer(update, {"id": cid, "status": status, "message": text}, msg)
        else:
            log.warn(_TAG, "command %s: unknown name %r", cid, name)
            self.answer(update, {"id": cid, "status": "error",
                                 "message": "unknown command %s" % name}, msg)

    # update_firmware carries {url, version} (Xyte's MQTT events page); the bundle's own signature
    # decides, so no checksum is needed. -> (final status, message) for commands/update.
    def _update_command(self, params):
        version = params.get("version") if isinstance(params.get("version"), str) else None
        url, file_id = params.get("url"), params.get("file_id")
        if self.ota is None:
            self.firmware_available(version, file_id)
            return "error", "OTA is off on this device (no ota.public_key); version noted"
        if isinstance(url, str) and url.startswith("https://"):
            if self.ota.start(url, version):
                return "done", "update to %s started" % version
            return "error", "update to %s not started; see the device log" % version
        if version and file_id:
            self.firmware_available(version, file_id)
            return "done", "file %s goes to the updater" % file_id
        return "error", "update_firmware needs an https url"

    def _remember(self, cid):
        self.done.append(cid)
        self.done = self.done[-_MAX_DONE:]
        self._save_quietly()

    async def _dump(self, cid, update):
        try:
            resp = await self._hub("POST", "dumps/text%2Fplain/device.log",
                                   self.ring.text().encode(), {"Content-Type": "text/plain"})
            ok = resp.status in (200, 201, 204)
            self.answer(update, {"id": cid, "status": "done" if ok else "error",
                                 "message": "dump uploaded" if ok else
                                 "dump answered %d" % resp.status})
        except Exception as e:  # a failed upload is reported, never fatal
            self.answer(update, {"id": cid, "status": "error",
                                 "message": "dump failed: %s" % log.describe(e)})

    def _license(self, body, msg):
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            log.warn(_TAG, "license without id ignored")
            return
        lid = body["id"]
        if body.get("remove"):
            self.licenses.pop(lid, None)
            state = "removed"
        elif (body.get("add") or body.get("update")) and isinstance(body.get("data"), str):
            self.licenses[lid] = {"data": body["data"], "signature": body.get("signature")}
            state = "inuse"
        else:
            state = "error"
        reply = {"id": lid, "state": state}
        if state == "error":
            reply["error"] = "license without data or operation"
        log.info(_TAG, "license %s: %s", lid, state)
        self._save_quietly()
        self.answer("license/update", reply, msg)

    def firmware_available(self, version, file_id):
        """Hand-off point for OTA: Xyte says `version` (file `file_id`) is the latest. With an
        updater (`self.ota`, given by the app when config `ota` has a public key) the file's
        record is read from the hub and its bundle URL and SHA-256 go to the updater, which
        verifies the Ed25519-signed bundle itself; without one it is only logged."""
        self.latest_fw = (version, file_id)
        if version == self.fw_version:
            log.info(_TAG, "firmware %s is the latest", version)
            return
        log.info(_TAG, "firmware %s available (file %s); running %s", version, file_id,
                 self.fw_version)
        if self.ota is not None and file_id:
            asyncio.create_task(self._fetch_firmware(version, file_id))

    async def _fetch_firmware(self, version, file_id):
        updater = self.ota
        if updater is None:
            return
        try:
            resp = await self._hub("GET", "files/%s" % file_id)
            info = resp.json() if resp.status == 200 else None
            if not isinstance(info, dict):
                info = {}
            url = info.get("url")
            if not isinstance(url, str) or not url.startswith("https://"):
                log.warn(_TAG, "firmware %s: file %s answered %d without an https url",
                         version, file_id, resp.status)
                return
            checksum = info.get("checksum")
            updater.start(url, version, checksum if isinstance(checksum, str) and
                          len(checksum) == 64 else None)
        except Exception as e:  # the next firmware message tries again
            log.warn(_TAG, "firmware %s: %s", version, log.describe(e))
