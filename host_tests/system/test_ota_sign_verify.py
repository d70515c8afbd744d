"""Signatures made by the `cryptography` package (OpenSSL) verified by firmware/ota/ed25519.py on
the real MicroPython binary, and bundles built by tools/ota_tool.py checked and extracted by
firmware/ota/bundle.py under MicroPython: round trip, tampering, wrong key, truncation, paths.
"""
import json
import os
import struct
import subprocess
import sys

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.ota import ed25519
from tools import ota_tool

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MICROPYTHON = os.path.join(ROOT, ".venv", "bin", "micropython")
MP_PATH = ":".join([ROOT, os.path.join(ROOT, "host_tests", "shims"), os.path.join(ROOT, "lib"),
                    ".frozen"])
L = 2**252 + 27742317777372353535851937790883648493

VERIFY_SCRIPT = """
import gc, json, struct, sys
from firmware.ota import ed25519
out = []
# Binary records (pk 32, sig 64, u32 length, message): the 64K heap holds one case at a time.
# One buffer for every message, made while the heap is whole: a fresh 3 KB one per case
# sometimes found no room in the heap the bignum arithmetic had fragmented.
buf = bytearray(4096)
with open(sys.argv[1], "rb") as f:
    while True:
        head = f.read(100)
        if not head:
            break
        n = struct.unpack("<I", head[96:])[0]
        if n > len(buf):
            raise ValueError("message longer than the buffer: %d" % n)
        msg = memoryview(buf)[:n]
        f.readinto(msg)
        out.append(ed25519.verify(head[:32], msg, head[32:96]))
        gc.collect()
print(json.dumps(out))
"""

BUNDLE_SCRIPT = """
import json, sys
from firmware.ota import bundle as ota_bundle
bundle, pub, dest = sys.argv[1], sys.argv[2], sys.argv[3]
with open(pub, "rb") as f:
    key = f.read()
try:
    with open(bundle, "rb") as f:
        manifest, offset = ota_bundle.read_manifest(f, key)
        done = ota_bundle.extract(f, manifest, dest, chunk=512)
    print(json.dumps({"ok": True, "version": manifest["version"], "files": done}))
except ota_bundle.BundleError as e:
    print(json.dumps({"ok": False, "error": type(e).__name__, "msg": str(e)}))
"""


def run_mp(tmp_path, script, *args, heap="64K"):
    if not os.access(MICROPYTHON, os.X_OK):
        pytest.fail("MicroPython unix port missing at %s (run `make deps`)" % MICROPYTHON)
    path = tmp_path / "mp_script.py"
    path.write_text(script)
    env = dict(os.environ, MICROPYPATH=MP_PATH)
    done = subprocess.run([MICROPYTHON, "-X", "heapsize=" + heap, str(path)] + list(args),
                          capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def raw_pub(key):
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


def openssl_accepts(pk, msg, sig):
    try:
        Ed25519PublicKey.from_public_bytes(pk).verify(sig, msg)
        return True
    except (InvalidSignature, ValueError):
        return False


def flip(data, bit):
    b = bytearray(data)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


def test_rfc8032_vectors_are_transcribed_right():
    # The unit test's vectors, regenerated from their secret keys by OpenSSL.
    from test_ed25519 import VECTORS

    assert len(VECTORS) == 5
    for sk, pk, msg, sig in VECTORS:
        key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(sk))
        assert raw_pub(key).hex() == pk
        assert key.sign(bytes.fromhex(msg)).hex() == sig


def test_cryptography_signatures_and_mutations_agree_on_micropython(tmp_path):
    rng = __import__("random").Random(os.urandom(8))
    cases = []
    for i in range(24):
        key = Ed25519PrivateKey.generate()
        pk = raw_pub(key)
        msg = os.urandom(rng.choice((0, 1, 31, 64, 127, 128, 129, 1000, 3000)))
        sig = key.sign(msg)
        cases.append((pk, msg, sig))
        cases.append((pk, msg, flip(sig, rng.randrange(512))))
        cases.append((flip(pk, rng.randrange(256)), msg, sig))
        if msg:
            cases.append((pk, flip(msg, rng.randrange(len(msg) * 8)), sig))
        else:
            cases.append((pk, b"\x00", sig))
        s = int.from_bytes(sig[32:], "little")
        cases.append((pk, msg, sig[:32] + (s + L).to_bytes(32, "little")))
        if i == 0:
            cases.append((raw_pub(Ed25519PrivateKey.generate()), msg, sig))
    expected = [openssl_accepts(*c) for c in cases]
    assert expected.count(True) == 24  # every original, no mutation
    case_file = tmp_path / "cases.json"
    case_file.write_bytes(b"".join(pk + s + struct.pack("<I", len(m)) + m
                                   for pk, m, s in cases))
    got = run_mp(tmp_path, VERIFY_SCRIPT, str(case_file))
    assert len(got) == len(cases)
    mismatches = [(c[0].hex(), len(c[1]), c[2].hex(), e) for c, e, g in zip(cases, expected, got)
                  if e != g]
    assert not mismatches, mismatches
    # and the same module on CPython
    assert [ed25519.verify(*c) for c in cases] == expected


@settings(max_examples=60, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), msg=st.binary(max_size=300),
       where=st.sampled_from(["none", "sig", "msg", "pk"]), bit=st.integers(0, 511))
def test_matches_openssl_on_cpython(seed, msg, where, bit):
    key = Ed25519PrivateKey.from_private_bytes(seed)
    pk, sig = raw_pub(key), key.sign(msg)
    if where == "sig":
        sig = flip(sig, bit)
    elif where == "msg":
        msg = flip(msg, bit % (len(msg) * 8)) if msg else b"x"
    elif where == "pk":
        pk = flip(pk, bit % 256)
    assert ed25519.verify(pk, msg, sig) == openssl_accepts(pk, msg, sig)


# --- bundles built by the tool, read by the device code ----------------------------------

def tool(*args):
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "ota_tool.py")]
                          + [str(a) for a in args], capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout + done.stderr


def make_tree(root):
    files = {
        "main.py": b"import app.core\napp.core.run()\n",
        "app/__init__.py": b"",
        "app/core.py": b"def answer():\n    return 6 * 7\n\ndef run():\n    print(answer())\n",
        "app/data/table.bin": os.urandom(3000),
    }
    for rel, data in files.items():
        full = root / rel
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_bytes(data)
    return files


def keys(tmp_path, name="keys"):
    rc, out = tool("keygen", "--out", tmp_path / name)
    assert rc == 0, out
    return tmp_path / name / "ota_signing_key.pem", tmp_path / name / "ota_public_key.bin"


def build(tmp_path, key, *extra):
    src = tmp_path / "src"
    files = make_tree(src)
    out = tmp_path / "bundle.bin"
    rc, log = tool("build", "--version", "1.2.3", "--key", key, "--out", out, "--root", src,
                   "--src", src / "main.py", src / "app", *extra)
    assert rc == 0, log
    return files, out


def extract_on_mp(tmp_path, bundle, pub):
    dest = tmp_path / ("dest%d" % len(list(tmp_path.glob("dest*"))))
    dest.mkdir()
    return run_mp(tmp_path, BUNDLE_SCRIPT, str(bundle), str(pub), str(dest)), dest


def listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_tool_bundle_round_trip_on_micropython(tmp_path):
    key, pub = keys(tmp_path)
    assert oct(os.stat(key).st_mode & 0o777) == "0o600"
    files, bundle = build(tmp_path, key, "--no-compile")
    result, dest = extract_on_mp(tmp_path, bundle, pub)
    assert result["ok"], result
    assert result["version"] == "1.2.3"
    assert sorted(result["files"]) == sorted(files)
    assert {p: (dest / p).read_bytes() for p in listing(dest)} == files
    rc, out = tool("verify", "--pub", pub, "--bundle", bundle)
    assert rc == 0 and "1.2.3" in out, out


def test_compiled_bundle_runs_on_micropython(tmp_path):
    key, pub = keys(tmp_path)
    files, bundle = build(tmp_path, key)  # default: mpy-cross -march=xtensawin
    result, dest = extract_on_mp(tmp_path, bundle, pub)
    assert result["ok"], result
    assert sorted(result["files"]) == ["app/__init__.mpy", "app/core.mpy",
                                       "app/data/table.bin", "main.py"]
    assert (dest / "app" / "core.mpy").read_bytes()[:2] == b"M\x06"
    assert (dest / "main.py").read_bytes() == files["main.py"]
    env = dict(os.environ, MICROPYPATH=str(dest))
    done = subprocess.run([MICROPYTHON, "main.py"], cwd=dest, capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.stdout.strip() == "42", done.stdout + done.stderr


def test_tampered_payload_byte_is_bad_hash(tmp_path):
    key, pub = keys(tmp_path)
    _, bundle = build(tmp_path, key, "--no-compile")
    data = bytearray(bundle.read_bytes())
    data[-100] ^= 0x01
    bundle.write_bytes(bytes(data))
    result, dest = extract_on_mp(tmp_path, bundle, pub)
    assert result == {"ok": False, "error": "BadHash", "msg": result["msg"]}
    assert listing(dest) == [] and list(dest.iterdir()) == []
    rc, out = tool("verify", "--pub", pub, "--bundle", bundle)
    assert rc == 2 and "sha256 mismatch" in out, out


def test_wrong_key_is_bad_signature(tmp_path):
    key, _ = keys(tmp_path)
    _, other_pub = keys(tmp_path, "other")
    _, bundle = build(tmp_path, key, "--no-compile")
    result, dest = extract_on_mp(tmp_path, bundle, other_pub)
    assert result["error"] == "BadSignature", result
    assert list(dest.iterdir()) == []


def test_truncated_bundle_is_truncated(tmp_path):
    key, pub = keys(tmp_path)
    _, bundle = build(tmp_path, key, "--no-compile")
    data = bundle.read_bytes()
    for cut in (5, 200, len(data) - 1):
        bundle.write_bytes(data[:cut])
        result, dest = extract_on_mp(tmp_path, bundle, pub)
        assert result["error"] == "Truncated", (cut, result)
        assert list(dest.iterdir()) == []


def test_path_traversal_is_refused_by_device_and_tool(tmp_path):
    key, pub = keys(tmp_path)
    signing_key = ota_tool.load_private_key(key)
    for path in ("../escaped.py", "/tmp/abs.py", "app/../../escaped.py"):
        with pytest.raises(ota_tool.ToolError):
            ota_tool.make_manifest([(path, b"x")], "1.0.0")
        body = b"print('pwned')\n"
        manifest = json.dumps({"format": 1, "version": "1.0.0", "files": [
            {"path": path, "size": len(body),
             "sha256": __import__("hashlib").sha256(body).hexdigest()}]}).encode()
        bundle = tmp_path / "evil.bin"
        bundle.write_bytes(ota_tool.encode(manifest, signing_key.sign(manifest), [body]))
        result, dest = extract_on_mp(tmp_path, bundle, pub)
        assert result["error"] == "BadManifest" and "path" in result["msg"], result
        assert list(dest.iterdir()) == []
    assert not (tmp_path / "escaped.py").exists()


def test_rollback_and_min_version_are_signed_into_the_manifest(tmp_path):
    key, pub = keys(tmp_path)
    _, bundle = build(tmp_path, key, "--no-compile", "--rollback", "--min-version", "1.2.0")
    manifest, _ = ota_tool.read_bundle(bundle.read_bytes(), pub.read_bytes())
    assert manifest["rollback"] is True and manifest["min_version"] == "1.2.0"
    rc, out = tool("verify", "--pub", pub, "--bundle", bundle)
    assert rc == 0 and "(rollback)" in out and "min_version 1.2.0" in out, out
    poll = ota_tool.poll_manifest(bundle.read_bytes(), "b.bin")
    assert poll["rollback"] is True  # so a board downloads it; the signed copy decides
    result, _ = extract_on_mp(tmp_path, bundle, pub)  # still a bundle the device reads
    assert result["ok"], result
    _, plain = build(tmp_path, key, "--no-compile")
    assert "rollback" not in ota_tool.read_bundle(plain.read_bytes(), pub.read_bytes())[0]
    assert "rollback" not in ota_tool.poll_manifest(plain.read_bytes(), "b.bin")
    src = tmp_path / "src"
    for bad in ("mp-1.29", "1.2.3.4", "v2"):
        rc, out = tool("build", "--version", bad, "--key", key, "--out", tmp_path / "x.bin",
                       "--root", src, "--src", src / "main.py", "--no-compile")
        assert rc == 2 and "semantic version" in out, (bad, out)
