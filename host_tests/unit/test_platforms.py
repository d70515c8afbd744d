"""The platform registry (firmware/platforms.py) is the one list of clouds: a row added there
is a platform the config check, the adapter factory and the log hints know, with nothing
else to edit."""
import json

import support
from firmware import app as app_mod
from firmware import config, log, logfix, platforms

_GHOST = ("ghost", None, "firmware.clouds.ghost_not_built", "Ghost", ("api_url", "device_id",
          "ghost_key"), (("ws_path", "/ghost"),), "api_url", "cloud.ghost_key (ghost)",
          ("ghost_key",))


class _Rows:
    """platforms.ROWS with the ghost row added while the `with` block runs."""

    def __enter__(self):
        from firmware import platforms as current  # make_cloud drops it after use

        self.module, self.saved = current, current.ROWS
        current.ROWS = self.saved + (_GHOST,)

    def __exit__(self, *exc):
        self.module.ROWS = self.saved


def _load(cloud):
    root = support.tmpdir("plat")
    support.write(root + "/ca.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n"
                  "-----END CERTIFICATE-----\n")
    support.write(root + "/config.json", json.dumps({"cloud": dict(cloud, ca_file="ca.pem"),
                                                     "board": "sim"}))
    try:
        return config.load(root)
    finally:
        support.rmtree(root)


def test_a_new_row_is_a_platform_the_config_check_knows():
    with _Rows():
        e = support.raises(config.ConfigError, _load, {"platform": "ghost",
                                                       "api_url": "https://g.example"})
        # its required keys, not "not supported"
        assert "cloud.platform" not in " ".join(e.problems), e.problems
        assert any(p.startswith("cloud.device_id: missing") for p in e.problems), e.problems
        assert any(p.startswith("cloud.ghost_key: missing") for p in e.problems), e.problems
        cfg = _load({"platform": "ghost", "api_url": "https://g.example", "device_id": 1,
                     "ghost_key": "gk-secret-9731"})
        assert "gk-secret-9731" not in log.redact("key gk-secret-9731")  # the row's secret
        assert cfg.get("cloud.ws_path") == "/ghost"  # the row's defaults
        assert not any("ghost_key" in w for w in cfg.warnings), cfg.warnings  # a known key
        assert cfg.get("cloud.transport") is None  # one transport: no transport key
        e = support.raises(config.ConfigError, _load, {"platform": "ghost",
                                                       "api_url": "http://g.example",
                                                       "device_id": 1, "ghost_key": "k-123"})
        assert any(p.startswith("cloud.api_url: http:// is not encrypted")
                   for p in e.problems), e.problems
    e = support.raises(config.ConfigError, _load, {"platform": "ghost"})
    assert "is not supported; use one of %s" % ", ".join(platforms.names()) in e.problems[0]


def test_transports_come_from_the_rows():
    assert platforms.transports("realer") == ("https", "mqtt")
    assert platforms.transports("xyte") == ()
    e = support.raises(config.ConfigError, _load, {
        "platform": "realer", "transport": "coap", "api_url": "https://r.example",
        "device_id": 1, "client_id": "cid-1", "client_secret": "sec-123"})
    assert 'cloud.transport: \'coap\'; use "https" or "mqtt"' in e.problems, e.problems


class _Cfg:
    def __init__(self, platform, transport=None):
        self.cloud = {"platform": platform, "transport": transport}

    def get(self, key, default=None):
        if key.startswith("cloud."):
            return self.cloud.get(key[6:], default)
        return default


def test_make_cloud_reads_the_registry():
    with _Rows():
        e = support.raises(config.ConfigError, app_mod.make_cloud, _Cfg("ghost"))
    assert len(e.problems) == 1, e.problems
    assert "ghost" in e.problems[0] and "not in this build" in e.problems[0], e.problems
    e = support.raises(config.ConfigError, app_mod.make_cloud, _Cfg("thingsboard"))
    assert "thingsboard" in e.problems[0], e.problems
    e = support.raises(config.ConfigError, app_mod.make_cloud, _Cfg("realer", "coap"))
    assert "realer" in e.problems[0] and "coap" in e.problems[0], e.problems


def test_refused_credentials_hint_names_the_rows_keys():
    with _Rows():
        hint = logfix.hint("auth: HTTP 401", "ghost")
    assert hint is not None and "cloud.ghost_key (ghost)" in hint, hint
    assert "cloud.hardware_key" in logfix.hint("auth: HTTP 401", "xyte")
    assert "the cloud credentials" in logfix.hint("auth: HTTP 401", "nowhere")


def test_runs_name_one_run_per_row():
    runs = platforms.runs()
    assert len(runs) == len(platforms.ROWS)
    assert ("realer-mqtt", "realer", "mqtt") in runs and ("xyte", "xyte", "https") in runs
    for name, platform, transport in runs:  # one transport: the platform's own name
        assert name in (platform, platform + "-" + transport), (name, platform, transport)


def _registry_cfg(row, root):
    cloud = {"platform": row[platforms.PLATFORM], "ca_file": "ca.pem"}
    if row[platforms.TRANSPORT]:
        cloud["transport"] = row[platforms.TRANSPORT]
    for key in row[platforms.REQUIRED]:
        cloud[key] = 1 if key == "device_id" else "value-%s-0001" % key
    cloud[row[platforms.URL_KEY]] = "https://127.0.0.1:1"
    support.write(root + "/ca.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n"
                  "-----END CERTIFICATE-----\n")
    return config.validate({"cloud": cloud, "board": "sim"}, root)


def test_every_registered_adapter_keeps_the_contract_and_takes_its_hooks_at_construction():
    from firmware.clouds import Adapter

    def on_desired(cmd):
        pass

    def on_link_up(first):
        pass

    def on_reached():
        pass

    ota = object()
    for row in platforms.ROWS:
        root = support.tmpdir("reg")
        try:
            cloud = app_mod.make_cloud(_registry_cfg(row, root), on_desired=on_desired,
                                       on_link_up=on_link_up, on_reached=on_reached, ota=ota)
        finally:
            support.rmtree(root)
        name = row[platforms.CLASS]
        assert type(cloud).__name__ == name and isinstance(cloud, Adapter), name
        assert cloud.on_desired is on_desired and cloud.on_link_up is on_link_up, name
        assert cloud.ota is ota, name
        # Realer MQTT's token and catalog calls run in its inner HTTPS adapter
        assert getattr(cloud, "https", cloud).on_reached is on_reached, name
        for member in ("send", "poll_catalog"):  # what the base cannot do for it
            assert getattr(type(cloud), member) is not getattr(Adapter, member), (name, member)
        assert isinstance(cloud.batch_max, int) and cloud.batch_max > 0, name
        module = __import__(row[platforms.MODULE], None, None, ("to_wire",))
        assert hasattr(type(cloud), "to_wire") or hasattr(module, "to_wire"), name
        for member in ("enabled_sensors", "renewals", "renew_at"):  # the app reads them
            getattr(cloud, member)
        assert isinstance(cloud.background(), list), name
