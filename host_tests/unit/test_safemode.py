"""Safe mode decisions at boot (pin, crashed-boot counter), on both runtimes."""
import json
import os

import machine

import support
from firmware import safemode


def _root(cfg=None):
    root = support.tmpdir("safe")
    if cfg is not None:
        support.write(root + "/config.json", json.dumps(cfg))
    return root


def _count_file(root):
    with open(root + "/bootcount") as f:
        return f.read()


def test_nothing_is_active_by_default():
    assert safemode.active is None


def test_each_boot_counts_until_the_limit_then_safe_mode():
    root = _root()
    try:
        assert safemode.boots(root) == 0
        for n in (1, 2, 3):
            assert safemode.check(root, limit=3) is None
            assert safemode.boots(root) == n
        why = safemode.check(root, limit=3)
        assert why is not None and "3 boots in a row" in why
        assert safemode.check(root, limit=3) == why  # stays in safe mode, count unchanged
        assert safemode.boots(root) == 3
        assert sorted(os.listdir(root)) == ["bootcount"]  # no temp file left behind
    finally:
        support.rmtree(root)


def test_healthy_resets_the_count():
    root = _root()
    try:
        safemode.check(root, limit=3)
        safemode.check(root, limit=3)
        safemode.healthy(root)
        assert safemode.boots(root) == 0
        for _ in range(3):
            assert safemode.check(root, limit=3) is None
        safemode.healthy(root)
        assert safemode.check(root, limit=3) is None  # a good boot never reaches the limit
    finally:
        support.rmtree(root)


def test_healthy_on_a_fresh_root_writes_nothing():
    root = _root()
    try:
        safemode.healthy(root)
        assert os.listdir(root) == []
    finally:
        support.rmtree(root)


def test_a_garbled_counter_reads_as_zero():
    root = _root()
    try:
        for junk in ("x1\n", "", "-5\n", "\xff"):
            support.write(root + "/bootcount", junk)
            assert safemode.boots(root) == 0
            assert safemode.check(root, limit=3) is None
            assert _count_file(root) == "1\n"
    finally:
        support.rmtree(root)


def test_pin_reader_held_low_means_safe_mode_without_counting():
    root = _root()
    try:
        why = safemode.check(root, pin_reader=lambda: 0)
        assert why is not None and "pin" in why
        assert safemode.boots(root) == 0
        assert safemode.check(root, pin_reader=lambda: 1) is None
        assert safemode.boots(root) == 1
    finally:
        support.rmtree(root)


def test_safe_mode_pin_from_config_reads_the_pin_with_pull_up():
    root = _root({"safe_mode_pin": 0, "cloud": {}})
    try:
        machine.Pin.levels.pop(0, None)  # nothing pulls it down: the pull-up reads 1
        assert safemode.check(root) is None
        machine.Pin.levels[0] = 0  # the BOOT button held
        why = safemode.check(root)
        assert why is not None and "pin 0" in why
    finally:
        machine.Pin.levels.pop(0, None)
        support.rmtree(root)


def test_a_bad_config_does_not_stop_the_boot_here():
    for text in ("{not json", json.dumps({"safe_mode_pin": "zero"}),
                 json.dumps({"safe_mode_pin": 99}), json.dumps([1, 2])):
        root = _root()
        try:
            support.write(root + "/config.json", text)
            machine.Pin.levels[0] = 0
            assert safemode.check(root) is None  # config.py names the problem later
        finally:
            machine.Pin.levels.pop(0, None)
            support.rmtree(root)


def test_app_main_does_not_start_in_safe_mode():
    from firmware import app, log

    lines = []
    log.set_sink(lines.append)
    safemode.active = "3 boots in a row crashed before running healthy"
    try:
        assert app.main("/nonexistent-root") == 2  # returns before reading any config
    finally:
        safemode.active = None
        log.set_sink(None)
    assert any("safe mode: 3 boots" in x for x in lines)


def test_safemode_imports_nothing_from_the_firmware():
    # boot.py imports it before anything else: it must not pull in the app or its deps
    with open(safemode.__file__) as f:
        imports = [x.strip() for x in f if x.startswith(("import ", "from "))]
    assert imports and not any("firmware" in x for x in imports), imports
