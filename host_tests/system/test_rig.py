"""The shared e2e rig's own guarantees: wait_for returns the condition's value or fails
naming what it waited for, and a scratch directory is gone even when the test body raised."""
import os
import subprocess
import sys

import pytest
from rig import FirmwareRig, scratch_dir, status_of, wait_for

HOST_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wait_for_returns_the_first_truthy_value():
    seen = []

    def cond():
        seen.append(1)
        return len(seen) >= 3 and "ready"

    assert wait_for("three polls", cond, timeout=30, step=0) == "ready"
    assert len(seen) == 3


def test_wait_for_fails_naming_what_it_waited_for():
    with pytest.raises(AssertionError, match="the impossible"):
        wait_for("the impossible", lambda: None, timeout=0, step=0)


def test_scratch_dir_is_removed_even_when_the_body_raises():
    kept = []
    with pytest.raises(RuntimeError):
        with scratch_dir() as d:
            kept.append(d)
            with open(os.path.join(d, "cloud.db"), "w") as f:
                f.write("x")
            raise RuntimeError("the test failed")
    assert kept and not os.path.exists(kept[0])


def test_status_of_reads_the_last_status_line():
    log = "x status: readings=1 pending=2\ny status: readings=5 pending=0\n"
    assert status_of(log) == {"readings": "5", "pending": "0"}
    assert status_of("no status yet") == {}


def test_wait_for_shows_the_log_and_fails_at_once_on_a_marker():
    calls = []
    with pytest.raises(AssertionError, match="(?s)waiting for a reading.*MemoryError"):
        wait_for("a reading", lambda: calls.append(1), timeout=300, step=0,
                 log=lambda: "boot\nMemoryError: memory allocation failed\n",
                 fail_on=("MemoryError",))
    assert calls == []  # no waiting out the 300 s once the log says the device is done for
    with pytest.raises(AssertionError, match="(?s)timed out.*--- log ---\nlast line"):
        wait_for("a reading", lambda: None, timeout=0, step=0, log=lambda: "last line")


def test_wait_for_shows_the_live_rigs_device_log_without_being_told():
    # an e2e wait that times out under load says what the device was doing, whether or not
    # the call passed log=rig.log
    with scratch_dir() as tmp:
        rig = FirmwareRig(tmp)
        try:
            rig.log_file.write(b"I app: the device's last words\n")
            rig.log_file.flush()
            with pytest.raises(AssertionError, match="(?s)--- log ---.*the device's last"):
                wait_for("a reading", lambda: None, timeout=0, step=0)
        finally:
            rig.stop()
    with pytest.raises(AssertionError) as e:  # a stopped rig's log is not shown
        wait_for("a reading", lambda: None, timeout=0, step=0)
    assert "--- log ---" not in str(e.value)


_FAILING = '''
import os


def test_fails(tmp_path, tmp_path_factory):
    shared = tmp_path_factory.mktemp("pki")
    for d in (tmp_path, shared):
        (d / "cloud.db").write_text("x")
    with open(os.environ["SEEN_PATHS"], "a") as f:
        f.write("%s\\n%s\\n" % (tmp_path, shared))
    assert False, "the test failed"
'''


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_tmp_path_is_removed_even_when_the_test_fails(workers):
    """host_tests/conftest.py gives each session a temporary directory of its own and removes
    it at the end: a failed test's tmp_path (and tmp_path_factory's) are gone too, also with
    pytest-xdist's workers (make test runs them)."""
    with scratch_dir("tmp-path-check-") as d:
        test = os.path.join(d, "test_failing.py")
        with open(test, "w") as f:
            f.write(_FAILING)
        seen = os.path.join(d, "seen.txt")
        env = dict(os.environ, SEEN_PATHS=seen, PYTHONPATH=HOST_TESTS)
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              "-p", "conftest", "--rootdir", d, *workers, test],
                             cwd=d, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 1 and "the test failed" in out.stdout, out.stdout + out.stderr
        with open(seen) as f:
            paths = f.read().split()
    assert len(paths) == 2
    assert [p for p in paths if os.path.exists(p)] == [], paths
