"""`make wifi PORT=... SSID=...`: hand a board its Wi-Fi over the serial port (Improv Wi-Fi).

Speaks the client side of the Improv serial protocol (firmware/improv.py has the packet
layout): asks the board for its state and device info, sends the SSID and password, and waits
for "provisioned" or an error. The board only listens while it cannot start for want of
configuration (it then logs `waiting for Wi-Fi settings on this serial port`); a board that
runs already needs `make provision` instead. The password comes from --password, the
WIFI_PASSWORD environment variable, or a prompt; it is never printed, and the board's log
lines shown meanwhile come redacted from the board.

    python -m tools.improv --port /dev/ttyUSB0 --ssid HomeNet [--password ...] [--timeout 60]
"""
import argparse
import getpass
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATES = {1: "authorization required", 2: "ready (authorized)", 3: "provisioning",
          4: "provisioned"}
ERRORS = {1: "invalid packet", 2: "unknown command", 3: "unable to connect",
          4: "not authorized", 0xFF: "unknown error"}


def _protocol():
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from tools import cpython_compat  # the MicroPython APIs firmware code uses, on CPython

    cpython_compat.install()
    from firmware import improv

    return improv


class ImprovError(Exception):
    """The board did not answer, or answered with an error."""


class Client:
    def __init__(self, port, say=print):
        import serial

        self.improv = _protocol()
        self.ser = serial.Serial(port, 115200, timeout=0.1)
        self.parser = self.improv.Parser()
        self.say = say
        self._line = b""

    def close(self):
        self.ser.close()

    def send(self, command, items=()):
        im = self.improv
        self.ser.write(im.packet(im.TYPE_RPC, im.rpc(command, im.strings(items))))
        self.ser.flush()

    def _log(self, data):
        # the board's own lines (log, prompts) between packets: shown, packets left out
        self._line += data
        while b"\n" in self._line:
            line, self._line = self._line.split(b"\n", 1)
            if b"IMPROV" not in line:
                text = line.decode(errors="replace").strip()
                if text:
                    self.say("  board: " + text)

    def wait(self, want, timeout):
        """Read until want(type, data) is true for a packet; returns (type, data). An error
        packet other than 0 raises ImprovError."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            data = self.ser.read(256)
            if not data:
                continue
            self._log(data)
            for ptype, body in self.parser.feed(data):
                if ptype == self.improv.TYPE_ERROR and body and body[0] != 0:
                    raise ImprovError(ERRORS.get(body[0], "error 0x%02x" % body[0]))
                if ptype is not None and want(ptype, body):
                    return ptype, body
        return None

    def state(self, timeout=15.0):
        """Ask for the state until the board answers (it may still be booting)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.send(self.improv.CMD_STATE)
            got = self.wait(lambda t, d: t == self.improv.TYPE_STATE, 1.0)
            if got:
                return got[1][0]
        raise ImprovError("no Improv answer on the port within %d s: is the board waiting for "
                          "Wi-Fi (its log says so), and is nothing else (a console) using the "
                          "port?" % timeout)

    def info(self):
        self.send(self.improv.CMD_INFO)
        got = self.wait(lambda t, d: t == self.improv.TYPE_RESULT and d[:1] == b"\x03", 5.0)
        if not got:
            return None
        return [s.decode(errors="replace") for s in self.improv.parse_strings(got[1][2:]) or []]

    def provision(self, ssid, password, timeout):
        im = self.improv
        self.send(im.CMD_WIFI, [ssid, password])
        got = self.wait(lambda t, d: t == im.TYPE_STATE and d[:1] == bytes((im.STATE_PROVISIONED,))
                        or t == im.TYPE_RESULT and d[:1] == b"\x01", timeout)
        if got is None:
            raise ImprovError("the board said nothing within %d s after the settings" % timeout)
        return got


def run(port, ssid, password, timeout=60.0, say=print):
    client = Client(port, say)
    try:
        state = client.state()
        say("wifi: board on %s is %s" % (port, STATES.get(state, "in state %d" % state)))
        info = client.info()
        if info:
            say("wifi: %s %s on %s, device %s" % tuple((info + ["?"] * 4)[:4]))
        say("wifi: sending the settings for %s" % ssid)
        try:
            client.provision(ssid, password, timeout)
        except ImprovError as e:
            if str(e) == "unable to connect":
                raise ImprovError("the board could not join %s: check the network name and "
                                  "password (it saved nothing)" % ssid)
            raise
        # the board may restart at once: read what it says for a moment
        client.wait(lambda t, d: False, 1.0)
        say("wifi: done; the board joined %s and saved it in its secrets file; it restarts "
            "when its config is complete (see `make console PORT=%s`)" % (ssid, port))
        return 0
    finally:
        client.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", required=True)
    ap.add_argument("--ssid", required=True)
    ap.add_argument("--password", help="default: $WIFI_PASSWORD, else a prompt")
    ap.add_argument("--timeout", type=float, default=60.0,
                    help="seconds to wait for the board to connect")
    a = ap.parse_args(argv)
    password = a.password if a.password is not None else os.environ.get("WIFI_PASSWORD")
    if password is None:
        password = getpass.getpass("password for %s (empty for an open network): " % a.ssid) \
            if sys.stdin.isatty() else ""
    try:
        return run(a.port, a.ssid, password, a.timeout)
    except ImprovError as e:
        print("wifi: %s" % e, file=sys.stderr)
        return 1
    except OSError as e:
        print("wifi: cannot open %s: %s" % (a.port, e), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
