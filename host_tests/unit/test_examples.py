"""examples/config.*.json: each loads through firmware.config with no problem and no warning,
every platform and Realer transport config.py accepts has one, their secrets are obvious
placeholders, and a copy with a secret removed names the missing key."""
import json
import os

import support
from firmware import config, log

_HERE = __file__.rsplit("/", 3)
EXAMPLES = (_HERE[0] if len(_HERE) == 4 else ".") + "/examples"
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
_SECRET_KEYS = ("client_secret", "access_token", "refresh_token", "hardware_key", "password",
                "access_key")


def _examples():
    names = sorted(n for n in os.listdir(EXAMPLES)
                   if n.startswith("config.") and n.endswith(".json"))
    assert names, "no examples in " + EXAMPLES
    out = []
    for n in names:
        with open(EXAMPLES + "/" + n) as f:
            out.append((n, json.load(f)))
    return out


def _secrets(node, found):
    """(key, value) of every secret-named key anywhere in the config."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k in _SECRET_KEYS:
                found.append((k, v))
            else:
                _secrets(v, found)
    elif isinstance(node, list):
        for v in node:
            _secrets(v, found)
    return found


def _load(raw):
    """config.load on a fresh data root holding `raw` as config.json and its ca_file;
    returns the Config or the ConfigError."""
    root = support.tmpdir("ex")
    try:
        support.write(root + "/config.json", json.dumps(raw))
        ca = raw.get("cloud", {}).get("ca_file")
        if ca:
            support.write(root + "/" + ca, PEM)
        try:
            return config.load(root)
        except config.ConfigError as e:
            return e
    finally:
        support.rmtree(root)
        for _, v in _secrets(raw, []):
            log.forget(v)


def test_every_example_loads_without_problems_or_warnings():
    for name, raw in _examples():
        cfg = _load(raw)
        assert not isinstance(cfg, config.ConfigError), "%s: %s" % (name, cfg)
        assert cfg.warnings == [], "%s: %s" % (name, cfg.warnings)
        assert name == "config.%s.json" % cfg.get("cloud.platform") or \
            name == "config.%s-%s.json" % (cfg.get("cloud.platform"), cfg.get("cloud.transport"))


def test_every_platform_and_realer_transport_has_an_example():
    have = [(raw["cloud"]["platform"], raw["cloud"].get("transport", "https"))
            for _, raw in _examples()]
    want = [(p, "https") for p in config.PLATFORMS] + [("realer", "mqtt")]
    for pt in want:
        assert pt in have, "no example for %s over %s" % pt


def test_example_secrets_are_obvious_placeholders():
    for name, raw in _examples():
        found = _secrets(raw, [])
        assert any(k != "password" for k, _ in found), name  # each cloud has a secret
        for key, value in found:
            assert isinstance(value, str) and value.startswith("CHANGE-ME"), (name, key)
        for key in ("client_id", "device_id", "serial_number", "api_url"):
            value = raw["cloud"].get(key)
            if isinstance(value, str) and "therealer.com" not in value:
                assert "CHANGE-ME" in value, (name, key)


def test_removing_a_secret_reports_that_key():
    checked = 0
    for name, raw in _examples():
        for key in _SECRET_KEYS:
            if key not in raw["cloud"]:
                continue
            broken = json.loads(json.dumps(raw))
            del broken["cloud"][key]
            e = _load(broken)
            assert isinstance(e, config.ConfigError), "%s without %s loaded" % (name, key)
            assert any(p.startswith("cloud.%s: missing" % key) for p in e.problems), \
                (name, key, e.problems)
            checked += 1
    assert checked >= 6  # realer x2, nubison, devicehive x2, xyte


def test_removing_the_ca_file_reports_it():
    for name, raw in _examples():
        broken = json.loads(json.dumps(raw))
        del broken["cloud"]["ca_file"]
        e = _load(broken)
        assert isinstance(e, config.ConfigError), name
        assert any(p.startswith("cloud.ca_file: missing") for p in e.problems), e.problems
