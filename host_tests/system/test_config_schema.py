"""examples/config.schema.json is what tools/config_schema.py generates from the validator's
tables (so the two cannot drift), and the examples conform to it."""
import json
import os
import re

import pytest

from firmware import config_check, platforms
from tools import config_schema


def test_checked_in_schema_is_the_generated_one():
    with open(config_schema.OUT) as f:
        assert f.read() == config_schema.text(), "run `make schema` and commit the result"
    assert config_schema.main(["--check"]) == 0


def test_check_fails_on_a_stale_file(tmp_path):
    stale = tmp_path / "schema.json"
    stale.write_text(config_schema.text().replace('"esp32"', '"esp8266"'))
    assert config_schema.main(["--check", "--out", str(stale)]) == 1


def test_a_validator_key_without_a_schema_entry_fails_generation(monkeypatch):
    # the module the generator reads (config.validate drops it from sys.modules after use)
    cc = config_schema._firmware()[1]
    monkeypatch.setattr(cc, "_TOP_KEYS", cc._TOP_KEYS + ("new_key",))
    with pytest.raises(SystemExit, match="missing \\['new_key'\\]"):
        config_schema.schema()


def test_schema_follows_the_validator_rules():
    s = config_schema.schema()
    cloud = s["properties"]["cloud"]
    for rule in cloud["allOf"]:
        platform = rule["if"]["properties"]["platform"]["const"]
        assert rule["then"]["required"] == list(platforms.row(platform)[platforms.REQUIRED])
    url = re.compile(cloud["properties"]["api_url"]["pattern"])
    assert url.match("https://a") and url.match("wss://a") and not url.match("http://a")
    placeholder = re.compile(cloud["properties"]["client_secret"]["not"]["pattern"])
    assert placeholder.search("cdv_CHANGE-ME-x") and placeholder.search("changeme")
    mr = s["properties"]["outbox"]["properties"]["max_records"]
    assert (mr["minimum"], mr["maximum"]) == config_check._MAX_RECORDS


def test_examples_use_only_schema_keys():
    s = config_schema.schema()
    here = os.path.dirname(config_schema.OUT)
    names = [n for n in os.listdir(here) if n.startswith("config.") and n != "config.schema.json"]
    assert len(names) >= 5
    for n in names:
        with open(os.path.join(here, n)) as f:
            raw = json.load(f)
        assert raw["$schema"] == "config.schema.json", n
        assert set(raw) <= set(s["properties"]), n
        assert set(raw["cloud"]) <= set(s["properties"]["cloud"]["properties"]), n
        assert raw["cloud"]["platform"] in s["properties"]["cloud"]["properties"]["platform"][
            "enum"]
