# ruff: noqa: F821  (metadata, include, package, module: the manifest API MicroPython provides)
# The firmware image: what every MicroPython build of this firmware freezes (`make frozen`,
# the unix port; `make image`, the ESP32 board in boards/ESP32_WROOM_FW). Frozen bytecode runs
# from the image (flash on the ESP32), so the GC heap holds only the firmware's data, not its
# code (bench/memory.md). Docs: https://docs.micropython.org/en/latest/reference/manifest.html

metadata(description="IoT sensor/actuator firmware for five clouds", version="0.1.0")

# The port's own frozen modules first (asyncio, the ssl wrapper, the ESP32's _boot/flashbdev/
# inisetup...). Each port keeps that manifest somewhere else (unix: variants/<variant>/manifest.py;
# esp32: boards/manifest.py), so the build names it in the PORT_MANIFEST path variable:
# `make frozen` passes MICROPY_MANIFEST_PORT_MANIFEST, the board's mpconfigboard.cmake sets it.
include("$(PORT_MANIFEST)")

# The whole package, every cloud adapter and board driver: frozen code costs no heap until
# it is imported, and app.py still imports only the adapter and drivers the config names.
package("firmware")

# boot.py and main.py frozen too. The ESP32 port runs a frozen boot.py / main.py in place of
# the filesystem's (shared/runtime/pyexec.c: pyexec_file_if_exists looks for the frozen module
# first), so they change only with the image, as docs/ota.md already requires, and main.py is
# no longer compiled from source into the heap at every boot (6-8K, bench/memory.md).
# The port's own _boot.py (mount the filesystem) still runs before them.
module("boot.py")
module("main.py")
