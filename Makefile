# Two commands matter: `make run` (the firmware on the MicroPython unix port against the local
# cloud) and `make test`. Both install what they need on first use.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
MICROPYTHON := $(VENV)/bin/micropython
MOSQUITTO ?= /usr/sbin/mosquitto
DEPS_STAMP := $(VENV)/.deps-installed
export MICROPYPATH := $(CURDIR):$(CURDIR)/host_tests/shims:$(CURDIR)/lib:.frozen

TRANSPORT ?= https
PLATFORM ?= realer

.PHONY: run deps test lint typecheck unit-mp pytest clean ota-keygen ota-bundle ota-manifest \
	build deploy provision console

# The firmware (sim board) against a local cloud, live status until Ctrl-C.
# PLATFORM=realer|nubison|devicehive|xyte; TRANSPORT=https|mqtt picks Realer's transport;
# each keeps its own run/<name>/ (cloud, device, log); FRESH=1 starts that one over.
# FROZEN=1: on the frozen 32-bit image (`make frozen`) instead of firmware/ from source.
run: deps $(if $(FROZEN),frozen)
	$(PY) -m tools.run_local --platform $(PLATFORM) --transport $(TRANSPORT) $(if $(FRESH),--fresh) \
		$(if $(FROZEN),--micropython $(FROZEN_MP))

deps: $(DEPS_STAMP) $(MOSQUITTO)

$(DEPS_STAMP): requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# Debian's broker, for the MQTT tests and the local clouds; tests start their own instances.
$(MOSQUITTO):
	@command -v apt-get >/dev/null || { echo "mosquitto missing and no apt-get: install mosquitto"; exit 1; }
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) \
		apt-get install -y -qq mosquitto mosquitto-clients >/dev/null

lint: deps
	$(VENV)/bin/ruff check .

typecheck: deps
	$(PY) tools/typecheck.py

# one MicroPython process per test file, one per CPU at a time (host_tests/mp_parallel.py says
# why); `$(MICROPYTHON) host_tests/mp_runner.py FILE` runs one file by hand
unit-mp: deps
	$(PY) host_tests/mp_parallel.py

# pytest-xdist workers: the system tests mostly wait (on real peers, TLS handshakes and the
# firmware's intervals), so 4 on a 2-core machine. The long files come first (conftest.py) and
# are handed out one test at a time (--maxschedchunk 1; by default the first worker would get
# them all in its first batch). PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= 4
pytest: deps
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist load --maxschedchunk 1 host_tests

test: lint typecheck unit-mp pytest

# Signed OTA bundles: the private key stays in keys/ (git-ignored); the device holds the public key.
OTA_KEYS ?= keys
# VERSION has no default: a bundle must be newer than what the board runs (a factory board
# reports 0.0.0, firmware/version.py), and a made-up default would rank below it and be refused.
need-version = @test -n "$(VERSION)" || { echo "set VERSION, e.g. VERSION=1.2.3 (newer than the board's; see docs/ota.md)"; exit 2; }
ota-keygen: deps
	$(PY) tools/ota_tool.py keygen --out $(OTA_KEYS)

# The app only: boot.py and main.py stay the factory's (an app bundle cannot replace them).
ota-bundle: deps
	$(need-version)
	$(PY) tools/ota_tool.py build --version $(VERSION) --key $(OTA_KEYS)/ota_signing_key.pem \
		--out build/bundle-$(VERSION).bin $(if $(IMAGE),$(OTA_IMAGE_ARGS),--src firmware)

# The JSON a board polls (config ota.manifest_url): version, url, sha256, size of the bundle.
ota-manifest: deps
	$(need-version)
	$(PY) tools/ota_tool.py manifest --bundle build/bundle-$(VERSION).bin \
		--url bundle-$(VERSION).bin --out build/manifest.json

# The board: build (mpy-cross; ARCH= for plain bytecode, e.g. the virtual board), deploy the
# changed files and reset, provision a checked config.json (+ its CA), console = the REPL/log.
ARCH ?= xtensawin
BUILD_DIR := build/$(if $(ARCH),$(ARCH),bytecode)
MPREMOTE := $(VENV)/bin/mpremote
need-port = @test -n "$(PORT)" || { echo "set PORT, e.g. PORT=/dev/ttyUSB0 (see docs/flashing.md)"; exit 2; }

build: $(DEPS_STAMP)
	$(PY) -m tools.build --arch "$(ARCH)" --out $(BUILD_DIR)

deploy: build
	$(need-port)
	$(PY) -m tools.deploy deploy --port $(PORT) --build $(BUILD_DIR)

provision: $(DEPS_STAMP)
	$(need-port)
	@test -n "$(CONFIG)" || { echo "set CONFIG=path/config.json (see examples/)"; exit 2; }
	$(PY) -m tools.deploy provision --port $(PORT) --config $(CONFIG) \
		$(if $(SECRETS),--secrets $(SECRETS)) \
		--ota-key $(or $(OTA_KEY),$(wildcard $(OTA_KEYS)/ota_public_key.bin),none)

console: $(DEPS_STAMP)
	$(need-port)
	$(MPREMOTE) connect $(PORT) repl

clean:
	rm -rf build .pytest_cache

# --- setup and visibility (issue 16): help, config schema, Wi-Fi over serial, logs, status ---
.PHONY: help schema wifi logs status ota-serve check-ca

# This list: every target with the comment above it.
help:
	@python3 -m tools.make_help Makefile

# Regenerate examples/config.schema.json (the JSON Schema for config.json) from the validator.
schema: $(DEPS_STAMP)
	$(PY) -m tools.config_schema

# Hand a board waiting for setup its Wi-Fi over the serial port (Improv Wi-Fi, as ESPHome
# boards take it); PORT= SSID= [PASSWORD=, else a prompt]. Never echoed.
wifi: $(DEPS_STAMP)
	$(need-port)
	@test -n "$(SSID)" || { echo "set SSID=network-name (and PASSWORD=, or get a prompt)"; exit 2; }
	@$(if $(PASSWORD),WIFI_PASSWORD='$(PASSWORD)') $(PY) -m tools.improv --port $(PORT) --ssid '$(SSID)'

# The board's log lines as they come, without stopping it; PORT= [SECONDS=].
logs: $(DEPS_STAMP)
	$(need-port)
	@$(PY) -m tools.board_log logs --port $(PORT) $(if $(SECONDS),--seconds $(SECONDS))

# The board's next status line, readably (online/offline, last error, counts); PORT=.
status: $(DEPS_STAMP)
	$(need-port)
	@$(PY) -m tools.board_log status --port $(PORT)

OTA_HOST ?= 127.0.0.1
OTA_PORT ?= 8443
# Serve build/'s OTA bundle and manifest over HTTPS with a local CA (docs/ota.md), so a board
# on the desk or the virtual board can update; OTA_HOST= the address the board reaches.
ota-serve: $(DEPS_STAMP)
	$(PY) -m tools.ota_serve --dir build --host $(OTA_HOST) --port $(OTA_PORT)

# Does a CA file verify a cloud's server as the firmware will? URL=https://host CA=ca.pem.
check-ca: $(DEPS_STAMP)
	@test -n "$(URL)" -a -n "$(CA)" || { echo "set URL=https://host[:port] and CA=path/ca.pem"; exit 2; }
	@$(PY) -m tools.ca_check $(URL) $(CA)

# ---- frozen firmware image (issue 13; docs/flashing.md, bench/memory.md) ----------------------
# manifest.py is the one input: `make frozen` builds the MicroPython unix port 32-bit (objects
# the size of the ESP32's) with the firmware frozen in; `make image` the ESP32 firmware.
# MPY_DIR: a MicroPython source tree of the pinned interpreter. Default: the vendored tarball
# beside the repo (../shared/vendor) unpacked under build/, else a clone of MPY_REF with the
# submodules the unix port needs (needs the internet once).
MPY_TARBALL ?= ../shared/vendor/micropython-src.tar.gz
MPY_REPO ?= https://github.com/micropython/micropython.git
MPY_REF ?= 1c3c201149
MPY_DIR ?= $(if $(wildcard $(MPY_TARBALL)),build/micropython,build/micropython-git)
MPY_SRC_STAMP := $(if $(filter build/micropython build/micropython-git,$(MPY_DIR)),$(MPY_DIR)/.ready)
FROZEN_MP := build/frozen-32/micropython
FROZEN_SRC := manifest.py boot.py main.py $(shell find firmware -name '*.py' 2>/dev/null)
MULTILIB := /usr/lib32/crt1.o
FROZEN_MAKE_ARGS := VARIANT=standard MICROPY_PY_BTREE=0 MICROPY_PY_FFI=0 CC="gcc -m32" \
	BUILD=build-32 FROZEN_MANIFEST=$(CURDIR)/manifest.py \
	MICROPY_MANIFEST_PORT_MANIFEST=$(abspath $(MPY_DIR))/ports/unix/variants/standard/manifest.py

.PHONY: frozen mpy-src memory image idf-check

# The unix port, 32-bit, with the firmware frozen from manifest.py (cached; rebuilt on change).
frozen: $(FROZEN_MP)

# Unpack (or clone) the MicroPython source that MPY_DIR names, and print where it is.
mpy-src: $(MPY_SRC_STAMP)
	@echo "MPY_DIR=$(MPY_DIR)"

build/micropython/.ready: $(MPY_TARBALL)
	rm -rf build/micropython && mkdir -p build
	tar xzf $(MPY_TARBALL) -C build/
	touch $@

build/micropython-git/.ready:
	rm -rf build/micropython-git
	git clone --filter=blob:none $(MPY_REPO) build/micropython-git
	git -C build/micropython-git checkout -q $(MPY_REF)
	$(MAKE) -C build/micropython-git/ports/unix VARIANT=standard submodules
	touch $@

# 32-bit objects need Debian's multilib gcc (installed like mosquitto above)
$(MULTILIB):
	@command -v apt-get >/dev/null || { echo "gcc -m32 needs gcc-multilib: install it"; exit 1; }
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) \
		apt-get install -y -qq gcc-multilib >/dev/null

# rebuilt when manifest.py, boot.py, main.py or any firmware/*.py changes
$(FROZEN_MP): $(FROZEN_SRC) $(MPY_SRC_STAMP) | $(MULTILIB)
	@test -f $(MPY_DIR)/ports/unix/Makefile || { echo "MPY_DIR=$(MPY_DIR) is not a MicroPython source tree"; exit 2; }
	$(MAKE) -C $(MPY_DIR)/mpy-cross
	$(MAKE) -C $(MPY_DIR)/ports/unix $(FROZEN_MAKE_ARGS)
	mkdir -p $(dir $@)
	cp $(MPY_DIR)/ports/unix/build-32/micropython $@.tmp && mv -f $@.tmp $@  # may be running

# Smallest working GC heap of every configuration on the frozen 32-bit image: 1-minute search,
# then 3-minute trials at the sizes found (2 trials at a time); the last line sums up.
memory: deps frozen
	$(PY) -m tools.heapcheck --frozen $(FROZEN_MP) --all --minutes 1 --confirm-minutes 3 --width 2

ESP32_BOARD_DIR := $(CURDIR)/boards/ESP32_WROOM_FW
IMAGE_BUILD := $(CURDIR)/build/esp32-wroom-fw
IMAGE_APP := $(IMAGE_BUILD)/micropython.bin

# The ESP32 firmware (boards/ESP32_WROOM_FW: 4 MB flash, no PSRAM) from the same manifest.py.
# Needs ESP-IDF (the version $(MPY_DIR)/ports/esp32/README.md names) with its export.sh sourced.
# Output: $(IMAGE_BUILD)/firmware.bin (flash at 0x1000) and micropython.bin (the app image
# that `make ota-bundle IMAGE=1` signs). Steps: docs/flashing.md.
image: idf-check $(MPY_SRC_STAMP)
	$(MAKE) -C $(MPY_DIR)/mpy-cross
	$(if $(wildcard $(MPY_DIR)/.git),$(MAKE) -C $(MPY_DIR)/ports/esp32 BOARD_DIR=$(ESP32_BOARD_DIR) \
		BUILD=$(IMAGE_BUILD) submodules)
	$(MAKE) -C $(MPY_DIR)/ports/esp32 BOARD_DIR=$(ESP32_BOARD_DIR) BUILD=$(IMAGE_BUILD)
	@echo "image: $(IMAGE_BUILD)/firmware.bin (esptool write-flash 0x1000), app $(IMAGE_APP)"

# Say clearly when ESP-IDF is missing (make image needs it).
idf-check:
	@test -n "$$IDF_PATH" && command -v idf.py >/dev/null || { \
		echo "make image needs ESP-IDF: install the version $(MPY_DIR)/ports/esp32/README.md names,"; \
		echo "source its export.sh, then: make image MPY_DIR=<a MicroPython checkout> (docs/flashing.md)"; \
		exit 2; }

# `make ota-bundle IMAGE=1`: an image bundle (one file, the app image of `make image`) for
# boards on the frozen image; they refuse app bundles (docs/ota.md)
OTA_IMAGE_ARGS = --no-compile --src $(IMAGE_APP) --root $(IMAGE_BUILD)
ifdef IMAGE
ota-bundle: $(IMAGE_APP)
endif
$(IMAGE_APP):
	@echo "no $(IMAGE_APP): run make image first (docs/flashing.md)"; exit 2

# make test builds the image first (cached): host_tests/system/test_frozen_image.py runs it
pytest: frozen

# ---- end frozen firmware image ------------------------------------------------------------------

# ---- make check: the edit loop ------------------------------------------------------------------
.PHONY: check unit-py

# unit tests on CPython (pytest), no system tests
unit-py: deps
	$(PY) -m pytest -q host_tests/unit

# the edit loop: lint, typecheck, unit tests on both runtimes; no system tests
check: lint typecheck unit-py unit-mp
