"""The host tools read the platform registry (firmware/platforms.py): a platform added there
is one --platform choice, one run directory and one `make memory` configuration, and the
memory trial drives its local cloud through the cloud module's own functions."""
import sys
import types

import pytest

from firmware import platforms
from tools import heapcheck, run_local, tls_sessions

_GHOST = ("ghost", None, "firmware.clouds.ghost", "Ghost", ("api_url",), (), "api_url",
          "cloud.key", ("key",))


@pytest.fixture
def ghost(monkeypatch):
    monkeypatch.setattr(platforms, "ROWS", platforms.ROWS + (_GHOST,))
    calls = []
    cloud = types.ModuleType("tools.ghost_cloud")
    cloud.stored_rows = lambda data: calls.append(("rows", data)) or [1, 2, 3]
    cloud.send_desired = lambda data, cid, value: calls.append(("desired", data, cid, value))
    monkeypatch.setitem(sys.modules, "tools.ghost_cloud", cloud)
    return calls


def test_a_registered_platform_is_a_choice_of_every_tool(ghost, capsys):
    assert run_local.run_name("ghost", "https") == "ghost"
    assert run_local.run_name("realer", "mqtt") == "realer-mqtt"
    for main in (run_local.main, tls_sessions.main, heapcheck.main):
        with pytest.raises(SystemExit):  # --help lists the choices and exits
            _argv(main, ["--help"])
        assert "ghost" in capsys.readouterr().out, main


def _argv(main, args):
    saved = sys.argv
    sys.argv = ["tool"] + args  # tls_sessions and heapcheck read sys.argv
    try:
        main()
    finally:
        sys.argv = saved


def test_the_memory_trial_drives_a_new_platforms_cloud_through_its_module(ghost):
    assert heapcheck.stored_rows("ghost", "/data") == 3
    assert heapcheck.has_desired("ghost") and not heapcheck.has_desired("nubison")
    heapcheck.send_desired("ghost", "/data", 42)
    assert ghost == [("rows", "/data"), ("desired", "/data", 4, 42)]


def test_make_memory_runs_every_registered_configuration():
    names = [c[0] for c in heapcheck.CONFIGS]
    assert names == [r[0] for r in platforms.runs()], names
    assert dict((c[0], c[3]) for c in heapcheck.CONFIGS)["realer-https"] == 48
