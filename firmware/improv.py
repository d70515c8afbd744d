"""Improv Wi-Fi over the serial console: set a board's Wi-Fi without editing a file.

Improv (https://www.improv-wifi.com/serial/) is the open protocol ESPHome and WLED boards
speak, so browser installers (ESP Web Tools) and `make wifi PORT=... SSID=...`
(tools/improv.py) can hand a board its network. A packet is `IMPROV`, version 1, a type, a
length, the data and a checksum (the low byte of the sum of every byte before it):

    type 0x01 current state  device -> client  0x02 authorized, 0x03 provisioning,
                                               0x04 provisioned
    type 0x02 error state    device -> client  0x00 none, 0x01 invalid packet,
                                               0x02 unknown command, 0x03 unable to connect
    type 0x03 RPC command    client -> device  [command, length, data]: 0x01 Wi-Fi settings
                                               (ssid and password, each length-prefixed),
                                               0x02 current state, 0x03 device info, 0x04 scan
    type 0x04 RPC result     device -> client  [command, length, strings, each length-prefixed]

The service runs while the app cannot start for want of configuration (main.py calls
`serve()` when `app.main()` returns 1): it answers on the REPL's UART between log lines,
without blocking the asyncio loop. No authorization button is needed (state 0x02 from the
start), as with ESPHome over USB. Wi-Fi settings are tried on the radio first; only settings
that connect are written, as `wifi` in the secrets file (config.json's `secrets_file`, added
when missing as `secrets.json`), and the password is registered with the log before anything
could print it. When the config then loads, the board resets and the app starts.

On the board the UART's Ctrl-C handler is switched off while the service runs (an RPC packet
carries 0x03 bytes); a 0x03 outside any packet still stops it, so mpremote and a person at
the console get the REPL as usual. On the unix port the service runs only where the console
is a serial port (the virtual board sets IMPROV_SERIAL=1).
"""
import asyncio
import json
import os
import sys

from micropython import const

from firmware import config, log, statefile

_TAG = "improv"
HEADER = b"IMPROV"
VERSION = const(1)
TYPE_STATE = const(0x01)
TYPE_ERROR = const(0x02)
TYPE_RPC = const(0x03)
TYPE_RESULT = const(0x04)
STATE_AUTHORIZED = const(0x02)
STATE_PROVISIONING = const(0x03)
STATE_PROVISIONED = const(0x04)
ERROR_NONE = const(0x00)
ERROR_INVALID = const(0x01)
ERROR_UNKNOWN_RPC = const(0x02)
ERROR_UNABLE_TO_CONNECT = const(0x03)
CMD_WIFI = const(0x01)
CMD_STATE = const(0x02)
CMD_INFO = const(0x03)
CMD_SCAN = const(0x04)
_CTRL_C = const(0x03)
_MAX_BUF = const(300)  # one packet is at most 9 + 255 + 1 bytes
FIRMWARE = "esp32-iot-firmware"
VERSION_TEXT = "1"


def checksum(data):
    return sum(data) & 0xFF


def packet(ptype, data=b""):
    body = HEADER + bytes((VERSION, ptype, len(data))) + bytes(data)
    return body + bytes((checksum(body),))


def strings(items):
    """Length-prefixed UTF-8 strings, as RPC data and results carry them."""
    out = bytearray()
    for s in items:
        b = s.encode() if isinstance(s, str) else bytes(s)
        out.append(len(b))
        out += b
    return bytes(out)


def rpc(command, data=b""):
    """The data of an RPC command or result packet: [command, length, data]."""
    return bytes((command, len(data))) + bytes(data)


def parse_strings(data):
    """The length-prefixed strings in data, or None when a length runs past the end."""
    out = []
    i = 0
    while i < len(data):
        n = data[i]
        if i + 1 + n > len(data):
            return None
        out.append(bytes(data[i + 1:i + 1 + n]))
        i += 1 + n
    return out


class Parser:
    """Finds Improv packets in a byte stream that also carries other bytes (log lines,
    keystrokes). `feed(data)` returns [(type, data)]; type None is a packet that failed its
    version or checksum. `interrupted` turns true when a Ctrl-C byte came outside a packet."""

    def __init__(self):
        self.buf = b""
        self.interrupted = False

    def feed(self, data):
        self.buf += bytes(data)
        found: list = []
        while True:
            at = self.buf.find(HEADER)
            if at < 0:
                # keep a tail that may be the start of a header
                keep = 0
                for n in range(min(len(HEADER) - 1, len(self.buf)), 0, -1):
                    if self.buf.endswith(HEADER[:n]):
                        keep = n
                        break
                self._skip(self.buf[:len(self.buf) - keep])
                self.buf = self.buf[len(self.buf) - keep:]
                return found
            self._skip(self.buf[:at])
            self.buf = self.buf[at:]
            if len(self.buf) < 9:
                return found
            end = 9 + self.buf[8] + 1
            if len(self.buf) < end:
                if len(self.buf) > _MAX_BUF:  # cannot happen with a one-byte length
                    self.buf = self.buf[1:]
                return found
            raw, self.buf = self.buf[:end], self.buf[end:]
            if raw[6] != VERSION or checksum(raw[:-1]) != raw[-1]:
                found.append((None, b""))
            else:
                found.append((raw[7], raw[9:-1]))

    def _skip(self, data):
        if _CTRL_C in data:
            self.interrupted = True


class Service:
    """The device side. `handle(type, data)` answers one packet through `write(bytes)`."""

    def __init__(self, root, write, wlan=None, connect_ms=20000):
        self.root = root
        self.write = write
        self.wlan = wlan
        self.connect_ms = connect_ms
        self.state = STATE_AUTHORIZED
        self.ready = False  # the config loads now: the app can start

    def send_state(self):
        self.write(packet(TYPE_STATE, bytes((self.state,))))

    def send_error(self, code):
        self.write(packet(TYPE_ERROR, bytes((code,))))

    def send_result(self, command, items):
        self.write(packet(TYPE_RESULT, rpc(command, strings(items))))

    def info(self):
        name = "unconfigured"
        try:
            with open(config.join(self.root, config.FILE)) as f:
                raw = json.load(f)
            cloud = raw.get("cloud") or {}
            name = str(cloud.get("name") or cloud.get("device_name") or cloud.get("device_id")
                       or name)
        except (OSError, ValueError, AttributeError):
            pass
        return [FIRMWARE, VERSION_TEXT, "esp32" if sys.platform == "esp32" else sys.platform,
                name]

    async def handle(self, ptype, data):
        if ptype is None or ptype != TYPE_RPC:
            if ptype is None:  # a damaged packet
                self.send_error(ERROR_INVALID)
            return  # other types flow device -> client only
        if len(data) < 2 or data[1] != len(data) - 2:
            self.send_error(ERROR_INVALID)
            return
        command, body = data[0], data[2:]
        self.send_error(ERROR_NONE)
        if command == CMD_STATE:
            self.send_state()
            if self.state == STATE_PROVISIONED:
                self.send_result(CMD_WIFI, [])
        elif command == CMD_INFO:
            self.send_result(CMD_INFO, self.info())
        elif command == CMD_SCAN:
            for ssid, rssi, secured in self._scan():
                self.send_result(CMD_SCAN, [ssid, str(rssi), "YES" if secured else "NO"])
            self.send_result(CMD_SCAN, [])
        elif command == CMD_WIFI:
            fields = parse_strings(body)
            if not fields or len(fields) != 2 or not fields[0]:
                self.send_error(ERROR_INVALID)
                return
            await self._provision(fields[0].decode(), fields[1].decode())
        else:
            self.send_error(ERROR_UNKNOWN_RPC)

    def _scan(self):
        try:
            found = self._radio().scan()
        except (AttributeError, OSError):  # no radio, or it is busy
            return []
        # (ssid, bssid, channel, rssi, security, hidden); named networks, strongest first
        nets = sorted((n for n in found if n[0]), key=lambda n: -n[3])
        return [(n[0].decode(errors="replace") if isinstance(n[0], bytes) else n[0], n[3],
                 n[4] != 0) for n in nets]

    def _radio(self):
        if self.wlan is None:
            import network

            self.wlan = network.WLAN(network.STA_IF)
        return self.wlan

    async def _provision(self, ssid, password):
        from firmware.wifi import Wifi

        log.secret(password)
        self.state = STATE_PROVISIONING
        self.send_state()
        log.info(_TAG, "Wi-Fi settings received for %s; connecting", ssid)
        station = Wifi({"ssid": ssid, "password": password}, platform="esp32",
                       wlan=self._radio(), connect_ms=self.connect_ms)
        wlan = self._radio()
        wlan.active(True)
        if not await station._connect(wlan):
            log.warn(_TAG, "%s: %s; check wifi.ssid and the password, then send them again",
                     ssid, station.last_error)
            self.state = STATE_AUTHORIZED
            self.send_error(ERROR_UNABLE_TO_CONNECT)
            self.send_state()
            return
        try:
            name = save_wifi(self.root, ssid, password)
        except OSError as e:
            log.error(_TAG, "cannot write the secrets file: %s", log.describe(e))
            self.state = STATE_AUTHORIZED
            self.send_error(0xFF)
            self.send_state()
            return
        log.info(_TAG, "connected to %s; Wi-Fi saved in %s", ssid, name)
        self.state = STATE_PROVISIONED
        self.send_state()
        self.send_result(CMD_WIFI, [])
        try:
            config.load(self.root)
        except config.ConfigError as e:
            for line in e.problems:
                log.error("config", line)
            log.error(_TAG, "Wi-Fi is set; fix the config above (make provision) to start")
            return
        self.ready = True

    async def run(self, read, available, interrupt=None):
        """Serve until the config loads after a provisioning (True), the input ends (False) or
        a Ctrl-C comes outside a packet (KeyboardInterrupt). read(): bytes ready now;
        available(): whether any are."""
        parser = Parser()
        self.send_state()
        while not self.ready:
            if not available():
                await asyncio.sleep_ms(20)
                continue
            data = read()
            if not data:
                return False
            for ptype, body in parser.feed(data):
                await self.handle(ptype, body)
            if parser.interrupted:
                raise KeyboardInterrupt
        return True


def save_wifi(root, ssid, password):
    """Write `wifi` into the secrets file config.json names (adding `secrets_file` to it when
    missing); returns the file's name. Each file is replaced whole (write, then rename)."""
    cfg_path = config.join(root, config.FILE)
    raw = None
    try:
        with open(cfg_path) as f:
            raw = json.load(f)
    except (OSError, ValueError):
        pass
    name = raw.get(config.SECRETS_KEY) if isinstance(raw, dict) else None
    if not isinstance(name, str) or not name:
        name = config.SECRETS_FILE
        if isinstance(raw, dict):
            raw[config.SECRETS_KEY] = name
            statefile.write_json(cfg_path, raw)
    path = config.join(root, name)
    secrets = {}
    try:
        with open(path) as f:
            secrets = json.load(f)
    except (OSError, ValueError):
        pass
    if not isinstance(secrets, dict):
        secrets = {}
    secrets["wifi"] = {"ssid": ssid, "password": password}
    statefile.write_json(path, secrets)
    return name


def serve(root=None):
    """Run the service on the console until the config loads after provisioning (then reset
    the board), or until Ctrl-C. Returns False where the console is no serial port."""
    esp32 = sys.platform == "esp32"
    getenv = getattr(os, "getenv", None)
    if not esp32 and not (getenv and getenv("IMPROV_SERIAL")):
        return False
    import select

    import micropython

    root = config.data_root() if root is None else root
    poller = select.poll()
    poller.register(sys.stdin, select.POLLIN)
    out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else sys.stdout
    inp = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else sys.stdin

    def write(data):
        out.write(data + b"\n")  # the newline keeps a terminal's lines apart

    log.info(_TAG, "waiting for Wi-Fi settings on this serial port: `make wifi PORT=... "
             "SSID=...` or a browser installer (Improv Wi-Fi); Ctrl-C for the REPL")
    service = Service(root, write)
    try:  # waiting for setup is this boot working as meant: no step toward safe mode
        from firmware import safemode

        safemode.healthy(root)
    except (ImportError, OSError):
        pass
    if esp32:
        micropython.kbd_intr(-1)  # 0x03 is data inside a packet; the parser spots Ctrl-C
    try:
        ready = asyncio.run(service.run(lambda: inp.read(1), lambda: bool(poller.poll(0))))
    finally:
        if esp32:
            micropython.kbd_intr(_CTRL_C)
    if ready:
        log.info(_TAG, "configured; restarting")
        import machine

        machine.reset()
    return True
