"""pytest setup: the same import paths the MicroPython runner uses (repo root, shims, unit),
plus the MicroPython APIs CPython lacks (tools/cpython_compat.py)."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (os.path.join(HERE, "unit"), os.path.join(HERE, "shims"),
             os.path.join(ROOT, "lib"), ROOT):
    if path not in sys.path:
        sys.path.insert(0, path)

from tools import cpython_compat  # noqa: E402

cpython_compat.install()
