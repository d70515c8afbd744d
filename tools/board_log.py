"""`make logs PORT=...` and `make status PORT=...`: what a board is doing, read from its
serial console without stopping it.

The firmware writes its log to the console (UART/USB); these commands only listen (mpremote
would interrupt the running app to reach the REPL, so they open the port with pyserial, the
transport mpremote itself uses, and send nothing).

logs    prints each line as it arrives (the board's earlier lines, if the port kept any,
        first) until Ctrl-C, or for --seconds.
status  waits for the next `status:` line (every `intervals.status_s`) and prints it readably:
        online/offline and the last error, readings, delivered, pending, heap; plus the
        warnings and errors seen meanwhile. Says so when none comes (the app is not running:
        config problems, safe mode, waiting for Wi-Fi; `make console` shows which).

    python -m tools.board_log logs --port /dev/ttyUSB0 [--seconds N]
    python -m tools.board_log status --port /dev/ttyUSB0 [--timeout 30]
"""
import argparse
import re
import sys
import time

_STATUS = re.compile(r"^(\S+) I status: (.*)$")


def lines(port, seconds):
    """Yield the console's lines (decoded, stripped) for `seconds` (None: forever)."""
    import serial

    ser = serial.Serial(port, 115200, timeout=0.2)
    buf = b""
    end = None if seconds is None else time.monotonic() + seconds
    try:
        while end is None or time.monotonic() < end:
            data = ser.read(4096)
            if not data:
                continue
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                text = line.decode(errors="replace").strip()
                if text and "IMPROV" not in text:  # Improv packets are for tools.improv
                    yield text
    finally:
        ser.close()


def describe_status(stamp, text):
    """A readable sentence from a status line's text (`readings=12 ... link=online`)."""
    fields = dict(w.split("=", 1) for w in text.split() if "=" in w)
    link = fields.get("link", "link state unknown (older firmware)")
    if link.startswith("offline("):
        link = "offline for %s (%s)" % (link[8:-1], fields.get("error", "?").replace("_", " "))
    known = ("readings", "delivered", "pending", "dead", "applied")
    parts = ["%s %s" % (fields[k], k) for k in known if k in fields]
    extra = ["%s=%s" % (k, v) for k, v in fields.items()
             if k not in known + ("free", "link", "error")]
    return "%s; %s%s; heap free %s (at %s)" % (
        link, ", ".join(parts), " (%s)" % ", ".join(extra) if extra else "",
        fields.get("free", "?"), stamp)


def status(port, timeout, say=print):
    seen, notable = [], []
    for line in lines(port, timeout):
        seen.append(line)
        m = _STATUS.match(line)
        if m:
            say("board on %s: %s" % (port, describe_status(m.group(1), m.group(2))))
            for n in notable[-5:]:
                say("  recent: " + n)
            return 0
        if " W " in line or " E " in line:
            notable.append(line)
    say("board on %s: no status line within %d s; the app is not running (config problems, "
        "safe mode, waiting for Wi-Fi): `make console PORT=%s` shows why" % (
            port, timeout, port))
    for line in seen[-10:]:
        say("  " + line)
    return 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    lg = sub.add_parser("logs")
    lg.add_argument("--port", required=True)
    lg.add_argument("--seconds", type=float)
    st = sub.add_parser("status")
    st.add_argument("--port", required=True)
    st.add_argument("--timeout", type=float, default=30)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "status":
            return status(a.port, a.timeout)
        for line in lines(a.port, a.seconds):
            print(line, flush=True)
    except KeyboardInterrupt:
        return 0
    except OSError as e:
        print("%s: cannot open %s: %s" % (a.cmd, a.port, e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
