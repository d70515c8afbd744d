"""examples/config.*.json with their examples/secrets.*.json: as shipped, each is refused with
one line per CHANGE-ME placeholder naming its key; with the placeholders filled in each loads
through firmware.config with no problem and no warning. Every platform and Realer transport
config.py accepts has one, secrets live only in the secrets file, and a copy with a secret
removed names the missing key."""
import json
import os

import support
from firmware import config, log, platforms

_HERE = __file__.rsplit("/", 3)
EXAMPLES = (_HERE[0] if len(_HERE) == 4 else ".") + "/examples"
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
# every platform's secret keys (its row in firmware/platforms.py), Wi-Fi's, Xyte's access key
_SECRET_KEYS = tuple(platforms.secrets()) + ("password", "access_key")


def _examples(filled=True):
    """(name, config, secrets) per example; filled: every CHANGE-ME value replaced."""
    names = sorted(n for n in os.listdir(EXAMPLES)
                   if n.startswith("config.") and n.endswith(".json")
                   and n != "config.schema.json")
    assert names, "no examples in " + EXAMPLES
    out = []
    for n in names:
        with open(EXAMPLES + "/" + n) as f:
            raw = json.load(f)
        with open(EXAMPLES + "/secrets." + n[len("config."):]) as f:
            sec = json.load(f)
        if filled:
            raw, sec = _fill(raw), _fill(sec)
        out.append((n, raw, sec))
    return out


def _fill(node):
    if isinstance(node, dict):
        return {k: _fill(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v) for v in node]
    if isinstance(node, str) and "CHANGE-ME" in node:
        return node.replace("CHANGE-ME", "filled-in")
    return node


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


def _load(raw, sec):
    """config.load on a fresh data root holding `raw` as config.json, `sec` as the secrets file
    and its ca_file; returns the Config or the ConfigError."""
    root = support.tmpdir("ex")
    try:
        support.write(root + "/config.json", json.dumps(raw))
        support.write(root + "/" + raw["secrets_file"], json.dumps(sec))
        ca = raw.get("cloud", {}).get("ca_file")
        if ca:
            support.write(root + "/" + ca, PEM)
        try:
            return config.load(root)
        except config.ConfigError as e:
            return e
    finally:
        support.rmtree(root)
        for _, v in _secrets(raw, []) + _secrets(sec, []):
            log.forget(v)


def test_every_example_loads_without_problems_or_warnings():
    for name, raw, sec in _examples():
        cfg = _load(raw, sec)
        assert not isinstance(cfg, config.ConfigError), "%s: %s" % (name, cfg)
        assert cfg.warnings == [], "%s: %s" % (name, cfg.warnings)
        assert name == "config.%s.json" % cfg.get("cloud.platform") or \
            name == "config.%s-%s.json" % (cfg.get("cloud.platform"), cfg.get("cloud.transport"))
        for key, value in _secrets(sec, []):  # merged from the secrets file
            assert value in (cfg.get("cloud." + key), cfg.get("wifi." + key)), (name, key)


def test_placeholders_as_shipped_are_refused_naming_each_key():
    for name, raw, sec in _examples(filled=False):
        e = _load(raw, sec)
        assert isinstance(e, config.ConfigError), name
        text = "\n".join(e.problems)
        for key, value in _secrets(sec, []):
            section = "wifi" if key == "password" else "cloud"
            line = "%s.%s: still the example's placeholder; " % (section, key)
            assert line in text and value not in text, (name, key, e.problems)
        assert "wifi.ssid: still the example's placeholder; set the network's name" in text
        for key, value in raw["cloud"].items():
            if isinstance(value, str) and "CHANGE-ME" in value:
                assert "cloud.%s: still the example's placeholder" % key in text, (name, key)


def test_every_platform_and_transport_has_an_example():
    have = [(raw["cloud"]["platform"], raw["cloud"].get("transport", "https"))
            for _, raw, _ in _examples()]
    want = [(p, t) for _, p, t in platforms.runs()]
    for pt in want:
        assert pt in have, "no example for %s over %s" % pt


def test_example_secrets_live_in_the_secrets_file_as_placeholders():
    for name, raw, sec in _examples(filled=False):
        assert _secrets(raw, []) == [], name  # config.json can be shared
        found = _secrets(sec, [])
        assert any(k != "password" for k, _ in found), name  # each cloud has a secret
        for key, value in found:
            assert isinstance(value, str) and value.startswith("CHANGE-ME"), (name, key)


def test_removing_a_secret_reports_that_key():
    checked = 0
    for name, raw, sec in _examples():
        for key in _SECRET_KEYS:
            if key not in sec["cloud"]:
                continue
            broken = json.loads(json.dumps(sec))
            del broken["cloud"][key]
            e = _load(raw, broken)
            assert isinstance(e, config.ConfigError), "%s without %s loaded" % (name, key)
            assert any(p.startswith("cloud.%s: missing" % key) for p in e.problems), \
                (name, key, e.problems)
            checked += 1
    assert checked >= 6  # realer x2, nubison, devicehive x2, xyte


def test_removing_the_ca_file_reports_it():
    for name, raw, sec in _examples():
        broken = json.loads(json.dumps(raw))
        del broken["cloud"]["ca_file"]
        e = _load(broken, sec)
        assert isinstance(e, config.ConfigError), name
        assert any(p.startswith("cloud.ca_file: missing") for p in e.problems), e.problems
