"""OTA slot state (firmware/ota/slots.py) and the boot/main pair that use it, on both runtimes:
trial boots, confirm, rollback on a crash or on too many unconfirmed boots, a torn or missing
state file, and boot.py/main.py run as the board runs them (boot, then main)."""
import json
import os
import sys

import support
from firmware.ota import slots


def fresh():
    return support.tmpdir("slots")


def test_fresh_board_boots_the_factory_app():
    root = fresh()
    assert slots.choose(root) == (None, None)
    assert slots.inactive(root) == "a"
    assert slots.running_version(root) == "factory"
    assert slots.on_trial(root) is None
    assert slots.confirm(root) is None
    assert slots.fail(root, "x") is None
    support.rmtree(root)


def test_staged_slot_is_tried_then_confirmed():
    root = fresh()
    slots.stage(root, "a", "1.1", trials=2)
    assert slots.inactive(root) is None  # nothing may overwrite a slot on trial
    slot, note = slots.choose(root)
    assert slot == root + "/ota/a"
    assert "trial boot 1/2 of 1.1" == note
    assert slots.on_trial(root) == "1.1"
    assert slots.running_version(root) == "factory"
    assert slots.confirm(root) == "1.1"
    assert slots.running_version(root) == "1.1"
    assert slots.choose(root) == (root + "/ota/a", None)
    assert slots.inactive(root) == "b"
    support.rmtree(root)


def test_unconfirmed_trial_rolls_back_after_its_boots():
    root = fresh()
    slots.stage(root, "a", "1.1", trials=2)
    slots.confirm(root)
    slots.stage(root, "b", "1.2", trials=2)
    assert slots.choose(root)[0] == root + "/ota/b"
    assert slots.choose(root)[0] == root + "/ota/b"
    slot, note = slots.choose(root)  # third boot without confirm
    assert slot == root + "/ota/a"
    assert "rolled back from 1.2" in note
    assert slots.failure(root) == {"version": "1.2",
                                   "reason": "not confirmed after 2 boots"}
    assert slots.running_version(root) == "1.1"
    assert slots.choose(root) == (root + "/ota/a", None)
    slots.clear_failure(root)
    assert slots.failure(root) is None
    support.rmtree(root)


def test_crash_on_trial_rolls_back_at_once():
    root = fresh()
    slots.stage(root, "a", "2.0")
    slots.choose(root)
    assert slots.fail(root, "crashed: ImportError") == "2.0"
    assert slots.choose(root) == (None, None)  # back to the factory app
    assert slots.failure(root)["reason"] == "crashed: ImportError"
    assert slots.inactive(root) == "a"
    support.rmtree(root)


def test_unreadable_state_boots_the_factory_app():
    root = fresh()
    os.mkdir(root + "/ota")
    for junk in ("", "{", "[1]", '{"active": "../../etc", "pending": 7, "tries": -1}'):
        support.write(root + "/ota/state.json", junk)
        assert slots.choose(root) == (None, None)
    support.write(root + "/ota/state.json", '{"active": "b", "pending": "b"}')
    assert slots.choose(root) == (root + "/ota/b", None)  # pending == active is no trial
    support.rmtree(root)


def test_state_replace_leaves_no_temp_file():
    root = fresh()
    slots.stage(root, "a", "1.0")
    assert sorted(os.listdir(root + "/ota")) == ["state.json"]
    with open(root + "/ota/state.json") as f:
        assert json.load(f)["pending"] == "a"
    support.rmtree(root)


# --- boot.py and main.py, run the way the board runs them ----------------------------------

_REPO = slots.__file__.rsplit("/", 3)[0]  # the repository: boot.py, main.py


def _board(root, app_source, version):
    d = root + "/ota/" + version
    for p in (d, d + "/firmware"):
        os.mkdir(p)
    support.write(d + "/firmware/__init__.py", "")
    support.write(d + "/firmware/app.py", app_source)


def _boot_and_main(root):
    """Run boot.py then main.py from the repository with FIRMWARE_ROOT=root; returns the
    module names seen and whether main raised SystemExit. Restores sys.path/sys.modules."""
    saved_path = list(sys.path)
    saved = dict(sys.modules)
    _setenv("FIRMWARE_ROOT", root)
    exited = None
    app = None
    try:
        for name in ("boot.py", "main.py"):
            with open(_REPO + "/" + name) as f:
                code = f.read()
            try:
                exec(code, {"__name__": "__main__"})
            except SystemExit as e:
                exited = e
        app = sys.modules.get("firmware.app")
        app = getattr(app, "WHO", None)
    finally:
        sys.path[:] = saved_path
        for name in list(sys.modules):
            if name not in saved:
                del sys.modules[name]
        for name, mod in saved.items():
            sys.modules[name] = mod
    return app, exited


def _setenv(name, value):
    if support.IS_MICROPYTHON:
        if value is None:
            os.unsetenv(name)
        else:
            os.putenv(name, value)
    elif value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def test_boot_starts_the_trial_and_main_rolls_back_a_crash_at_import():
    root = fresh()
    os.mkdir(root + "/ota")
    _board(root, "WHO = 'good'\ndef main():\n    return 0\n", "a")
    _board(root, "raise ImportError('broken build')\n", "b")
    slots.stage(root, "a", "1.0")
    slots.confirm(root)
    slots.stage(root, "b", "2.0")
    who, exited = _boot_and_main(root)
    assert who is None and exited is not None  # the new app crashed at import
    assert slots.failure(root)["version"] == "2.0"
    assert slots.failure(root)["reason"] == "crashed: ImportError"
    who, exited = _boot_and_main(root)
    assert who == "good" and exited is None  # next boot: the previous app
    support.rmtree(root)
    _setenv("FIRMWARE_ROOT", None)

