"""The config.json validator: every problem at once, one line each naming the key and the fix.

Only `config.load()` / `config.validate()` use it, at start-up; they drop this module from
`sys.modules` afterwards so its code and tables do not stay in RAM for the device's life (on
the unix port, and on a board running `.mpy` from the filesystem, bytecode lives in the heap).
"""
import json
import os

from micropython import const

from firmware import log, platforms
from firmware.config_types import (
    FILE,
    SECRETS_FILE,
    SECRETS_KEY,
    Config,
    ConfigError,
    join,
)

_TAG = "config"
_TLS_SCHEMES = ("https", "mqtts", "wss")
_SECURE = {"http": "https", "mqtt": "mqtts", "ws": "wss"}
_MAX_GPIO = const(39)
_INPUT_ONLY = (34, 35, 36, 37, 38, 39)
_FLASH_PINS = (6, 7, 8, 9, 10, 11)

# secrets of every platform (its row in firmware/platforms.py names its own) and Wi-Fi's
_SECRETS = ("client_secret", "access_token", "refresh_token", "hardware_key", "password",
            "access_key")
_FIX = {
    "client_secret": "set the client secret issued by the cloud console",
    "client_id": "set the client id issued by the cloud console",
    "api_url": "set the cloud's base URL, e.g. https://api.example.com",
    "device_id": "set the device id the cloud assigned",
    "access_token": "set the device's JWT access token",
    "refresh_token": "set the device's JWT refresh token",
    "hardware_key": "set the model's hardware key from the Xyte console",
    "serial_number": "set the device's serial number",
    "name": "set the device's display name",
    "password": "set the network's password",
    "ssid": "set the network's name (or run `make wifi`)",
}
_CLOUD_KEYS = ("platform", "transport", "api_url", "device_id", "client_id", "client_secret",
               "ca_file", "scope", "batch_max", "product_code", "model_name", "device_name",
               "access_token", "refresh_token", "registration_url", "hardware_key",
               "serial_number", "firmware_version", "command_topic", "ws_path", "name", "mac",
               "ack_timeout_s", "register_retry_s", "mqtt_catalog_s")
_TOP_KEYS = ("cloud", "board", "sensors", "commands", "switches", "intervals", "outbox", "log",
             "wifi", "ota", "safe_mode_pin", "watchdog_s", "lowpower", "secrets_file", "$schema")
_BOARDS = ("sim", "esp32")
# ranges the checks below use, and tools/config_schema.py turns into the JSON Schema
_MAX_RECORDS = (10, 100000)
_WATCHDOG_S = (1, 3600)
_OTA_MIN_INTERVAL_S = 60
_TRIAL_BOOTS = (1, 2)
_POSITIVE_CLOUD = ("batch_max", "ack_timeout_s", "mqtt_catalog_s")
_SENSOR_DRIVERS = ("sim", "dht22", "dht11", "ds18b20", "adc", "digital", "bme280")
_COMMAND_DRIVERS = ("sim", "relay", "pwm", "gpio")
_DEFAULTS: dict = {
    "board": "sim",
    "intervals": {"sample_s": 30, "catalog_poll_s": 30, "status_s": 10},
    "outbox": {"max_records": 2000, "ttl_s": None},
    "log": {"level": "info"},
}
_LEVELS = ("debug", "info", "warn", "error")


def merge_secrets(raw, root, path=None):
    """Merge the file config.json's `secrets_file` names over raw (in place), registering its
    values as secrets first; ConfigError when it is named but missing or not a JSON object.
    `path` reads the file from elsewhere (the host copy `make provision` sends)."""

    name = raw.get(SECRETS_KEY) if isinstance(raw, dict) else None
    if name is None:
        return
    if not isinstance(name, str) or not name:
        raise ConfigError(["%s: must be a file name in the data root, e.g. \"%s\"" %
                           (SECRETS_KEY, SECRETS_FILE)])
    try:
        with open(path or join(root, name)) as f:
            text = f.read()
    except OSError:
        raise ConfigError(["%s: %r not found in the data root; copy it with `make provision "
                           "SECRETS=...` (Wi-Fi alone: `make wifi`)" % (SECRETS_KEY, name)])
    try:
        secrets = json.loads(text)
    except ValueError:  # the parser's message could quote a secret: say where only
        secrets = None
    if not isinstance(secrets, dict):
        raise ConfigError(["%s: %r is not a JSON object {...}; check quotes, commas and "
                           "braces" % (SECRETS_KEY, name)])
    _register(secrets)
    _merge(raw, secrets)


def _register(node, key=None):
    if isinstance(node, dict):
        for k, v in node.items():
            _register(v, k)
    elif isinstance(node, list):
        for v in node:
            _register(v, key)
    elif isinstance(node, str) and key != "ssid":  # a network name is broadcast anyway
        log.secret(node)


def _merge(into, extra):
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def validate(raw, root="."):
    problems: list = []
    warnings: list = []
    if not isinstance(raw, dict):
        raise ConfigError(["%s: the top level must be a JSON object {...}" % FILE])
    _register_secrets(raw, _SECRETS + tuple(platforms.secrets()))
    for key in raw:
        if key not in _TOP_KEYS:
            warnings.append("%s: unknown key, ignored" % key)
    for key, default in _DEFAULTS.items():
        if key not in raw:
            raw[key] = default
        elif isinstance(default, dict) and isinstance(raw[key], dict):
            for k, v in default.items():
                raw[key].setdefault(k, v)
    cloud = raw.get("cloud")
    if not isinstance(cloud, dict):
        problems.append("cloud: missing or not an object; add {\"platform\": ..., ...}")
        cloud = raw["cloud"] = {}
    _check_cloud(cloud, root, problems, warnings)
    _check_placeholders(raw, "", problems)
    if raw["board"] not in _BOARDS:
        problems.append("board: %r is not a board; use \"sim\" or \"esp32\"" % (raw["board"],))
    _check_sections(raw, problems)
    _check_ota_ca(raw.get("ota"), root, problems)
    _check_io(raw, problems)
    for w in warnings:
        log.warn(_TAG, w)
    if problems:
        raise ConfigError(problems)
    return Config(raw, root, warnings)


def _register_secrets(node, keys):
    if isinstance(node, dict):
        for k, v in node.items():
            if k in keys and isinstance(v, str):
                log.secret(v)
            else:
                _register_secrets(v, keys)
    elif isinstance(node, list):
        for v in node:
            _register_secrets(v, keys)


def _is_placeholder(value):
    low = value.lower()
    return "change-me" in low or "changeme" in low or (value[:1] == "<" and value[-1:] == ">")


def _check_placeholders(node, where, problems):
    """A CHANGE-ME value left from an example: the cloud would answer 401 forever."""
    if isinstance(node, dict):
        for k, v in node.items():
            _check_placeholders(v, where + "." + k if where else k, problems)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_placeholders(v, "%s[%d]" % (where, i), problems)
    elif isinstance(node, str) and _is_placeholder(node):
        leaf = where.rsplit(".", 1)[-1]
        fix = _FIX.get(leaf, "set the real value")
        problems.append("%s: still the example's placeholder; %s%s" % (
            where, fix, " (in secrets.json)" if leaf in _SECRETS or leaf in platforms.secrets()
            else ""))


def _check_cloud(cloud, root, problems, warnings):
    platform = cloud.get("platform")
    names = platforms.names()
    if platform not in names:
        problems.append("cloud.platform: %r is not supported; use one of %s" %
                        (platform, ", ".join(names)))
        return
    log.set_cloud(platform)  # runtime errors then name this platform's credential keys
    entry = platforms.row(platform)
    for key in cloud:
        if key not in _CLOUD_KEYS and key not in entry[platforms.REQUIRED] and not any(
                key == k for k, _ in entry[platforms.DEFAULTS]):
            warnings.append("cloud.%s: unknown key, ignored" % key)
    offered = platforms.transports(platform)
    if offered:
        cloud.setdefault("transport", offered[0])
        if cloud["transport"] not in offered:
            problems.append("cloud.transport: %r; use %s" % (
                cloud["transport"], " or ".join('"%s"' % t for t in offered)))
    for key in _POSITIVE_CLOUD:
        value = cloud.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or value <= 0):
            problems.append("cloud.%s: must be a number > 0" % key)
    for key, value in entry[platforms.DEFAULTS]:
        cloud.setdefault(key, value)
    for key in entry[platforms.REQUIRED]:
        value = cloud.get(key)
        if value is None or value == "":
            problems.append("cloud.%s: missing; %s" % (key, _FIX.get(key, "required for %s" %
                                                                   platform)))
        elif key == "device_id":
            if not isinstance(value, (int, str)) or isinstance(value, bool):
                problems.append("cloud.device_id: must be a number or a string")
        elif not isinstance(value, str):
            problems.append("cloud.%s: must be a string, got %s" % (key, type(value).__name__))
    url_key = "cloud." + entry[platforms.URL_KEY]
    url = cloud.get(entry[platforms.URL_KEY])
    scheme = url.split("://", 1)[0] if isinstance(url, str) and "://" in url else None
    if isinstance(url, str) and url and scheme is None:
        problems.append("%s: %r has no scheme; write https://host/..." % (url_key, url))
    elif scheme is not None and scheme not in _TLS_SCHEMES:
        problems.append("%s: %s:// is not encrypted and the firmware only speaks TLS; use "
                        "%s:// with the server's CA in cloud.ca_file" % (
                            url_key, scheme, _SECURE.get(scheme, "https")))
    ca = cloud.get("ca_file")
    if ca is not None and not isinstance(ca, str):
        problems.append("cloud.ca_file: must be a path string relative to the data root")
    elif ca:
        try:
            os.stat(join(root, ca))
        except OSError:
            problems.append("cloud.ca_file: %r not found in the data root; copy the CA PEM "
                            "there" % ca)
    elif scheme in _TLS_SCHEMES:
        problems.append("cloud.ca_file: missing; %s needs the CA certificate (PEM) that "
                        "signs the server, relative to the data root" % scheme)


def _check_sections(raw, problems):
    for section in ("intervals", "outbox", "log", "wifi", "ota", "lowpower"):
        if section in raw and not isinstance(raw[section], dict):
            problems.append("%s: must be an object {...}" % section)
            raw[section] = dict(_DEFAULTS.get(section, {}))
    for key, value in raw["intervals"].items():
        if not _is_num(value) or value <= 0:
            problems.append("intervals.%s: must be a number of seconds > 0" % key)
    mx = raw["outbox"].get("max_records")
    lo, hi = _MAX_RECORDS
    if not isinstance(mx, int) or isinstance(mx, bool) or not lo <= mx <= hi:
        problems.append("outbox.max_records: must be a whole number from %d to %d" % _MAX_RECORDS)
    ttl = raw["outbox"].get("ttl_s")
    if ttl is not None and (not _is_num(ttl) or ttl <= 0):
        problems.append("outbox.ttl_s: must be seconds > 0, or null for no expiry")
    if raw["log"].get("level") not in _LEVELS:
        problems.append("log.level: use one of %s" % ", ".join(_LEVELS))
    wifi = raw.get("wifi")
    if isinstance(wifi, dict) and not isinstance(wifi.get("ssid"), str):
        problems.append("wifi.ssid: missing; set the network name (and wifi.password), or "
                        "run `make wifi PORT=... SSID=...`")
    elif wifi is None and raw["board"] == "esp32":
        problems.append("wifi: missing; the esp32 board needs {\"ssid\": ..., \"password\": ...} "
                        "(in secrets.json), or run `make wifi PORT=... SSID=...`")
    dog = raw.get("watchdog_s")
    if dog is not None and (not _is_num(dog) or not _WATCHDOG_S[0] <= dog <= _WATCHDOG_S[1]):
        problems.append("watchdog_s: must be seconds from %d to %d (more than a TLS "
                        "handshake takes), or null for no watchdog" % _WATCHDOG_S)
    _check_lowpower(raw.get("lowpower"), problems)
    _check_ota(raw.get("ota"), problems)


def _check_lowpower(lp, problems):
    if not isinstance(lp, dict):
        return
    if not isinstance(lp.get("enabled", False), bool):
        problems.append("lowpower.enabled: must be true or false")
    for key in ("budget_s", "sleep_s"):
        if key in lp and (not _is_num(lp[key]) or lp[key] <= 0):
            problems.append("lowpower.%s: must be seconds > 0" % key)


def _check_ota(ota, problems):
    if not isinstance(ota, dict):
        return
    url = ota.get("manifest_url")
    if url is not None and (not isinstance(url, str) or not url.startswith("https://")):
        problems.append("ota.manifest_url: must be an https:// URL (bundles come over TLS)")
    iv = ota.get("interval_s")
    if iv is not None and (not _is_num(iv) or iv < _OTA_MIN_INTERVAL_S):
        problems.append("ota.interval_s: must be seconds >= %d" % _OTA_MIN_INTERVAL_S)
    key = ota.get("public_key")
    if key is not None and not (isinstance(key, str) and len(key) == 64 and
                                all(c in "0123456789abcdefABCDEF" for c in key)):
        problems.append("ota.public_key: must be the Ed25519 public key as 64 hex digits "
                        "(or leave it out and provision ota_public_key.bin)")
    tb = ota.get("trial_boots")
    if tb is not None and tb not in _TRIAL_BOOTS or isinstance(tb, bool):
        problems.append("ota.trial_boots: must be 1 or 2 (below safe mode's 3 crashed boots)")


def _check_ota_ca(ota, root, problems):
    ca = ota.get("ca_file") if isinstance(ota, dict) else None
    if ca is None:
        return
    if not isinstance(ca, str) or not ca:
        problems.append("ota.ca_file: must be a path string relative to the data root")
        return
    try:
        os.stat(join(root, ca))
    except OSError:
        problems.append("ota.ca_file: %r not found in the data root; copy the update "
                        "server's CA there (make ota-serve prints it)" % ca)


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_io(raw, problems):
    esp32 = raw["board"] == "esp32"
    used: dict = {}
    for section, drivers, output in (("sensors", _SENSOR_DRIVERS, False),
                                     ("commands", _COMMAND_DRIVERS, True),
                                     ("switches", None, False)):
        entries = raw.setdefault(section, [])
        if not isinstance(entries, list):
            problems.append("%s: must be a list [...]" % section)
            raw[section] = []
            continue
        ids: list = []
        for i, e in enumerate(entries):
            where = "%s[%d]" % (section, i)
            if not isinstance(e, dict):
                problems.append("%s: must be an object {...}" % where)
                continue
            key = "command" if section == "switches" else "id"
            cid = e.get(key)
            if cid is None or isinstance(cid, bool) or not isinstance(cid, (int, str)):
                problems.append("%s.%s: missing; set the cloud's id for it" % (where, key))
            elif section != "switches":
                if cid in ids:
                    problems.append("%s.id: %r is used twice in %s" % (where, cid, section))
                ids.append(cid)
            drv = e.get("driver", "sim" if section != "switches" else None)
            if drivers is not None and drv not in drivers:
                problems.append("%s.driver: %r unknown; use one of %s" %
                                (where, drv, ", ".join(drivers)))
            if "interval_s" in e and (not _is_num(e["interval_s"]) or e["interval_s"] <= 0):
                problems.append("%s.interval_s: must be seconds > 0" % where)
            if "min" in e and "max" in e and _is_num(e["min"]) and _is_num(e["max"]) \
                    and e["min"] > e["max"]:
                problems.append("%s: min %r is above max %r" % (where, e["min"], e["max"]))
            pins = [("pin", e["pin"])] if "pin" in e else []
            if isinstance(e.get("i2c"), dict):
                pins += [("i2c." + k, e["i2c"][k]) for k in ("scl", "sda") if k in e["i2c"]]
            if esp32 and drv != "sim" and not pins and section != "switches" or \
                    section == "switches" and esp32 and not pins:
                problems.append("%s.pin: missing; set the GPIO number it is wired to" % where)
            # DHT temperature + humidity share one chip; DS18B20s share one 1-Wire bus
            share = drv if drv in ("dht22", "dht11", "ds18b20") else None
            for name, pin in pins:
                _check_pin("%s.%s" % (where, name), pin, output and name == "pin", esp32,
                           used, problems, share)
    pin = raw.get("safe_mode_pin")
    if pin is not None:
        if esp32 and isinstance(pin, int) and pin in _INPUT_ONLY:
            problems.append("safe_mode_pin: GPIO %d has no internal pull-up; use e.g. 0 "
                            "(the BOOT button)" % pin)
        else:
            _check_pin("safe_mode_pin", pin, False, esp32, used, problems)


def _check_pin(where, pin, output, esp32, used, problems, share=None):
    if not isinstance(pin, int) or isinstance(pin, bool):
        problems.append("%s: must be a GPIO number, got %r" % (where, pin))
        return
    if esp32:
        if not 0 <= pin <= _MAX_GPIO:
            problems.append("%s: GPIO %d does not exist on the ESP32 (0..39)" % (where, pin))
        elif pin in _FLASH_PINS:
            problems.append("%s: GPIO %d is wired to the flash chip; pick another" % (where, pin))
        elif output and pin in _INPUT_ONLY:
            problems.append("%s: GPIO %d is input-only; outputs need a pin below 34" %
                            (where, pin))
    # sensors may share an I2C bus, a DHT chip or a 1-Wire bus
    shared = ".i2c." if ".i2c." in where else share
    if pin in used and (shared is None or used[pin][1] != shared):
        problems.append("%s: GPIO %d is already used by %s" % (where, pin, used[pin][0]))
    else:
        used.setdefault(pin, (where, shared))
