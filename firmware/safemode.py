"""Safe mode: decides at boot whether the application may start.

`check(root)` (called by boot.py) returns why not, or None: the `safe_mode_pin` from
config.json held low, or `limit` boots in a row that crashed before the app called
`healthy(root)`. The count lives in the file `bootcount` in the data root, replaced by
write-temp-then-rename so a power cut never leaves it torn. boot.py stores the reason in
`active`; main.py reads it and stays at the REPL instead of starting the app, so the board
can be fixed with mpremote. Imports nothing from the firmware (boot must not pull the app in).
"""
import os

from micropython import const

_FILE = "bootcount"
_LIMIT = 3
HEALTHY_AFTER_MS = const(120000)  # the app calls healthy() once it has run this long

active = None  # the reason safe mode is on for this boot (set by boot.py)


def _path(root, name):
    return name if root in ("", ".") else root.rstrip("/") + "/" + name


def _read_count(root):
    try:
        with open(_path(root, _FILE)) as f:
            n = int(f.read().strip() or "0")
    except (OSError, ValueError):
        return 0  # missing or unreadable: a fresh board, not a crash loop
    return n if n > 0 else 0


def _write_count(root, n):
    path = _path(root, _FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % n)
    os.rename(tmp, path)


def _pin_from_config(root):
    try:
        import json

        with open(_path(root, "config.json")) as f:
            pin = json.load(f).get("safe_mode_pin")
    except Exception:  # a bad config is config.py's to report, not a reason to stop here
        return None
    if isinstance(pin, int) and not isinstance(pin, bool) and 0 <= pin <= 39:
        return pin
    return None


def _read_pin(pin):
    import machine  # only on demand: no hardware object at import time

    return machine.Pin(pin, machine.Pin.IN, machine.Pin.PULL_UP).value()


def check(root, pin_reader=None, limit=_LIMIT):
    """The reason the app must not start, or None (then this boot is counted)."""
    if pin_reader is None:
        pin = _pin_from_config(root)
        if pin is not None:
            try:
                low = not _read_pin(pin)
            except Exception:
                low = False
            if low:
                return "safe-mode pin %d held low at boot" % pin
    elif not pin_reader():
        return "safe-mode pin held low at boot"
    n = _read_count(root)
    if n >= limit:
        return "%d boots in a row crashed before running healthy" % n
    try:
        _write_count(root, n + 1)
    except OSError:
        pass  # a read-only or full filesystem must not keep the app from starting
    return None


def healthy(root):
    """The app has run fine for a while: crashed boots no longer count. Writes only if needed."""
    if _read_count(root):
        _write_count(root, 0)


def boots(root):
    """Boots counted since the app last called healthy()."""
    return _read_count(root)
