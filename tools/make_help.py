"""`make help`: every target of the Makefile with one line saying what it does (the line
below for the everyday ones, else the first sentence of the comment written above the rule).

    python -m tools.make_help [Makefile]
"""
import re
import sys

_RULE = re.compile(r"^([a-z][a-z0-9_-]*)\s*:(?!=)")
_KNOWN = {
    "run": "the firmware (sim board) against a local cloud; PLATFORM= TRANSPORT= FRESH=1",
    "test": "everything: lint, typecheck, unit tests on both runtimes, system tests",
    "deps": "install the pinned host tools into .venv (and mosquitto)",
    "lint": "ruff", "typecheck": "mypy against the ESP32 stubs",
    "unit-mp": "unit tests on the MicroPython unix port", "pytest": "unit + system tests, CPython",
    "build": "compile the firmware to .mpy (ARCH=xtensawin; ARCH= for plain bytecode)",
    "deploy": "copy the changed build files to the board and reset it; PORT=",
    "provision": "check and copy config.json, its CA, secrets.json, the OTA key; PORT= CONFIG= "
                 "[SECRETS=]",
    "console": "the board's log and REPL (Ctrl-] leaves); PORT=",
    "ota-keygen": "make the OTA signing key pair in keys/",
    "clean": "remove build/ and caches",
}


def targets(text):
    """[(target, description)] in Makefile order; the description is the comment lines right
    above the rule (joined), or "" when there are none."""
    out, comment = [], []
    for line in text.splitlines():
        if line.startswith("#"):
            comment.append(line.lstrip("#").strip())
            continue
        m = _RULE.match(line)
        if m and m.group(1) not in [t for t, _ in out]:
            text = " ".join(c for c in comment if c)
            out.append((m.group(1), _KNOWN.get(m.group(1)) or text.split(". ")[0].rstrip(".")))
        if not line.startswith("\t"):
            comment = []
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0] if argv else "Makefile") as f:
        found = targets(f.read())
    width = max(len(t) for t, _ in found)
    for name, desc in found:
        print("  %-*s  %s" % (width, name, desc or "-"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
