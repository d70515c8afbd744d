"""What build() leaves in RAM (both runtimes): start-up-only modules go once the app is built
(bench/memory.md: the frozen image must fit a board without PSRAM)."""
import json
import sys

import support
from firmware import app as app_mod
from firmware import log


def _root(ota_key=False):
    root = support.tmpdir("appmem")
    support.write(root + "/ca.pem",
                  "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    raw = {"cloud": {"platform": "realer", "api_url": "https://127.0.0.1:1", "device_id": 1,
                     "client_id": "cdv_mem", "client_secret": "memory-secret-01",
                     "ca_file": "ca.pem"},
           "board": "sim"}
    support.write(root + "/config.json", json.dumps(raw))
    if ota_key:
        support.write(root + "/ota_public_key.bin", "k" * 32)
    return root


def _build(root):
    lines: list = []
    log.set_sink(lines.append)
    try:
        return app_mod.build(root)
    finally:
        log.set_sink(None)


def test_the_ota_slot_logic_leaves_ram_when_nothing_is_on_trial_and_ota_is_off():
    root = _root()
    try:
        a = _build(root)
        assert a.trial is None and a.ota is None
        assert "firmware.ota.slots" not in sys.modules
        assert "firmware.ota" not in sys.modules  # its package too
        from firmware.ota import slots  # imported again where needed (main.py's crash path)

        assert slots.on_trial(root) is None
    finally:
        support.rmtree(root)


def test_the_ota_slot_logic_stays_while_an_update_is_on_trial():
    root = _root()
    try:
        from firmware.ota import slots

        slots.save(root, dict(slots.load(root), pending="b",
                              versions={"b": "2.0.0"}))
        a = _build(root)
        assert a.trial == "2.0.0"
        assert "firmware.ota.slots" in sys.modules  # health confirms the trial with it
    finally:
        support.rmtree(root)
