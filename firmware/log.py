"""Log lines with levels, and redaction: no registered secret ever reaches the output.

Every secret the firmware learns (client secret, tokens, MQTT credential, access keys, and
derived forms such as a Basic auth value) is registered with `secret()` the moment it is
known; `redact()` then replaces it by `***` in every line before the line is written.

`secret()` also registers the forms the value takes when it is quoted rather than printed:
inside repr() of a str or of its bytes, and inside JSON, which escape quotes, backslashes and
non-ASCII differently. Where registered secrets overlap in a line, the whole union is
replaced, so no tail of a longer secret survives a shorter one. A secret shorter than 4
characters is still redacted (mangling ordinary words is better than a leak) and a warning
says it is too short.
"""
import io
import json
import sys
from time import ticks_ms

from micropython import const

DEBUG = const(10)
INFO = const(20)
WARN = const(30)
ERROR = const(40)
_NAMES = {DEBUG: "D", INFO: "I", WARN: "W", ERROR: "E"}
_MIN_SECRET_LEN = const(4)  # shorter secrets also blank out ordinary words: warned

_level = [INFO]
_secrets: list = []
_sink: list = [None]  # callable(line) or None for print


def set_level(level):
    _level[0] = level


def set_sink(fn):
    """Send lines to fn(line) instead of stdout (tests, the device log file, a dump buffer)."""
    _sink[0] = fn


def secret(value):
    """Register a value (str or bytes) that must never be logged, with its quoted forms."""
    if not value:
        return
    forms = _forms(value)
    new = forms[0] not in _secrets
    for f in forms:
        if f not in _secrets:
            _secrets.append(f)
    if new and len(forms[0]) < _MIN_SECRET_LEN:  # redacted anyway; never name the value
        emit(WARN, "log", "a secret of %d characters is too short to keep private; ordinary "
             "text containing it is redacted too" % len(forms[0]))


def forget(value):
    """Drop a secret that is no longer live (an expired token), to keep redaction cheap."""
    if not value:
        return
    for f in _forms(value):
        if f in _secrets:
            _secrets.remove(f)


def _forms(value):
    """The value as text, then each distinct escaped form it takes inside repr() or JSON."""
    if isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
        try:
            text = raw.decode()
        except UnicodeError:
            return [repr(raw)[2:-1]]
    else:
        text = str(value)
        raw = text.encode()
    forms = [text]
    for f in (repr(text)[1:-1], repr(raw)[2:-1], json.dumps(text)[1:-1]):
        if f not in forms:
            forms.append(f)
    return forms


def redact(text):
    """`text` with every registered secret replaced by `***`; overlapping or adjacent
    occurrences become one `***`."""
    spans = None
    for s in _secrets:
        i = text.find(s)
        while i >= 0:
            if spans is None:
                spans = []
            spans.append((i, i + len(s)))
            i = text.find(s, i + 1)
    if spans is None:
        return text
    spans.sort()
    out: list = []
    pos = 0  # text before pos is already copied or blanked
    for start, end in spans:
        if start > pos or not out:  # a new blanked region (touching ones merge)
            out.append(text[pos:start])
            out.append("***")
        if end > pos:
            pos = end
    out.append(text[pos:])
    return "".join(out)


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
    if DEBUG >= _level[0]:  # formatting a traceback costs heap; only when it is shown
        emit(DEBUG, tag, traceback_text(e))


def describe(e):
    """One line naming the exception type and its message, safe to log."""
    return redact("%s(%s)" % (type(e).__name__, e))


def traceback_text(e):
    buf = io.StringIO()
    sys.print_exception(e, buf)
    return buf.getvalue()
