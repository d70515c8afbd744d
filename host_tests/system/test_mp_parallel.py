"""make unit-mp's runner (host_tests/mp_parallel.py): a test file whose MicroPython process
hangs fails after the per-file deadline with what it printed, instead of stopping make test."""
import os
import sys

import pytest

HOST_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HOST_TESTS)
import mp_parallel  # noqa: E402


@pytest.fixture
def hanging_interpreter(tmp_path):
    path = tmp_path / "micropython"
    path.write_text("#!/bin/sh\necho 'test_a ... ok'\nexec sleep 600\n")
    path.chmod(0o755)
    return str(path)


def test_a_hanging_file_fails_after_the_deadline_with_its_output(hanging_interpreter):
    passed, failed, out = mp_parallel.run_file("test_x.py", micropython=hanging_interpreter,
                                               timeout=1)
    assert (passed, failed) == (0, 1)
    assert "test_a ... ok" in out and "hung: killed after 1 s" in out
