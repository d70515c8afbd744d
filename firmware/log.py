"""Log lines with levels, and redaction: no registered secret ever reaches the output.

Every secret the firmware learns (client secret, tokens, MQTT credential, access keys, and
derived forms such as a Basic auth value) is registered with `secret()` the moment it is
known; `redact()` then replaces it by `***` in every line before the line is written.
"""
import io
import sys
from time import ticks_ms

from micropython import const

DEBUG = const(10)
INFO = const(20)
WARN = const(30)
ERROR = const(40)
_NAMES = {DEBUG: "D", INFO: "I", WARN: "W", ERROR: "E"}
_MIN_SECRET_LEN = const(4)  # shorter values would blank out ordinary words

_level = [INFO]
_secrets: list = []
_sink: list = [None]  # callable(line) or None for print


def set_level(level):
    _level[0] = level


def set_sink(fn):
    """Send lines to fn(line) instead of stdout (tests, the device log file, a dump buffer)."""
    _sink[0] = fn


def secret(value):
    """Register a value that must never be logged. Longest first, so a secret containing
    another secret is replaced whole."""
    if not value:
        return
    value = str(value)
    if len(value) < _MIN_SECRET_LEN or value in _secrets:
        return
    _secrets.append(value)
    _secrets.sort(key=len, reverse=True)


def forget(value):
    """Drop a secret that is no longer live (an expired token), to keep redaction cheap."""
    if value in _secrets:
        _secrets.remove(value)


def redact(text):
    for s in _secrets:
        if s in text:
            text = text.replace(s, "***")
    return text


def emit(level, tag, msg, args=()):
    if level < _level[0]:
        return
    if args:
        try:
            msg = msg % args
        except (TypeError, ValueError):
            msg = "%s %r" % (msg, args)
    t: int = ticks_ms()  # type: ignore[assignment]  # a plain int on every port
    line = redact("%d.%03d %s %s: %s" % (t // 1000, t % 1000, _NAMES.get(level, "?"), tag, msg))
    sink = _sink[0]
    if sink is None:
        print(line)
    else:
        sink(line)


def debug(tag, msg, *args):
    if DEBUG >= _level[0]:
        emit(DEBUG, tag, msg, args)


def info(tag, msg, *args):
    emit(INFO, tag, msg, args)


def warn(tag, msg, *args):
    emit(WARN, tag, msg, args)


def error(tag, msg, *args):
    emit(ERROR, tag, msg, args)


def exc(tag, msg, e):
    """Log an exception with its traceback, redacted like every other line."""
    emit(ERROR, tag, "%s: %s" % (msg, describe(e)))
    emit(DEBUG, tag, traceback_text(e))


def describe(e):
    """One line naming the exception type and its message, safe to log."""
    return redact("%s(%s)" % (type(e).__name__, e))


def traceback_text(e):
    buf = io.StringIO()
    sys.print_exception(e, buf)
    return buf.getvalue()
