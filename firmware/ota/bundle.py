"""Signed OTA bundles on the device: framing, manifest verification, streaming extraction.

A bundle is one file, read from flash in fixed chunks (never whole in RAM):

    b"FWB1"                 magic
    u32 little-endian       manifest length, 2.._MAX_MANIFEST bytes
    manifest                UTF-8 JSON: {"format": 1, "version": "1.2.3",
                              "files": [{"path": "firmware/app.mpy", "size": N,
                                         "sha256": "<64 lowercase hex>"}, ...]}
    signature               64 bytes, Ed25519 over exactly the manifest bytes
    payloads                each file's bytes, concatenated in manifest order, nothing after

`read_manifest` checks the signature before it parses or trusts a byte of the manifest, then
validates it (paths are relative, made of [A-Za-z0-9._-] components, no "." or ".."). Only the
signature binds the payloads: their sizes and SHA-256 sums are in the signed manifest, and
`extract` checks each while it streams, removing everything it wrote if anything is wrong.
tools/ota_tool.py builds and signs bundles on the host.
"""
import hashlib
import json
import os
import struct

from micropython import const

from firmware.ota import ed25519

MAGIC = b"FWB1"
FORMAT = 1
_HEADER = const(8)
_SIG = const(64)
_MAX_MANIFEST = const(8192)
_MAX_FILES = const(256)
_MAX_PATH = const(128)
_MAX_TOTAL = const(4 * 1024 * 1024)  # a whole ESP32 flash; more is certainly wrong
_CHUNK = const(1024)
_PATH_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
_VERSION_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.+-"
_HEX = "0123456789abcdef"


class BundleError(Exception):
    """Base of every reason a bundle is refused."""


class BadSignature(BundleError):
    """The manifest is not signed by the given key."""


class BadManifest(BundleError):
    """Not a bundle, or a signed manifest that breaks the format rules."""


class BadHash(BundleError):
    """A payload's SHA-256 differs from its manifest entry."""


class BadSize(BundleError):
    """Sizes do not add up: trailing bytes after the last payload, or over the size limit."""


class Truncated(BundleError):
    """The bundle ends before the header, manifest, signature or a payload does."""


def _read_exact(f, n):
    data = f.read(n)
    if data is None or len(data) != n:
        raise Truncated("bundle ends inside its manifest or signature")
    return data


# Bytes left from the current position, or None for a stream that cannot seek.
def _remaining(f):
    try:
        here = f.tell()
        end = f.seek(0, 2)
        f.seek(here)
    except (AttributeError, OSError):
        return None
    if end is None:
        return None
    return end - here


def safe_path(path):
    """Return `path` if it is a safe relative bundle path, else raise BadManifest."""
    if not isinstance(path, str) or not 0 < len(path) <= _MAX_PATH:
        raise BadManifest("path must be a string of 1..%d characters" % _MAX_PATH)
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise BadManifest("unsafe path %r" % path)
        for ch in part:
            if ch not in _PATH_CHARS:
                raise BadManifest("unsafe path %r" % path)
    return path


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _check_manifest(m, max_total):
    if not isinstance(m, dict):
        raise BadManifest("manifest is not an object")
    if not _is_int(m.get("format")) or m["format"] != FORMAT:
        raise BadManifest("unsupported format %r" % (m.get("format"),))
    version = m.get("version")
    if not isinstance(version, str) or not 0 < len(version) <= 32 or \
            any(ch not in _VERSION_CHARS for ch in version):
        raise BadManifest("bad version %r" % (version,))
    files = m.get("files")
    if not isinstance(files, list) or not 0 < len(files) <= _MAX_FILES:
        raise BadManifest("files must be a list of 1..%d entries" % _MAX_FILES)
    total = 0
    seen = set()
    for entry in files:
        if not isinstance(entry, dict):
            raise BadManifest("file entry is not an object")
        path = safe_path(entry.get("path"))
        size = entry.get("size", -1)
        digest = entry.get("sha256")
        if not _is_int(size) or size < 0:
            raise BadManifest("bad size for %s" % path)
        if not isinstance(digest, str) or len(digest) != 64 or \
                any(ch not in _HEX for ch in digest):
            raise BadManifest("bad sha256 for %s" % path)
        if path in seen:
            raise BadManifest("duplicate path %s" % path)
        seen.add(path)
        total += size
    # A path that is also another path's directory could never be written.
    for path in seen:
        cut = path.rfind("/")
        while cut > 0:
            if path[:cut] in seen:
                raise BadManifest("%s is both a file and a directory" % path[:cut])
            cut = path.rfind("/", 0, cut)
    if total > max_total:
        raise BadSize("payloads total %d bytes, limit %d" % (total, max_total))
    return total


def read_manifest(f, public_key, max_total=_MAX_TOTAL):
    """Read and verify the bundle header from `f` (a binary stream at the bundle's start).

    Returns (manifest dict, payload offset) and leaves `f` at that offset. Raises
    BadManifest, BadSignature, BadSize or Truncated; the manifest is parsed only after its
    signature has verified with `public_key` (32 raw bytes)."""
    head = f.read(_HEADER)
    if head is None or len(head) < _HEADER:
        raise Truncated("bundle shorter than its header")
    if head[:4] != MAGIC:
        raise BadManifest("not an OTA bundle (magic %r)" % bytes(head[:4]))
    size = struct.unpack("<I", head[4:])[0]
    if not 2 <= size <= _MAX_MANIFEST:
        raise BadManifest("manifest length %d outside 2..%d" % (size, _MAX_MANIFEST))
    raw = _read_exact(f, size)
    sig = _read_exact(f, _SIG)
    try:
        ed25519.check(public_key, raw, sig)
    except ed25519.BadSignature as e:
        raise BadSignature("manifest signature: %s" % e)
    try:
        manifest = json.loads(raw.decode())
    except ValueError as e:  # also UnicodeError, a ValueError on both runtimes
        raise BadManifest("manifest is not JSON: %s" % e)
    total = _check_manifest(manifest, max_total)
    left = _remaining(f)
    if left is not None:
        if left < total:
            raise Truncated("payloads need %d bytes, bundle has %d" % (total, left))
        if left > total:
            raise BadSize("%d bytes after the last payload" % (left - total))
    return manifest, _HEADER + size + _SIG


def _makedirs(root, path, made):
    cut = path.find("/")
    while cut > 0:
        d = root + "/" + path[:cut]
        try:
            os.mkdir(d)
            made.append(d)
        except OSError:  # exists already (as a file, the open() after this fails)
            pass
        cut = path.find("/", cut + 1)


def _remove_all(files, dirs):
    for p in files:
        try:
            os.remove(p)
        except OSError:
            pass
    for d in reversed(dirs):
        try:
            os.rmdir(d)
        except OSError:
            pass


# Copies `size` bytes from f to out through buf, hashing them; Truncated if f ends first.
def _copy(f, out, buf, size, h):
    chunk = len(buf)
    while size:
        want = buf if size >= chunk else buf[:size]
        got = f.readinto(want)
        if not got:
            raise Truncated("bundle ends inside a payload")
        part = want if got == len(want) else want[:got]
        h.update(part)
        out.write(part)
        size -= got


def extract(f, manifest, dest_dir, chunk=_CHUNK, offset=None, progress=None):
    """Stream every payload of a verified bundle into `dest_dir`, an existing, empty staging
    directory (on failure this call removes what it wrote, which would include a file it
    replaced).

    `f` must be at the payload offset `read_manifest` returned (or pass `offset` to seek
    there). Each file goes to `<path>.part`, is hashed as it streams, and is renamed to
    `<path>` only when its SHA-256 matches. Any error (BadHash, Truncated, BadSize for
    trailing bytes, BadManifest, OSError) removes every file and directory this call created
    before it propagates. `progress(path)`, if given, is called after each file is in place.
    Returns the list of extracted paths, relative to dest_dir."""
    if chunk < 1:
        raise ValueError("chunk must be positive")
    if offset is not None:
        f.seek(offset)
    buf = memoryview(bytearray(chunk))
    written: list = []
    made: list = []
    done: list = []
    try:
        for entry in manifest["files"]:
            path = safe_path(entry["path"])
            target = dest_dir + "/" + path
            _makedirs(dest_dir, path, made)
            part = target + ".part"
            written.append(part)
            h = hashlib.sha256()
            with open(part, "wb") as out:
                _copy(f, out, buf, entry["size"], h)
            if h.digest() != bytes.fromhex(entry["sha256"]):
                raise BadHash("sha256 mismatch for %s" % path)
            os.rename(part, target)
            written[-1] = target
            done.append(path)
            if progress is not None:
                progress(path)
        if f.readinto(buf[:1]):
            raise BadSize("bytes after the last payload")
    except BaseException:
        _remove_all(written, made)
        raise
    return done
