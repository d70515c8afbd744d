"""`make deploy` and `make provision`: put the build and the config on a board with mpremote.

deploy: asks the board for the SHA-256 of every file the build holds (computed there with
`hashlib`, over one `mpremote exec`), copies only the files that differ, removes files under
`firmware/` that the build no longer has (and a `.py` that would shadow a deployed `.mpy`),
then resets the board so boot.py and main.py start the new code. Copying also clears the
safe-mode boot count (firmware.safemode.healthy): the new code gets a fresh start.

provision: validates the config on the host with `firmware.config.validate` first; a bad
config prints one line per problem, exits 1 and copies nothing. A good one goes to the board
as `config.json`, with the CA files its `cloud.ca_file` and `ota.ca_file` name (relative to
the config's directory on the host, to the data root `/` on the board), the secrets file its
`secrets_file` names (`--secrets` on the host, default: that name next to the config; never
printed) and `ota_public_key.bin` when one lies next to the config (or `--ota-key`), then the
board resets.

    python -m tools.deploy deploy --port /dev/ttyUSB0 [--build build/xtensawin] [--no-reset]
    python -m tools.deploy provision --port /dev/ttyUSB0 --config path/config.json
                                     [--secrets path/secrets.json] [--ota-key keys/...bin]
    python -m tools.deploy check-config path/config.json [--secrets path/secrets.json]
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPREMOTE = os.path.join(ROOT, ".venv", "bin", "mpremote")
BUILD_MANIFEST = ".build.json"
OTA_KEY = "ota_public_key.bin"  # provisioned with the config when it lies next to it
OWNED = "firmware"  # the build owns this directory on the board: anything else there is stale

# Runs on the board: prints `H path hex` (or `H path -` when missing) for each wanted path,
# and `F path` for each file under the owned directory and lib/.
_SURVEY = """\
import os, hashlib, binascii
def _h(p):
    try:
        f = open(p, "rb")
    except OSError:
        return "-"
    h = hashlib.sha256()
    b = bytearray(1024)
    m = memoryview(b)
    while True:
        n = f.readinto(b)
        if not n:
            break
        h.update(m[:n])
    f.close()
    return binascii.hexlify(h.digest()).decode()
def _w(d):
    try:
        es = list(os.ilistdir(d))
    except OSError:
        return
    for e in es:
        p = d + "/" + e[0]
        if e[1] & 0x4000:
            _w(p)
        else:
            print("F", p)
for _p in %(paths)r:
    print("H", _p, _h(_p))
for _d in %(dirs)r:
    _w(_d)
"""

# Runs on the board before copying: create directories, remove stale files.
_PREPARE = """\
import os
for _d in %(dirs)r:
    try:
        os.mkdir(_d)
    except OSError:
        pass
for _f in %(remove)r:
    try:
        os.remove(_f)
    except OSError:
        pass
"""


# Runs on the board after copying: the operator just installed code or config, so earlier
# crashed boots no longer count toward safe mode (each mpremote session's soft reset runs
# boot.py, which counts a boot; a board in safe mode could otherwise never leave it).
_FRESH_START = """\
try:
    from firmware import safemode
    safemode.healthy("")
except Exception:
    pass
"""


class DeployError(Exception):
    """mpremote failed, or the board answered something unexpected."""


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def local_files(build):
    """{board path: host path} for every file in the build directory."""
    files = {}
    for dirpath, dirnames, names in os.walk(build):
        dirnames.sort()
        for n in sorted(names):
            if n.startswith(BUILD_MANIFEST):
                continue
            host = os.path.join(dirpath, n)
            files[os.path.relpath(host, build).replace(os.sep, "/")] = host
    return files


def mpremote(port, *commands, timeout=120):
    """Run `mpremote connect PORT <commands>`; returns stdout; DeployError on failure."""
    cmd = [MPREMOTE, "connect", port, *commands]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise DeployError("mpremote not found at %s; run `make deps`" % MPREMOTE)
    except subprocess.TimeoutExpired:
        raise DeployError("mpremote did not finish within %d s on %s" % (timeout, port))
    if proc.returncode != 0:
        raise DeployError("mpremote failed on %s (exit %d): %s" % (
            port, proc.returncode, (proc.stderr or proc.stdout).strip()[-800:]))
    return proc.stdout


def survey(port, paths, dirs):
    """Ask the board: ({path: sha256 hex or None}, [files under dirs])."""
    out = mpremote(port, "exec", _SURVEY % {"paths": sorted(paths), "dirs": list(dirs)})
    hashes, files = {}, []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "H":
            hashes[parts[1]] = None if parts[2] == "-" else parts[2]
        elif len(parts) == 2 and parts[0] == "F":
            files.append(parts[1])
    missing = set(paths) - set(hashes)
    if missing:
        raise DeployError("the board did not report hashes for %s; output was: %s" % (
            ", ".join(sorted(missing)), out.strip()[-400:]))
    return hashes, files


def plan(local, board_hashes, board_files):
    """(paths to copy, board paths to remove): copy what differs; remove files in the owned
    directory the build lacks, and any .py next to a deployed .mpy (MicroPython would import
    the .py first)."""
    copy = [p for p in sorted(local) if board_hashes.get(p) != sha256_file(local[p])]
    shadows = {p[:-4] + ".py" for p in local if p.endswith(".mpy")}
    remove = sorted(f for f in board_files if f not in local and
                    (f.startswith(OWNED + "/") or f in shadows))
    # boot.py and main.py last: a deploy cut halfway never boots new entry points on old code
    copy.sort(key=lambda p: (p in ("boot.py", "main.py"), p))
    return copy, remove


def _dirs_for(paths):
    dirs = set()
    for p in paths:
        parts = p.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    return sorted(dirs, key=lambda d: (d.count("/"), d))


def push(port, files, remove=(), reset=True):
    """Copy {board path: host path} and remove `remove` in one mpremote session, then reset."""
    commands = ["exec", _PREPARE % {"dirs": _dirs_for(files), "remove": list(remove)}]
    for board_path, host_path in files.items():
        commands += ["+", "fs", "cp", "--force", host_path, ":" + board_path]
    commands += ["+", "exec", _FRESH_START]
    if reset:
        commands += ["+", "reset"]
    mpremote(port, *commands)


def deploy(port, build, reset=True, say=print):
    if not os.path.isfile(os.path.join(build, BUILD_MANIFEST)):
        raise DeployError("%s is not a build (no %s); run `make build` first" % (
            build, BUILD_MANIFEST))
    local = local_files(build)
    hashes, board_files = survey(port, local, [OWNED, "lib"])
    copy, remove = plan(local, hashes, board_files)
    size = sum(os.path.getsize(local[p]) for p in copy)
    if copy or remove:
        push(port, {p: local[p] for p in copy}, remove, reset=reset)
    elif reset:
        mpremote(port, "exec", _FRESH_START, "+", "reset")
    for p in copy:
        say("  copied  %s" % p)
    for p in remove:
        say("  removed %s" % p)
    say("deploy: %d of %d files changed (%d bytes copied)%s" % (
        len(copy), len(local), size, ", %d stale removed" % len(remove) if remove else ""))
    if reset:
        say("deploy: board reset")
    return copy, remove


def check_config(path, secrets=None):
    """Validate a config file (merged with its secrets file, or `secrets`) on the host as the
    firmware would: (problems, warnings)."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from tools import cpython_compat  # the MicroPython APIs firmware code uses, on CPython

    cpython_compat.install()
    from firmware import config, log

    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        return ["%s: cannot read (%s)" % (path, e.strerror)], []
    try:
        raw = json.loads(text)
    except ValueError as e:
        return ["%s: not valid JSON (%s); check quotes, commas and braces" % (path, e)], []
    logged: list = []
    log.set_sink(logged.append)  # warnings come back in Config.warnings; keep stdout clean
    try:
        here = os.path.dirname(os.path.abspath(path))
        config.merge_secrets(raw, here, secrets)
        cfg = config.validate(raw, here)
    except config.ConfigError as e:
        # the validator registered every secret in the file: no problem line may show one
        return [log.redact(p) for p in e.problems], []
    finally:
        log.set_sink(None)
    return [], [log.redact(w) for w in cfg.warnings]


def provision(port, path, reset=True, say=print, secrets=None, ota_key=None):
    problems, warnings = check_config(path, secrets)
    for w in warnings:
        say("warning: %s" % w)
    if problems and all(p.startswith(("wifi: missing", "wifi.ssid: missing")) for p in problems):
        # Wi-Fi can follow over the serial port (Improv): the board waits for it
        say("provision: no Wi-Fi yet; the board will wait for `make wifi PORT=%s SSID=...`"
            % port)
        problems = []
    if problems:
        for p in problems:
            print(p, file=sys.stderr)
        print("provision: %d problem%s in %s; nothing copied" % (
            len(problems), "" if len(problems) == 1 else "s", path), file=sys.stderr)
        return False
    with open(path) as f:
        raw = json.load(f)
    here = os.path.dirname(os.path.abspath(path))
    files = {"config.json": path}
    ota = raw.get("ota") if isinstance(raw.get("ota"), dict) else {}
    for ca in (raw.get("cloud", {}).get("ca_file"), ota.get("ca_file")):
        if ca:  # the cloud's CA and the OTA server's (make ota-serve), when it has its own
            files[ca.lstrip("/")] = os.path.join(here, ca)
    name = raw.get("secrets_file")
    if name:
        files[name.lstrip("/")] = secrets or os.path.join(here, name)
    ota_key = ota_key if ota_key and ota_key != "none" else os.path.join(here, OTA_KEY)
    if os.path.isfile(ota_key):  # the OTA signing key's public half
        files[OTA_KEY] = ota_key
    push(port, files, reset=reset)
    for board_path in files:
        say("  copied  %s" % board_path)
    say("provision: config valid, %d file%s copied%s" % (
        len(files), "" if len(files) == 1 else "s", ", board reset" if reset else ""))
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("deploy", help="copy the changed build files, then reset")
    d.add_argument("--port", required=True)
    d.add_argument("--build", default=os.path.join(ROOT, "build", "xtensawin"))
    d.add_argument("--no-reset", action="store_true")
    p = sub.add_parser("provision", help="validate a config, copy it and its CA, then reset")
    p.add_argument("--port", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--secrets", help="the secrets file to send (default: the config's "
                   "secrets_file next to it)")
    p.add_argument("--ota-key", help="the OTA public key to send (default or `none`: %s "
                   "next to the config, when there is one)" % OTA_KEY)
    p.add_argument("--no-reset", action="store_true")
    c = sub.add_parser("check-config", help="validate a config on the host only")
    c.add_argument("config")
    c.add_argument("--secrets")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "deploy":
            deploy(a.port, os.path.abspath(a.build), reset=not a.no_reset)
        elif a.cmd == "provision":
            return 0 if provision(a.port, a.config, reset=not a.no_reset, secrets=a.secrets,
                                  ota_key=a.ota_key) else 1
        else:
            problems, warnings = check_config(a.config, a.secrets)
            for w in warnings:
                print("warning: %s" % w)
            for line in problems:
                print(line, file=sys.stderr)
            n = len(problems)
            print("%s: %s" % (a.config, "ok" if not n else
                              "%d problem%s" % (n, "" if n == 1 else "s")))
            return 1 if problems else 0
    except DeployError as e:
        print("%s: %s" % (a.cmd, e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
