"""Loads and validates `config.json` from the data root, reporting every problem at once.

`load()` returns a `Config` or raises `ConfigError` whose `problems` are one line each, naming
the key and the fix; a bad config never half-starts the firmware. Unknown keys are warnings.
Every secret in the file is registered with log.secret() before anything can log it.
The checks live in firmware/config_check.py, loaded for the check and dropped after it.

Secrets can live in their own file: `"secrets_file": "secrets.json"` in config.json names a
JSON object of the same shape (e.g. `{"cloud": {"client_secret": ...}, "wifi": {...}}`) that
is merged over config.json before the checks. Every string in it except a Wi-Fi network name
is registered with log.secret(), so none reaches a log line; config.json can then be shared.

`Config` is the parsed dict with defaults filled in: `cfg.get("cloud.platform")` reads a dotted
path, `cfg.raw` is the dict, `cfg.root` the data root and `cfg.ca_path` the CA file's full path.
"""
import json
import os
import sys

from firmware.config_types import (  # noqa: F401  (config.X is the public name)
    FILE,
    SECRETS_FILE,
    SECRETS_KEY,
    Config,
    ConfigError,
    join,
)


def data_root():
    """Where config.json and all persisted state live: `/` on the board, `FIRMWARE_ROOT`
    (default: the current directory) on the host."""
    if sys.platform == "esp32":
        return "/"
    getenv = getattr(os, "getenv", None)
    return (getenv("FIRMWARE_ROOT") if getenv else None) or "."


def load(root=None):
    """Read, validate and return the Config; raises ConfigError listing every problem."""
    root = data_root() if root is None else root
    path = join(root, FILE)
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        raise ConfigError(["%s: not found in the data root %r; copy one from examples/" %
                           (FILE, root)])
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise ConfigError(["%s: not valid JSON (%s); check quotes, commas and braces" %
                           (FILE, e)])
    merge_secrets(raw, root)
    return validate(raw, root)


def merge_secrets(raw, root, path=None):
    """Merge the file config.json's `secrets_file` names over raw (in place), registering its
    values as secrets first; ConfigError when it is named but missing or not a JSON object.
    `path` reads the file from elsewhere (the host copy `make provision` sends). The code is
    firmware/config_check.py's, loaded for this and forgotten after (start-up only)."""
    from firmware import config_check
    try:
        config_check.merge_secrets(raw, root, path)
    finally:
        unload("firmware.config_check")


def validate(raw, root="."):
    """Check raw (the parsed JSON) and fill in defaults; returns the Config or raises
    ConfigError. The validator is loaded for this and forgotten after (start-up only)."""
    from firmware import config_check
    try:
        return config_check.validate(raw, root)
    finally:
        unload("firmware.config_check")


def unload(name):
    """Drop a start-up-only module (this validator, the board factory) from sys.modules and
    its package, so the GC can free its code and tables once nothing else refers to them."""
    sys.modules.pop(name, None)
    parent, _, leaf = name.rpartition(".")
    pkg = sys.modules.get(parent)
    if pkg is not None and hasattr(pkg, leaf):
        delattr(pkg, leaf)
