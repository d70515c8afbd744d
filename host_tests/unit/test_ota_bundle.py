"""OTA bundle framing, signature check and streaming extraction, on both runtimes.

Bundles are built here with the test-only RFC 8032 signer from test_ed25519 (the device has
no signer); tools/ota_tool.py with the `cryptography` package is covered by the system test.
"""
import hashlib
import json
import os
import struct

from test_ed25519 import public_key, sign

import support
from firmware.ota import bundle as ota_bundle

SEED = bytes(range(32))
OTHER_SEED = bytes(range(1, 33))
_keys = {}


def pub(seed=SEED):
    if seed not in _keys:
        _keys[seed] = public_key(seed)[2]
    return _keys[seed]


def entry(path, data):
    return {"path": path, "size": len(data), "sha256": hashlib.sha256(data).digest().hex()}


def frame(manifest_bytes, signature, payloads):
    return b"".join([ota_bundle.MAGIC, struct.pack("<I", len(manifest_bytes)), manifest_bytes,
                     signature] + list(payloads))


def make_bundle(files, seed=SEED, manifest=None, version="1.2.3"):
    if manifest is None:
        manifest = {"format": 1, "version": version,
                    "files": [entry(path, data) for path, data in files]}
    raw = json.dumps(manifest).encode()
    return frame(raw, sign(seed, raw), [data for _, data in files])


FILES = [
    ("main.py", b"import firmware.app\n"),
    ("firmware/app.mpy", bytes(i * 31 & 0xFF for i in range(3000))),
    ("firmware/net/empty.txt", b""),
    ("firmware/net/http.mpy", b"x" * 1024),
]


def write_file(path, data):
    with open(path, "wb") as f:
        f.write(data)


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def tree(root, prefix=""):
    out = []
    for name in sorted(os.listdir(root)):
        full = root + "/" + name
        if os.stat(full)[0] & 0x4000:
            out.extend(tree(full, prefix + name + "/"))
        else:
            out.append(prefix + name)
    return out


class Unseekable:
    """A stream that can only be read forward, like a socket."""

    def __init__(self, data):
        self._data = data
        self._pos = 0

    def read(self, n):
        out = self._data[self._pos:self._pos + n]
        self._pos += len(out)
        return out

    def readinto(self, buf):
        n = min(len(buf), len(self._data) - self._pos)
        buf[:n] = self._data[self._pos:self._pos + n]
        self._pos += n
        return n


def with_bundle(data, fn):
    d = support.tmpdir("ota")
    try:
        write_file(d + "/bundle.bin", data)
        os.mkdir(d + "/out")
        with open(d + "/bundle.bin", "rb") as f:
            return fn(f, d + "/out")
    finally:
        support.rmtree(d)


def read_and_extract(data, key=None, chunk=1024):
    def go(f, out):
        manifest, offset = ota_bundle.read_manifest(f, key or pub())
        try:
            done = ota_bundle.extract(f, manifest, out, chunk=chunk)
        finally:
            got = {p: read_file(out + "/" + p) for p in tree(out)}
        return manifest, offset, done, got
    return with_bundle(data, go)


def test_round_trip_extracts_every_file():
    data = make_bundle(FILES)
    for chunk in (1024, 7, 4096):
        manifest, offset, done, got = read_and_extract(data, chunk=chunk)
        assert manifest["version"] == "1.2.3"
        assert [e["path"] for e in manifest["files"]] == [p for p, _ in FILES]
        assert done == [p for p, _ in FILES]
        assert got == dict(FILES)
        assert offset == len(data) - sum(len(b) for _, b in FILES)


def test_extract_can_seek_to_the_offset():
    data = make_bundle(FILES)

    def go(f, out):
        manifest, offset = ota_bundle.read_manifest(f, pub())
        f.seek(0)
        ota_bundle.extract(f, manifest, out, offset=offset)
        return tree(out)
    assert with_bundle(data, go) == sorted(p for p, _ in FILES)


def test_wrong_key_is_bad_signature():
    data = make_bundle(FILES)
    e = support.raises(ota_bundle.BadSignature, read_and_extract, data, pub(OTHER_SEED))
    assert "signature" in str(e)
    assert isinstance(e, ota_bundle.BundleError)


def test_tampered_manifest_or_signature_is_bad_signature():
    data = make_bundle(FILES)
    size = struct.unpack("<I", data[4:8])[0]
    for pos in (8, 8 + size // 2, 8 + size - 1, 8 + size, 8 + size + 63):
        bad = bytearray(data)
        bad[pos] ^= 0x01
        support.raises(ota_bundle.BadSignature, read_and_extract, bytes(bad))


def test_signed_by_other_key_with_valid_structure_is_refused():
    data = make_bundle(FILES, seed=OTHER_SEED)
    support.raises(ota_bundle.BadSignature, read_and_extract, data)
    read_and_extract(data, pub(OTHER_SEED))


def test_tampered_payload_is_bad_hash_and_leaves_nothing():
    data = make_bundle(FILES)
    # The last byte belongs to the last file; earlier files were already extracted by then.
    for pos in (len(data) - 1, len(data) - 1024 - 1):
        bad = bytearray(data)
        bad[pos] ^= 0x40

        def go(f, out):
            manifest, _ = ota_bundle.read_manifest(f, pub())
            e = support.raises(ota_bundle.BadHash, ota_bundle.extract, f, manifest, out)
            assert "firmware/" in str(e)
            return tree(out) + os.listdir(out)
        assert with_bundle(bytes(bad), go) == []


def test_truncated_anywhere_is_truncated():
    data = make_bundle(FILES)
    size = struct.unpack("<I", data[4:8])[0]
    for cut in (0, 3, 7, 8, 8 + size - 1, 8 + size + 10, 8 + size + 64, len(data) - 1):
        support.raises(ota_bundle.Truncated, read_and_extract, data[:cut])


def test_truncated_payload_on_a_forward_only_stream_removes_output():
    data = make_bundle(FILES)
    d = support.tmpdir("ota")
    try:
        for cut in (len(data) - 1, len(data) - 2000):
            f = Unseekable(data[:cut])
            manifest, _ = ota_bundle.read_manifest(f, pub())
            support.raises(ota_bundle.Truncated, ota_bundle.extract, f, manifest, d)
            assert os.listdir(d) == []
    finally:
        support.rmtree(d)


def test_trailing_bytes_are_bad_size():
    data = make_bundle(FILES) + b"\x00"
    e = support.raises(ota_bundle.BadSize, read_and_extract, data)
    assert "after the last payload" in str(e)
    d = support.tmpdir("ota")
    try:
        f = Unseekable(data)
        manifest, _ = ota_bundle.read_manifest(f, pub())
        support.raises(ota_bundle.BadSize, ota_bundle.extract, f, manifest, d)
        assert os.listdir(d) == []
    finally:
        support.rmtree(d)


def test_not_a_bundle_is_bad_manifest():
    data = make_bundle(FILES)
    support.raises(ota_bundle.BadManifest, read_and_extract, b"PK\x03\x04" + data[4:])
    huge = data[:4] + struct.pack("<I", 1 << 20) + data[8:]
    e = support.raises(ota_bundle.BadManifest, read_and_extract, huge)
    assert "manifest length" in str(e)


def test_path_traversal_and_odd_paths_are_refused():
    d = support.tmpdir("ota")
    try:
        for path in ("../evil.py", "/etc/evil", "a/../../evil", "a//b", "./a", "a/.", "",
                     "a\\..\\b", "a/b\x00", "ümlaut.py", "x" * 200, ".."):
            manifest = {"format": 1, "version": "1.0.0", "files": [entry(path, b"pwn")]}
            data = make_bundle([(path, b"pwn")], manifest=manifest)
            e = support.raises(ota_bundle.BadManifest, read_and_extract, data)
            assert "path" in str(e), path
            support.raises(ota_bundle.BadManifest, ota_bundle.safe_path, path)
            # extract() re-checks paths even when handed an unverified manifest
            support.raises(ota_bundle.BadManifest, ota_bundle.extract,
                           Unseekable(b"pwn"), manifest, d)
        assert os.listdir(d) == []
        assert ota_bundle.safe_path("firmware/net/http.mpy") == "firmware/net/http.mpy"
    finally:
        support.rmtree(d)


def test_manifest_rule_violations_are_bad_manifest():
    good = entry("a.py", b"a")
    cases = [
        {"format": 2, "version": "1.0", "files": [good]},
        {"format": True, "version": "1.0", "files": [good]},
        {"version": "1.0", "files": [good]},
        {"format": 1, "files": [good]},
        {"format": 1, "version": "1.0 beta", "files": [good]},
        {"format": 1, "version": "1.0", "files": []},
        {"format": 1, "version": "1.0", "files": "a.py"},
        {"format": 1, "version": "1.0", "files": [dict(good, size=-1)]},
        {"format": 1, "version": "1.0", "files": [dict(good, size=True)]},
        {"format": 1, "version": "1.0", "files": [dict(good, size="1")]},
        {"format": 1, "version": "1.0", "files": [dict(good, sha256=good["sha256"].upper())]},
        {"format": 1, "version": "1.0", "files": [dict(good, sha256=good["sha256"][:-1])]},
        {"format": 1, "version": "1.0", "files": [good, good]},
        {"format": 1, "version": "1.0", "files": [good, entry("a.py/b.py", b"b")]},
        [good],
    ]
    for manifest in cases:
        data = make_bundle([("a.py", b"a"), ("a.py/b.py", b"b")], manifest=manifest)
        support.raises(ota_bundle.BadManifest, read_and_extract, data)
    raw = b"{not json"
    support.raises(ota_bundle.BadManifest, read_and_extract, frame(raw, sign(SEED, raw), []))


def test_payload_total_over_limit_is_bad_size():
    data = make_bundle(FILES)

    def go(f, out):
        return ota_bundle.read_manifest(f, pub(), max_total=4000)
    e = support.raises(ota_bundle.BadSize, with_bundle, data, go)
    assert "limit 4000" in str(e)
