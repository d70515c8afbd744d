"""`make help` lists every target of the Makefile with a line saying what it does."""
import os
import re
import subprocess

from tools import make_help

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_make_help_lists_every_target_with_a_description():
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    out = subprocess.run(["make", "--no-print-directory", "help"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=30).stdout
    with open(os.path.join(ROOT, "Makefile")) as f:
        rules = sorted(set(re.findall(r"^([a-z][a-z0-9_-]*)\s*:(?!=)", f.read(), re.M)))
    listed = {line.split()[0]: line.split(None, 1)[1] for line in out.splitlines() if line}
    assert sorted(listed) == rules, out
    for name in rules:  # every target says what it does
        assert listed[name] != "-", (name, out)
    assert "PLATFORM=" in listed["run"]


def test_description_is_the_comment_above_the_rule():
    found = make_help.targets("# Does a thing. More words.\n# Second line\nthing: dep\n"
                              "\tcmd\n\nbare:\n\tcmd\n")
    assert found == [("thing", "Does a thing"), ("bare", "")]
