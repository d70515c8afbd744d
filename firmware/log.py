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

Lines a user has to act on say what to do: a warning or error whose text shows a known cause
(credentials refused, unknown host, unknown device, certificate, clock not set, connection
refused or timed out) ends with `; fix: ...` naming the config key or the action
(`hint()`; the table is firmware/logfix.py, loaded at the first warning; the credential
keys follow the platform config.load registered). Lines carry the
wall-clock time (`2026-12-06T04:05:12Z`) once the clock is set, seconds since boot before.

A failure that repeats (the cloud unreachable: auth, catalog and uplink all fail the same
way, at every retry) goes through `failing()`: the first occurrence is logged, the same
cause again is only counted (a reminder every 10 min), and `recovered()` logs once how many
failures over how long ended. `link()` gives the status line's online/offline and the last
error. `duration(ms)` writes times the way people read them.
"""
import io
import json
import sys
from time import ticks_diff, ticks_ms

from micropython import const

from firmware import clock

DEBUG = const(10)
INFO = const(20)
WARN = const(30)
ERROR = const(40)
_NAMES = {DEBUG: "D", INFO: "I", WARN: "W", ERROR: "E"}
_MIN_SECRET_LEN = const(4)  # shorter secrets also blank out ordinary words: warned

_REMIND_MS = const(600000)  # a failure that goes on is mentioned again every 10 min
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
    if level >= WARN:
        try:
            fix = hint(msg)
        except Exception:  # no RAM for the table: the line goes out without its fix
            fix = None
        if fix:
            msg = "%s; fix: %s" % (msg, fix)
    line = redact("%s %s %s: %s" % (_stamp(), _NAMES.get(level, "?"), tag, msg))
    sink = _sink[0]
    if sink is None:
        print(line)
    else:
        sink(line)


def _stamp():
    if clock.is_set():
        return clock.iso8601()
    t: int = ticks_ms()  # type: ignore[assignment]  # a plain int on every port
    return "%d.%03d" % (t // 1000, t % 1000)


def duration(ms):
    """`850 ms`, `12 s`, `5 min`, `5 min 30 s`, `2 h 5 min`."""
    ms = int(ms)
    if ms < 1000:
        return "%d ms" % ms
    s = (ms + 500) // 1000
    if s < 60:
        return "%d s" % s
    if s < 3600:
        return "%d min" % (s // 60) if s % 60 == 0 else "%d min %d s" % (s // 60, s % 60)
    return "%d h %d min" % (s // 3600, s % 3600 // 60)


# -- what to do about it (the table lives in firmware/logfix.py, loaded at the first warning)

_cloud: list = [None]  # the platform, for the credential keys


def set_cloud(platform):
    _cloud[0] = platform


def hint(text):
    """What a user can do about the cause `text` shows, or None (firmware/logfix.py)."""
    try:  # a log line must never fail its caller (no room to load the table: no hint)
        from firmware import logfix

        return logfix.hint(text, _cloud[0])
    except Exception:
        return None


# -- failures that repeat ------------------------------------------------------------------

# key -> [cause text, count, first ms, last logged ms]
_failing: dict = {}
_online = [False]  # something worked since boot


def failing(key, tag, what, cause, detail=""):
    """A failure of `key` (e.g. "cloud") with `cause` (log.describe(e)): logged the first
    time (`what: cause detail`), then counted while the cause stays the same, with a reminder
    every 10 min; a new cause is logged at once."""
    now = ticks_ms()
    st = _failing.get(key)
    if st is None or st[0] != cause:
        _failing[key] = [cause, 1, now, now]
        emit(WARN, tag, "%s: %s%s" % (what, cause, detail))
        return True
    st[1] += 1
    if ticks_diff(now, st[3]) >= _REMIND_MS:
        st[3] = now
        emit(WARN, tag, "%s: still %s (%d times in %s)%s" % (
            what, cause, st[1], duration(ticks_diff(now, st[2])), detail))
        return True
    return False


def recovered(key, tag, what="ok again"):
    """`key` works again: say so once if it was failing, with how often and for how long."""
    st = _failing.pop(key, None)
    _online[0] = True
    if st is not None:
        emit(INFO, tag, "%s after %d failure%s over %s (%s)" % (
            what, st[1], "" if st[1] == 1 else "s", duration(ticks_diff(ticks_ms(), st[2])),
            st[0]))


def link():
    """The status line's words: `link=online`, `link=connecting`, or `link=offline(3min)
    error=<the cause>`, each a key=value word (spaces in the cause become `_`)."""
    if _failing:
        first, cause = None, ""
        for st in _failing.values():  # the oldest failure is the cause to name
            if first is None or ticks_diff(st[2], first) < 0:
                first, cause = st[2], st[0]
        return "link=offline(%s) error=%s" % (
            duration(ticks_diff(ticks_ms(), first)).replace(" ", ""),
            "_".join(cause.split()).replace("=", ":"))
    return "link=online" if _online[0] else "link=connecting"


def progress(tag, stage, detail=None):
    """OTA progress a person can follow (firmware/logfix.py; loaded while an update runs)."""
    try:  # progress is a courtesy: an update never fails for want of it
        from firmware import logfix

        line = logfix.progress(stage, detail)
        if line is not None:
            info(tag, "%s", line)
    except Exception:
        pass


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
