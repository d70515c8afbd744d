"""A/B app slots and the OTA state file: which app directory boot.py starts, trial boots,
confirmation and rollback. Read at every boot, so it is tiny and imports only os and json.

Data root layout (docs/ota.md):

    firmware/          factory app, flashed by cable; never written by OTA (always bootable)
    ota/state.json     this module's state, replaced by write-temp-then-rename
    ota/a/, ota/b/     app slots: each holds a bundle's files (firmware/..., lib/...)

boot.py imports this module from the factory `firmware/` before it puts a slot first on
sys.path, and keeps this module loaded, so the state file is always handled by factory code.
State: {"active": "a"|"b"|null, "pending": "a"|"b"|null, "tries": n, "trials": N,
"versions": {slot: version}, "failed": null | {"version", "reason"}}. `active` is the last
confirmed slot (null: factory). `pending` is a slot installed and not yet confirmed: boot.py
starts it on trial, counting boots; the app calls confirm() once the cloud has accepted data
again. A crash on trial (main.py calls fail()) or more than `trials` boots without a confirm
returns to `active` and records the failed version for the app to report.
"""
import json
import os

from firmware import statefile

SLOTS = ("a", "b")
_DIR = "ota"
_STATE = "state.json"
_TRIALS = 2  # safe mode counts crashed boots too (limit 3): roll back before it triggers

_FRESH: dict = {"active": None, "pending": None, "tries": 0, "trials": _TRIALS, "versions": {},
          "failed": None}


def path(root, *parts):
    base = "" if root in ("", ".") else root.rstrip("/") + "/"
    return base + "/".join(parts)


def slot_dir(root, slot):
    return path(root, _DIR, slot)


def _mkdir(p):
    try:
        os.mkdir(p)
    except OSError:  # exists
        pass


def load(root):
    """The state; a missing or unreadable file is a fresh board (factory app, nothing pending)."""
    st = dict(_FRESH)
    st["versions"] = {}
    try:
        with open(path(root, _DIR, _STATE)) as f:
            raw = json.load(f)
    except (OSError, ValueError):
        return st
    if not isinstance(raw, dict):
        return st
    for key in ("active", "pending"):
        if raw.get(key) in SLOTS:
            st[key] = raw[key]
    for key in ("tries", "trials"):
        v = raw.get(key)
        if isinstance(v, int) and v >= 0:
            st[key] = v
    if isinstance(raw.get("versions"), dict):
        st["versions"] = raw["versions"]
    if isinstance(raw.get("failed"), dict):
        st["failed"] = raw["failed"]
    if st["pending"] == st["active"]:
        st["pending"] = None
    return st


def save(root, st):
    """Replace the state file atomically (rename over the old one: LittleFS and POSIX keep
    either the old or the new file across a power cut)."""
    _mkdir(path(root, _DIR))
    statefile.write_json(path(root, _DIR, _STATE), st)


def _fail(st, reason):
    st["failed"] = {"version": st["versions"].get(st["pending"]), "reason": reason}
    st["pending"] = None
    st["tries"] = 0


def choose(root):
    """Called by boot.py once per boot: returns (slot directory or None for the factory app,
    what happened as a short line or None). Counts a trial boot before it starts it, and rolls
    back when the trial has used up its boots."""
    st = load(root)
    note = None
    if st["pending"]:
        if st["tries"] >= st["trials"]:
            version = st["versions"].get(st["pending"])
            _fail(st, "not confirmed after %d boots" % st["tries"])
            save(root, st)
            note = "rolled back from %s: not confirmed after %d boots" % (version, st["trials"])
        else:
            st["tries"] += 1
            save(root, st)
            return slot_dir(root, st["pending"]), "trial boot %d/%d of %s" % (
                st["tries"], st["trials"], st["versions"].get(st["pending"]))
    if st["active"]:
        return slot_dir(root, st["active"]), note
    return None, note


def on_trial(root):
    """The version being tried this boot, or None."""
    st = load(root)
    return st["versions"].get(st["pending"]) if st["pending"] else None


def running_version(root, factory="factory"):
    """The version boot.py starts unless a trial is pending (the confirmed one)."""
    st = load(root)
    return st["versions"].get(st["active"], factory) if st["active"] else factory


def confirm(root):
    """The trial works (the cloud accepted data): make it the active slot. Returns the
    confirmed version, or None when nothing was on trial."""
    st = load(root)
    slot = st["pending"]
    if not slot:
        return None
    st["active"] = slot
    st["pending"] = None
    st["tries"] = 0
    save(root, st)
    return st["versions"].get(slot)


def fail(root, reason):
    """The trial crashed: go back to the active slot at the next boot. Returns the failed
    version, or None when nothing was on trial."""
    st = load(root)
    if not st["pending"]:
        return None
    version = st["versions"].get(st["pending"])
    _fail(st, reason)
    save(root, st)
    return version


def inactive(root):
    """The slot an update may overwrite: neither the active one nor one on trial."""
    st = load(root)
    if st["pending"]:
        return None
    return "b" if st["active"] == "a" else "a"


def stage(root, slot, version, trials=_TRIALS):
    """Switch: the next boot tries `slot` (already unpacked and verified) as `version`."""
    st = load(root)
    st["versions"][slot] = version
    st["pending"] = slot
    st["tries"] = 0
    st["trials"] = trials
    save(root, st)


def failure(root):
    """The last failed update ({"version", "reason"}) not yet cleared, or None."""
    return load(root)["failed"]


def clear_failure(root):
    st = load(root)
    if st["failed"] is not None:
        st["failed"] = None
        save(root, st)


def image_pending(root):
    """The firmware image version set to boot and not yet confirmed, or None: read from
    ota/image.json (firmware/ota/image.py writes it) without loading the image code."""
    try:
        with open(path(root, _DIR, "image.json")) as f:
            st = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(st, dict) or st.get("failed"):
        return None
    return st.get("pending")
