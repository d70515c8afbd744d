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
run: deps
	$(PY) -m tools.run_local --platform $(PLATFORM) --transport $(TRANSPORT) $(if $(FRESH),--fresh)

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

unit-mp: deps
	$(MICROPYTHON) host_tests/mp_runner.py

pytest: deps
	$(PY) -m pytest -q host_tests

test: lint typecheck unit-mp pytest

# Signed OTA bundles: the private key stays in keys/ (git-ignored); the device holds the public key.
OTA_KEYS ?= keys
VERSION ?= 0.0.0-dev
ota-keygen: deps
	$(PY) tools/ota_tool.py keygen --out $(OTA_KEYS)

# The app only: boot.py and main.py stay the factory's (an app bundle cannot replace them).
ota-bundle: deps
	$(PY) tools/ota_tool.py build --version $(VERSION) --key $(OTA_KEYS)/ota_signing_key.pem \
		--out build/bundle-$(VERSION).bin --src firmware

# The JSON a board polls (config ota.manifest_url): version, url, sha256, size of the bundle.
ota-manifest: deps
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

# Serve build/'s OTA bundle and manifest over HTTPS with a local CA (docs/ota.md), so a board
# on the desk or the virtual board can update; OTA_HOST= the address the board reaches.
OTA_HOST ?= 127.0.0.1
OTA_PORT ?= 8443
ota-serve: $(DEPS_STAMP)
	$(PY) -m tools.ota_serve --dir build --host $(OTA_HOST) --port $(OTA_PORT)

# Does a CA file verify a cloud's server as the firmware will? URL=https://host CA=ca.pem.
check-ca: $(DEPS_STAMP)
	@test -n "$(URL)" -a -n "$(CA)" || { echo "set URL=https://host[:port] and CA=path/ca.pem"; exit 2; }
	@$(PY) -m tools.ca_check $(URL) $(CA)

# ---- make check: the edit loop ------------------------------------------------------------------
.PHONY: check unit-py

# unit tests on CPython (pytest), no system tests
unit-py: deps
	$(PY) -m pytest -q host_tests/unit

# the edit loop: lint, typecheck, unit tests on both runtimes; no system tests
check: lint typecheck unit-py unit-mp
