import json
import os

import support
from firmware import config, log

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def _root(cfg=None, text=None, ca=True):
    root = support.tmpdir("cfg")
    if ca:
        support.write(root + "/ca.pem", PEM)
    if text is None and cfg is not None:
        text = json.dumps(cfg)
    if text is not None:
        support.write(root + "/config.json", text)
    return root


def _realer(**cloud):
    c = {"platform": "realer", "api_url": "https://127.0.0.1:8443", "device_id": 12345,
         "client_id": "cdv_abcdefghijklmnopqrstuvwxyz", "client_secret": "top-secret-123",
         "ca_file": "ca.pem"}
    c.update(cloud)
    return {"cloud": c, "board": "sim", "sensors": [{"id": 7, "driver": "sim"}],
            "commands": [{"id": 3, "driver": "sim", "kind": "switch"}]}


def _problems(root):
    e = support.raises(config.ConfigError, config.load, root)
    return e.problems


def test_valid_realer_config_loads_with_defaults():
    root = _root(_realer())
    try:
        cfg = config.load(root)
        assert cfg.get("cloud.platform") == "realer"
        assert cfg.get("cloud.transport") == "https"
        assert cfg.get("intervals.sample_s") == 30
        assert cfg.get("outbox.max_records") == 2000
        assert cfg.ca_path == root + "/ca.pem"
        assert cfg.get("no.such.key", "dflt") == "dflt"
    finally:
        support.rmtree(root)


def test_missing_file_says_where_to_look():
    root = _root()
    try:
        problems = _problems(root)
        assert len(problems) == 1 and "config.json: not found" in problems[0]
    finally:
        support.rmtree(root)


def test_invalid_json_is_one_clear_problem():
    root = _root(text='{"cloud": {"platform": "realer",}')
    try:
        problems = _problems(root)
        assert len(problems) == 1 and "not valid JSON" in problems[0]
    finally:
        support.rmtree(root)


def test_every_problem_reported_at_once():
    cfg = _realer(client_secret="", device_id=[1], client_id=5)
    cfg["board"] = "esp32"
    cfg["sensors"] = [{"id": 7, "driver": "thermo-magic", "pin": 4}]
    cfg["commands"] = [{"id": 3, "driver": "relay", "pin": 35}]
    cfg["intervals"] = {"sample_s": -1}
    root = _root(cfg)
    try:
        text = "\n".join(_problems(root))
        for needle in ("cloud.client_secret: missing", "cloud.device_id: must be",
                       "cloud.client_id: must be a string", "sensors[0].driver",
                       "commands[0].pin: GPIO 35 is input-only", "intervals.sample_s"):
            assert needle in text, needle
    finally:
        support.rmtree(root)


def test_unknown_platform_names_the_choices():
    root = _root(_realer(platform="azure"))
    try:
        (p,) = _problems(root)
        assert p.startswith("cloud.platform") and "realer" in p and "xyte" in p
    finally:
        support.rmtree(root)


def test_wrong_types_named():
    cfg = _realer()
    cfg["sensors"] = {"id": 7}
    cfg["outbox"] = {"max_records": "lots"}
    root = _root(cfg)
    try:
        text = "\n".join(_problems(root))
        assert "sensors: must be a list" in text
        assert "outbox.max_records" in text
    finally:
        support.rmtree(root)


def test_bad_and_duplicate_pins():
    cfg = _realer()
    cfg["board"] = "esp32"
    cfg["sensors"] = [{"id": 7, "driver": "dht22", "pin": 7},
                      {"id": 8, "driver": "dht22", "pin": 40},
                      {"id": 9, "driver": "adc", "pin": "A0"}]
    cfg["commands"] = [{"id": 3, "driver": "relay", "pin": 26},
                       {"id": 4, "driver": "relay", "pin": 26}]
    root = _root(cfg)
    try:
        text = "\n".join(_problems(root))
        assert "GPIO 7 is wired to the flash" in text
        assert "GPIO 40 does not exist" in text
        assert "sensors[2].pin: must be a GPIO number" in text
        assert "commands[1].pin: GPIO 26 is already used by commands[0].pin" in text
    finally:
        support.rmtree(root)


def test_i2c_sensors_may_share_a_bus():
    cfg = _realer()
    cfg["board"] = "esp32"
    cfg["sensors"] = [{"id": 7, "driver": "bme280", "i2c": {"scl": 22, "sda": 21}},
                      {"id": 8, "driver": "bme280", "i2c": {"scl": 22, "sda": 21, "addr": 119}}]
    cfg["commands"] = []
    cfg["wifi"] = {"ssid": "greenhouse", "password": "wifi-pass-123"}
    root = _root(cfg)
    try:
        assert config.load(root).get("board") == "esp32"
    finally:
        support.rmtree(root)


def test_missing_ca_file_for_https():
    root = _root(_realer(), ca=False)
    try:
        (p,) = _problems(root)
        assert p.startswith("cloud.ca_file") and "not found" in p
    finally:
        support.rmtree(root)
    cfg = _realer()
    del cfg["cloud"]["ca_file"]
    root = _root(cfg)
    try:
        (p,) = _problems(root)
        assert p.startswith("cloud.ca_file: missing")
    finally:
        support.rmtree(root)


def test_unknown_keys_warn_not_fail():
    cfg = _realer(colour="blue")
    cfg["extra"] = 1
    root = _root(cfg)
    lines = []
    log.set_sink(lines.append)
    try:
        c = config.load(root)
    finally:
        log.set_sink(None)
        support.rmtree(root)
    assert "extra: unknown key, ignored" in c.warnings
    assert "cloud.colour: unknown key, ignored" in c.warnings
    assert len([x for x in lines if "unknown key" in x]) == 2


def test_secrets_registered_before_any_logging():
    cfg = _realer(client_secret="zz-very-secret-zz")
    cfg["wifi"] = {"ssid": "greenhouse", "password": "wifi-pass-999"}
    cfg["bogus"] = True
    root = _root(cfg)
    lines = []
    log.set_sink(lines.append)
    try:
        config.load(root)
        log.info("t", "secret %s and %s", "zz-very-secret-zz", "wifi-pass-999")
    finally:
        log.set_sink(None)
        support.rmtree(root)
    assert lines and not any("zz-very-secret-zz" in x or "wifi-pass-999" in x for x in lines)


def test_per_platform_required_keys():
    for platform, needle in (("nubison", "cloud.product_code"),
                             ("devicehive", "cloud.refresh_token"),
                             ("xyte", "cloud.hardware_key")):
        root = _root({"cloud": {"platform": platform, "api_url": "http://127.0.0.1:1"}})
        try:
            assert needle + ": missing" in "\n".join(_problems(root)), platform
        finally:
            support.rmtree(root)


def test_realer_transport_checked():
    root = _root(_realer(transport="carrier-pigeon"))
    try:
        (p,) = _problems(root)
        assert p.startswith("cloud.transport")
    finally:
        support.rmtree(root)


def test_delivery_tuning_numbers_checked():
    root = _root(_realer(transport="mqtt", batch_max=0, ack_timeout_s="10", mqtt_catalog_s=0))
    try:
        problems = _problems(root)
        assert "cloud.batch_max: must be a number > 0" in problems
        assert "cloud.ack_timeout_s: must be a number > 0" in problems
        assert "cloud.mqtt_catalog_s: must be a number > 0" in problems
    finally:
        support.rmtree(root)
    root = _root(_realer(transport="mqtt", batch_max=5, ack_timeout_s=2.5, mqtt_catalog_s=60))
    try:
        cfg = config.load(root)
        assert cfg.get("cloud.ack_timeout_s") == 2.5 and not cfg.warnings
        assert cfg.get("cloud.mqtt_catalog_s") == 60
    finally:
        support.rmtree(root)


def test_validator_leaves_memory_after_loading():
    import sys

    import firmware

    root = _root(_realer())
    bad = _root(_realer(client_secret=""))
    try:
        cfg = config.load(root)
        # the start-up-only checks are gone from sys.modules and the package; Config works
        assert "firmware.config_check" not in sys.modules
        assert not hasattr(firmware, "config_check")
        assert cfg.get("cloud.device_id") == 12345
        assert cfg.raw["cloud"]["client_id"].startswith("cdv_")
        # and it loads again for the next check, with every problem still reported
        assert any("cloud.client_secret" in p for p in _problems(bad))
        assert "firmware.config_check" not in sys.modules
    finally:
        support.rmtree(root)
        support.rmtree(bad)


def test_shared_sensor_pins_and_board_keys():
    cfg = _realer()
    cfg["board"] = "esp32"
    # temperature + humidity from one DHT22, two DS18B20 on one bus: allowed
    cfg["sensors"] = [{"id": 7, "driver": "dht22", "pin": 4, "quantity": "temperature"},
                      {"id": 8, "driver": "dht22", "pin": 4, "quantity": "humidity"},
                      {"id": 9, "driver": "ds18b20", "pin": 5},
                      {"id": 10, "driver": "ds18b20", "pin": 5},
                      {"id": 11, "driver": "digital", "pin": 5}]
    cfg["commands"] = [{"id": 3, "driver": "relay", "pin": 4}]
    cfg["watchdog_s"] = 0.5
    cfg["safe_mode_pin"] = 36
    cfg["lowpower"] = {"enabled": "yes", "budget_s": -1, "sleep_s": 30}
    cfg["ota"] = {"manifest_url": "http://x/m.json", "interval_s": 5, "public_key": "abc",
                  "trial_boots": 3}
    root = _root(cfg)
    try:
        problems = _problems(root)
        text = "\n".join(problems)
        assert "sensors[1]" not in text and "sensors[3]" not in text, text
        assert "sensors[4].pin: GPIO 5 is already used by sensors[2].pin" in text
        assert "commands[0].pin: GPIO 4 is already used by sensors[0].pin" in text
        for key in ("wifi: missing", "watchdog_s:", "safe_mode_pin: GPIO 36",
                    "lowpower.enabled:", "lowpower.budget_s: must be seconds",
                    "ota.manifest_url:", "ota.interval_s:", "ota.public_key:",
                    "ota.trial_boots:"):
            assert key in text, (key, text)
        assert "lowpower: unknown key" not in text
    finally:
        support.rmtree(root)


def test_board_keys_accepted_when_right():
    cfg = _realer()
    cfg["wifi"] = {"ssid": "greenhouse", "password": "wifi-pass-123"}
    cfg["watchdog_s"] = 60
    cfg["safe_mode_pin"] = 0
    cfg["lowpower"] = {"enabled": True, "budget_s": 20, "sleep_s": 300}
    cfg["ota"] = {"manifest_url": "https://ota.example/m.json", "interval_s": 3600,
                  "public_key": "ab" * 32, "trial_boots": 2}
    root = _root(cfg)
    try:
        c = config.load(root)
        assert c.get("lowpower.sleep_s") == 300 and c.get("ota.trial_boots") == 2
        assert not [w for w in c.warnings if "unknown" in w], c.warnings
    finally:
        support.rmtree(root)


def test_placeholders_refused_naming_the_key_never_the_secret():
    raw = _realer(client_id="cdv_CHANGE-ME-client-id", client_secret="CHANGE-ME-very-secret")
    raw["wifi"] = {"ssid": "changeme", "password": "<your wifi password>"}
    root = _root(raw)
    try:
        problems = _problems(root)
    finally:
        support.rmtree(root)
    text = "\n".join(problems)
    assert "cloud.client_id: still the example's placeholder; set the client id issued by " \
        "the cloud console" in text
    assert "cloud.client_secret: still the example's placeholder; set the client secret " \
        "issued by the cloud console (in secrets.json)" in text
    assert "wifi.ssid: still the example's placeholder; set the network's name" in text
    assert "wifi.password: still the example's placeholder" in text
    assert "CHANGE-ME-very-secret" not in text and "your wifi" not in text
    log.forget("CHANGE-ME-very-secret")
    log.forget("<your wifi password>")


def test_unencrypted_cloud_urls_refused_with_the_tls_scheme_to_use():
    for platform, key, url, fix in (
            ("realer", "api_url", "http://api.example.com", "use https://"),
            ("devicehive", "api_url", "ws://dh.example", "use wss://"),
            ("nubison", "api_url", "mqtt://x.example", "use mqtts://"),
            ("xyte", "registration_url", "http://entry.xyte.io", "use https://")):
        raw = _realer() if platform == "realer" else {"cloud": {"platform": platform}}
        raw["cloud"][key] = url
        root = _root(raw)
        try:
            text = "\n".join(_problems(root))
        finally:
            support.rmtree(root)
        assert "cloud.%s: %s:// is not encrypted" % (key, url.split(":")[0]) in text, text
        assert fix in text, text
    for url in ("https://a.example", "wss://a.example", "mqtts://a.example"):
        root = _root(_realer(api_url=url))
        try:
            assert config.load(root).get("cloud.api_url") == url
        finally:
            support.rmtree(root)


def test_secrets_file_merged_registered_and_named_when_missing():
    raw = _realer()
    del raw["cloud"]["client_secret"]
    raw["secrets_file"] = "secrets.json"
    root = _root(raw)
    try:
        support.write(root + "/secrets.json", json.dumps(
            {"cloud": {"client_secret": "from-the-secrets-file"},
             "wifi": {"ssid": "HomeNet", "password": "wifi-pass-123"}}))
        cfg = config.load(root)
        assert cfg.get("cloud.client_secret") == "from-the-secrets-file"
        assert cfg.get("cloud.device_id") == 12345  # config.json's keys stay
        assert cfg.get("wifi.password") == "wifi-pass-123" and cfg.warnings == []
        line = log.redact("s=from-the-secrets-file p=wifi-pass-123 net=HomeNet")
        assert line == "s=*** p=*** net=HomeNet", line
        support.write(root + "/secrets.json", '{"cloud": {"client_secret": "abc-top"')
        problems = _problems(root)
        assert problems == ["secrets_file: 'secrets.json' is not a JSON object {...}; check "
                            "quotes, commas and braces"], problems
        os.remove(root + "/secrets.json")
        problems = _problems(root)
        assert problems[0].startswith("secrets_file: 'secrets.json' not found in the data "
                                      "root; copy it with `make provision"), problems
    finally:
        support.rmtree(root)
        for s in ("from-the-secrets-file", "wifi-pass-123"):
            log.forget(s)
