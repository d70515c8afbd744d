"""A JSON Schema for config.json, generated from the validator's own tables
(firmware/config_check.py: keys, platforms and their required keys, drivers, levels, ranges),
so editors complete and flag the keys the firmware really checks.

    python -m tools.config_schema            # writes examples/config.schema.json
    python -m tools.config_schema --check    # exit 1 if the checked-in file differs

A config opts in with `"$schema": "config.schema.json"` (VS Code and most JSON editors). The
firmware's validator stays the authority (pin conflicts, files in the data root); the schema
covers shapes, names and ranges. A top-level key the validator accepts without a schema
entry here makes generation fail, so the two cannot drift apart silently.
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "examples", "config.schema.json")
_PLACEHOLDER = "[Cc][Hh][Aa][Nn][Gg][Ee]-?[Mm][Ee]"


def _firmware():
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from tools import cpython_compat  # the MicroPython APIs firmware code uses, on CPython

    cpython_compat.install()
    from firmware import config, config_check

    return config, config_check


def _text(desc):
    return {"type": "string", "minLength": 1, "not": {"pattern": _PLACEHOLDER},
            "description": desc}


def _num(desc, minimum=None, maximum=None, exclusive=True, null=False):
    out: dict = {"type": ["number", "null"] if null else "number", "description": desc}
    if minimum is not None:
        out["exclusiveMinimum" if exclusive else "minimum"] = minimum
    if maximum is not None:
        out["maximum"] = maximum
    return out


def _gpio(cc, desc):
    return {"type": "integer", "minimum": 0, "maximum": cc._MAX_GPIO,
            "not": {"enum": list(cc._FLASH_PINS)}, "description": desc}


def _cloud(cfg, cc):
    from firmware import platforms

    keys = list(cc._CLOUD_KEYS)
    for row in platforms.ROWS:  # a platform's own keys are known keys too
        keys += [k for k in row[platforms.REQUIRED] + tuple(d[0] for d in row[platforms.DEFAULTS])
                 if k not in keys]
    props: dict = {}
    for key in keys:
        desc = cc._FIX.get(key, "see examples/README.md")
        if key in cc._SECRETS or key in platforms.secrets():
            desc += " (a secret: keep it in the secrets file)"
        props[key] = _text(desc)
    props["platform"] = {"enum": platforms.names(), "description": "the cloud"}
    props["transport"] = {"enum": _transports(platforms), "default": "https",
                          "description": "%s only" % ", ".join(
                              p.capitalize() for p in platforms.names()
                              if platforms.transports(p))}
    props["device_id"] = {"type": ["integer", "string"], "description": cc._FIX["device_id"]}
    url = {"type": "string", "pattern": "^(%s)://" % "|".join(cc._TLS_SCHEMES),
           "description": "the cloud's URL; TLS only (%s)" % ", ".join(cc._TLS_SCHEMES)}
    props["api_url"] = dict(url)
    props["registration_url"] = dict(url, description="Xyte's registration endpoint")
    props["ca_file"] = _text("PEM of the CA that signs the server, relative to the data root")
    for key in cc._POSITIVE_CLOUD:
        props[key] = _num("a number > 0", 0)
    props["register_retry_s"] = _num("seconds > 0", 0)
    return {"type": "object", "properties": props, "required": ["platform"],
            "additionalProperties": False,
            "allOf": [{"if": {"properties": {"platform": {"const": p}}},
                       "then": {"required": list(platforms.row(p)[platforms.REQUIRED])}}
                      for p in platforms.names()]}


def _transports(platforms):
    out: list = []
    for p in platforms.names():
        out += [t for t in platforms.transports(p) if t not in out]
    return out


def _entries(cc, drivers, key, desc):
    item = {"type": "object", "required": [key], "description": desc,
            "properties": {key: {"type": ["integer", "string"],
                                 "description": "the cloud's id for it"},
                           "pin": _gpio(cc, "the GPIO it is wired to (esp32)"),
                           "interval_s": _num("seconds between readings", 0)}}
    if drivers:
        item["properties"]["driver"] = {"enum": list(drivers), "default": "sim"}
    return {"type": "array", "items": item}


def schema():
    cfg, cc = _firmware()
    d = cc._DEFAULTS
    top = {
        "$schema": {"type": "string", "description": "this schema, for editors"},
        "cloud": _cloud(cfg, cc),
        "board": {"enum": list(cc._BOARDS), "default": d["board"]},
        "sensors": _entries(cc, cc._SENSOR_DRIVERS, "id", "a sensor the device reports"),
        "commands": _entries(cc, cc._COMMAND_DRIVERS, "id", "an actuator the cloud drives"),
        "switches": _entries(cc, None, "command", "a physical input driving a command"),
        "intervals": {"type": "object", "default": d["intervals"],
                      "additionalProperties": _num("seconds > 0", 0)},
        "outbox": {"type": "object", "properties": {
            "max_records": {"type": "integer", "minimum": cc._MAX_RECORDS[0],
                            "maximum": cc._MAX_RECORDS[1],
                            "default": d["outbox"]["max_records"]},
            "ttl_s": _num("seconds a record may wait, or null to keep it until delivered",
                          0, null=True)}},
        "log": {"type": "object", "properties": {
            "level": {"enum": list(cc._LEVELS), "default": d["log"]["level"]}}},
        "wifi": {"type": "object", "required": ["ssid"], "properties": {
            "ssid": {"type": "string", "description": cc._FIX["ssid"]},
            "password": {"type": "string", "description": cc._FIX["password"] +
                         " (a secret: keep it in the secrets file)"}}},
        "ota": {"type": "object", "properties": {
            "manifest_url": {"type": "string", "pattern": "^https://"},
            "interval_s": _num("seconds between manifest checks", cc._OTA_MIN_INTERVAL_S,
                               exclusive=False),
            "public_key": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
            "trial_boots": {"enum": list(cc._TRIAL_BOOTS)},
            "ca_file": {"type": "string"}}},
        "safe_mode_pin": _gpio(cc, "held low at boot: the app does not start"),
        "watchdog_s": _num("machine.WDT timeout, or null for none", cc._WATCHDOG_S[0],
                           cc._WATCHDOG_S[1], exclusive=False, null=True),
        "lowpower": {"type": "object", "properties": {
            "enabled": {"type": "boolean"}, "budget_s": _num("seconds > 0", 0),
            "sleep_s": _num("seconds > 0", 0)}},
        "secrets_file": {"type": "string", "default": cfg.SECRETS_FILE,
                         "description": "a JSON file in the data root merged over this one; "
                                        "its values never reach a log"},
    }
    missing = [k for k in cc._TOP_KEYS if k not in top]
    extra = [k for k in top if k not in cc._TOP_KEYS]
    if missing or extra:
        raise SystemExit("config_schema: the validator's keys and the schema differ: missing "
                         "%s, extra %s; update tools/config_schema.py" % (missing, extra))
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "config.json of the ESP32 IoT firmware",
            "description": "Generated by tools/config_schema.py from firmware/config_check.py;"
                           " do not edit.",
            "type": "object", "required": ["cloud"], "properties": top,
            "additionalProperties": False}


def text():
    return json.dumps(schema(), indent=2, sort_keys=True) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--out", default=OUT)
    a = ap.parse_args(argv)
    want = text()
    if a.check:
        try:
            with open(a.out) as f:
                have = f.read()
        except OSError:
            have = None
        if have != want:
            print("%s is out of date: run `make schema`" % a.out, file=sys.stderr)
            return 1
        print("%s: up to date" % a.out)
        return 0
    with open(a.out, "w") as f:
        f.write(want)
    print("wrote %s" % a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
