// ESP32-WROOM without PSRAM, frozen firmware image (docs/boards.md).
#define MICROPY_HW_BOARD_NAME "ESP32-WROOM (frozen firmware image)"
#define MICROPY_HW_MCU_NAME "ESP32"

// No Bluetooth in this image: sdkconfig.board leaves it out.
#define MICROPY_PY_BLUETOOTH (0)
