# ESP32-WROOM, 4 MB flash, no PSRAM, running the frozen firmware image (docs/boards.md).
# Built out of tree: make -C $MPY_DIR/ports/esp32 BOARD_DIR=<repo>/boards/ESP32_WROOM_FW
# (`make image` does this). The stock ESP32_GENERIC settings, minus Bluetooth (unused: its
# controller and NimBLE cost flash and RAM), plus this board's fragment.
set(IDF_TARGET esp32)

# No btree module (the firmware does not use it; the vendored source has no berkeley-db)
set(MICROPY_PY_BTREE OFF)

# This board's partition table lives outside the port, so its path is written into an
# sdkconfig fragment here (an sdkconfig file cannot name MICROPY_BOARD_DIR itself).
file(WRITE ${CMAKE_BINARY_DIR}/sdkconfig.partitions
    "CONFIG_PARTITION_TABLE_CUSTOM_FILENAME=\"${MICROPY_BOARD_DIR}/partitions.csv\"\n")

set(SDKCONFIG_DEFAULTS
    boards/sdkconfig.base
    ${MICROPY_BOARD_DIR}/sdkconfig.board
    ${CMAKE_BINARY_DIR}/sdkconfig.partitions
)

# The one manifest of the repository (firmware/, boot.py, main.py) over the port's own.
set(MICROPY_FROZEN_MANIFEST ${MICROPY_BOARD_DIR}/../../manifest.py)
set(MICROPY_MANIFEST_PORT_MANIFEST ${CMAKE_CURRENT_SOURCE_DIR}/boards/manifest.py)
