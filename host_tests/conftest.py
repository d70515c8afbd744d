"""pytest setup: the same import paths the MicroPython runner uses (repo root, shims, unit),
plus the MicroPython APIs CPython lacks (tools/cpython_compat.py), and a temporary directory
of this session's own for tmp_path / tmp_path_factory, removed when the session ends whatever
the tests did (pytest's own keeps the last three runs' directories, failed tests' included,
with their databases, keys and logs)."""
import os
import shutil
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (os.path.join(HERE, "unit"), os.path.join(HERE, "shims"),
             os.path.join(ROOT, "lib"), ROOT):
    if path not in sys.path:
        sys.path.insert(0, path)

from tools import cpython_compat  # noqa: E402

cpython_compat.install()

_OWN_BASETEMP = "_host_tests_own_basetemp"


@pytest.hookimpl(tryfirst=True)  # before pytest's tmpdir plugin reads --basetemp
def pytest_configure(config):
    # Only the controlling process picks the directory: pytest-xdist gives each worker a
    # subdirectory of it (workerinput is set in workers). A --basetemp given by hand stays.
    if hasattr(config, "workerinput") or config.option.basetemp:
        return
    config.option.basetemp = tempfile.mkdtemp(prefix="host-tests-")
    setattr(config, _OWN_BASETEMP, config.option.basetemp)


def pytest_unconfigure(config):
    path = getattr(config, _OWN_BASETEMP, None)
    if path:
        shutil.rmtree(path, ignore_errors=True)


# The longest files (each 15 s to 45 s a test, mostly waiting on the firmware's real-time
# intervals), run first: with `make test`'s pytest-xdist workers a long test that starts last
# would run on alone while the other workers idle.
_LONG_FIRST = ("test_tls_sessions.py", "test_xyte_e2e.py", "test_outbox_powerloss.py",
               "test_realer_mqtt_e2e.py", "test_board_log.py", "test_realer_https_e2e.py",
               "test_ota_app_e2e.py", "test_deploy.py", "test_improv_wifi.py",
               "test_ota_serve.py", "test_lowpower_e2e.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return _LONG_FIRST.index(name) if name in _LONG_FIRST else len(_LONG_FIRST)
    items.sort(key=rank)  # stable: within a file, and for the rest, collection order stays
