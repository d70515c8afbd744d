"""Which versions an update may install: semantic version order and the anti-rollback rule,
the same for app bundles (firmware/ota/fetch.py) and firmware images (firmware/ota/image.py).

A signed manifest is installed only when its version is newer than the running one, or when
the manifest itself (signed, so nobody else can add it) says `"rollback": true`; never below
the minimum secure version kept in `ota/min_version.json` (one for app bundles, one for
images), which only moves up: a manifest's `"min_version"` raises it once that update is
staged. So an old, genuinely signed bundle
cannot take a board back to a version its vendor has since declared unsafe (docs/ota.md).

Versions follow Semantic Versioning 2.0.0 (https://semver.org): MAJOR.MINOR.PATCH, a
pre-release after "-" ranks below its release (1.0.0-rc.1 < 1.0.0), build metadata after
"+" is ignored. One or two numbers are read as if the rest were 0 ("1.2" is 1.2.0).
"""
import json
import os

from firmware import log, statefile
from firmware.ota import slots
from firmware.ota.errors import Downgrade, UpdateError

_TAG = "ota"
_FLOOR = "min_version.json"


class BadVersion(UpdateError):
    """A version (or min_version) that is not a semantic version."""


def parse(v):
    """(major, minor, patch, pre-release identifiers or None); BadVersion when unreadable."""
    if not isinstance(v, str) or not v:
        raise BadVersion("version %r is not a semantic version" % (v,))
    core = v.split("+", 1)[0]
    pre = None
    if "-" in core:
        core, tail = core.split("-", 1)
        pre = tail.split(".")
        for p in pre:
            if not p or (p.isdigit() and len(p) > 1 and p[0] == "0"):
                raise BadVersion("version %r: bad pre-release %r" % (v, tail))
    nums = core.split(".")
    if not 1 <= len(nums) <= 3:
        raise BadVersion("version %r is not a semantic version" % v)
    out = []
    for n in nums:
        if not n.isdigit():
            raise BadVersion("version %r is not a semantic version" % v)
        out.append(int(n))
    while len(out) < 3:
        out.append(0)
    return out[0], out[1], out[2], pre


def _cmp(a, b):
    return (a > b) - (a < b)


def _cmp_pre(a, b):
    if a is None or b is None:  # a release ranks above any of its pre-releases
        return (a is None) - (b is None)
    for x, y in zip(a, b):
        xd, yd = x.isdigit(), y.isdigit()
        if xd and yd:
            c = _cmp(int(x), int(y))
        elif xd != yd:
            c = -1 if xd else 1  # numeric identifiers rank below alphanumeric ones
        else:
            c = _cmp(x, y)
        if c:
            return c
    return _cmp(len(a), len(b))


def compare(a, b):
    """-1, 0 or 1 as version a is older than, equal to or newer than b."""
    pa, pb = parse(a), parse(b)
    return _cmp(pa[:3], pb[:3]) or _cmp_pre(pa[3], pb[3])


def _floors(root):
    try:
        with open(slots.path(root, "ota", _FLOOR)) as f:
            st = json.load(f)
    except (OSError, ValueError):
        return {}
    return st if isinstance(st, dict) else {}


def floor(root, kind="app"):
    """The minimum secure version of `kind` ("app" bundles or "image"s, two version lines),
    or None while no manifest set one."""
    v = _floors(root).get(kind)
    try:
        parse(v)
    except BadVersion:
        return None
    return v


def raise_floor(root, v, kind="app"):
    """Move the minimum secure version of `kind` up to v (never down); replaced atomically."""
    if v is None:
        return
    cur = floor(root, kind)
    if cur is not None and compare(v, cur) <= 0:
        return
    st = _floors(root)
    st[kind] = v
    try:
        os.mkdir(slots.path(root, "ota"))
    except OSError:  # exists
        pass
    statefile.write_json(slots.path(root, "ota", _FLOOR), st)
    log.info(_TAG, "minimum secure %s version now %s", kind, v)


def newer(version, running):
    """True when `version` is newer than `running` (a running version that is not semantic,
    such as a pre-semver build, ranks below every semantic one)."""
    try:
        parse(running)
    except BadVersion:
        return True
    return compare(version, running) > 0


def check(root, running, manifest, kind="app"):
    """Raise Downgrade (or BadVersion) unless the signed `manifest` may replace `running`.
    Returns the minimum secure version to keep once it is staged (None: unchanged)."""
    v = manifest.get("version")
    parse(v)
    rollback = manifest.get("rollback", False)
    if not isinstance(rollback, bool):
        raise BadVersion("manifest rollback must be true or false")
    least = manifest.get("min_version")
    if least is not None:
        parse(least)
        if compare(least, v) > 0:
            raise BadVersion("manifest min_version %s is above its version %s" % (least, v))
    fl = floor(root, kind)
    if fl is not None and compare(v, fl) < 0:
        raise Downgrade("%s is below the minimum secure version %s" % (v, fl))
    if rollback:
        log.warn(_TAG, "signed rollback from %s to %s", running, v)
    elif not newer(v, running):
        raise Downgrade("%s is not newer than the running %s (a rollback must be signed as "
                        "one)" % (v, running))
    return least
