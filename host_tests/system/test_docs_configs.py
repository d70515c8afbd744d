"""The board configs in docs/boards.md are what users copy: each, merged with an example's
cloud section, must pass the same validator the firmware runs at boot."""
import json
import os
import re

from firmware import config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _fragments():
    with open(os.path.join(ROOT, "docs", "boards.md")) as f:
        return [json.loads(b) for b in re.findall(r"```json\n(.*?)```", f.read(), re.S)]


def test_board_doc_configs_validate(tmp_path):
    with open(os.path.join(ROOT, "examples", "config.realer.json")) as f:
        base = json.load(f)
    base.pop("secrets_file")  # the example's cloud section, its placeholders filled in
    base["cloud"].update(client_id="cdv_filled-in", client_secret="filled-in-secret")
    base["wifi"] = {"ssid": "net", "password": "filled-in-password"}
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    fragments = _fragments()
    assert len(fragments) >= 2, "docs/boards.md lost its example configs"
    for frag in fragments:
        raw = dict(base, sensors=[], commands=[], switches=[])  # only the doc's I/O
        raw.update(frag)
        cfg = config.validate(raw, str(tmp_path))  # raises ConfigError with every problem
        assert cfg.get("board") == "esp32"
