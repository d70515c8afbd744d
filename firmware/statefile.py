"""State files: every file the firmware keeps across resets (registrations, counters, OTA
state) is replaced whole, never edited in place: the new content goes to `<path>.tmp`, which
is then renamed over the old file. LittleFS and POSIX rename atomically, so a power cut
leaves the old file or the new one, never half of either. (The outbox has its own journal:
firmware/outbox.py.)
"""
import json
import os


def write(path, data):
    """Replace the file at `path` with `data` (str or bytes)."""
    tmp = path + ".tmp"
    with open(tmp, "wb" if isinstance(data, (bytes, bytearray)) else "w") as f:
        f.write(data)
    os.rename(tmp, path)


def write_json(path, value):
    """Replace the file at `path` with `value` as JSON (streamed: no string of it in RAM)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.rename(tmp, path)
