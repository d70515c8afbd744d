"""A virtual board for deploy tests: the MicroPython unix port behind a pseudo-terminal.

mpremote talks to the printed pty path as it would to a board's USB serial port (raw REPL,
`fs cp`, `exec`, `repl`, `reset`). The board's filesystem is a directory (`--root`, default a
new temp dir): micropython runs with that directory as its current directory and first import
path, so `/firmware/app.mpy` on the "board" is `ROOT/firmware/app.mpy`, and the firmware's data
root (config.json, outbox) is ROOT as on the device. The host shims (host_tests/shims: machine,
network, esp32, ntptime) play the part of the board's built-in modules.

A relay sits between the pty and the micropython process (which runs on its own pty, so a
Ctrl-C from mpremote reaches it as SIGINT, like the UART interrupt character on the board):

- power-on / hard reset (`mpremote reset` calls machine.reset(), which here ends the process
  with a reserved exit code): a new process runs boot.py, then main.py, then the REPL.
- soft reset (Ctrl-D at an empty REPL line, which ends the unix port): prints
  `MPY: soft reboot`; from the raw REPL a new process runs boot.py and goes back to the raw
  REPL, from the friendly REPL it runs boot.py, main.py, then the REPL.
- any other exit is reported on the console and the board starts again (like a crash reboot).

Improv Wi-Fi packets (`IMPROV` ... checksum, tools/improv.py) carry 0x03 bytes, which the
board's terminal would turn into SIGINT; a board's firmware switches its UART interrupt
character off while it listens for them (firmware/improv.py). The relay plays that part: it
writes each whole client packet with the terminal's signal characters off, until the board
answers (or 3 s pass). The firmware's Improv service runs here because the board's
environment says IMPROV_SERIAL=1, as its console is a serial port.

While nobody has the port open, only the newest 8 KB of output is kept (the next console
shows it first); a connected client gets everything, at its own pace.

    python -m tools.virtual_board [--root DIR] [--heapsize 512K]
prints `port: /dev/pts/N` and `root: DIR`, then relays until SIGTERM or Ctrl-C.
"""
import argparse
import fcntl
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
import time
import tty

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICROPYTHON = os.path.join(ROOT, ".venv", "bin", "micropython")
SHIMS = os.path.join(ROOT, "host_tests", "shims")
RESET_EXIT = 77  # machine.reset() on the virtual board exits with this

# The board's `machine`: the host shim's pins and timers, with a reset() that restarts the
# process instead of raising (mpremote's `reset` expects the board to go away and come back).
_MACHINE = """\
exec(open(%(shim)r).read())


def reset():
    import sys
    sys.stdout.write(%(mark)r)  # the relay ends the process: from inside a running main.py,
    sys.exit(%(code)d)  # SystemExit alone would drop to the REPL (micropython -i)
"""
_RESET_MARK = "\x1b[virtual-board-reset]"

# What the board does after power-on (`main.py` only on a hard reset), then the REPL (-i).
# The first line tells the relay the interpreter runs (and takes Ctrl-C as KeyboardInterrupt).
_BOOT = """\
import os, sys
sys.stdout.write(%(ready)r)
for _f in %(files)r:
    try:
        os.stat(_f)
    except OSError:
        continue
    exec(open(_f).read(), {"__name__": "__main__", "__file__": _f})
"""
_READY = "[virtual board] up\r\n"


_BACKLOG = 8192  # bytes kept for the next client while nobody has the port open
_LAG = 1 << 20  # bytes a connected client may fall behind before the oldest are dropped


def _prompt(seen):
    return seen.endswith(b">>> ") or seen.endswith(b">")


def _ready(seen):
    return _READY.encode() in seen


class VirtualBoard:
    """The relay between the client pty (`self.port`) and one micropython process at a time."""

    def __init__(self, root, micropython=MICROPYTHON, heapsize=None, trace=None):
        self.trace = trace  # a file: every byte each way, for debugging the relay
        self.root = os.path.abspath(root)
        self.micropython = micropython
        self.heapsize = heapsize
        self.rom = tempfile.mkdtemp(prefix="vboard-rom-")
        with open(os.path.join(self.rom, "machine.py"), "w") as f:
            f.write(_MACHINE % {"shim": os.path.join(SHIMS, "machine.py"), "code": RESET_EXIT,
                                "mark": _RESET_MARK})
        self.client, client_slave = pty.openpty()
        tty.setraw(client_slave)
        self.port = os.ttyname(client_slave)
        # closed: the master then reports POLLHUP exactly while nobody has the port open
        os.close(client_slave)
        os.set_blocking(self.client, False)
        self._out = b""  # for the connected client, written as it reads (nothing dropped)
        self._connected = False
        self.proc = None
        self.board = -1
        self._last_in = b""
        self._raw = False  # the board's REPL is the raw one (mpremote), not the friendly one
        self._unanswered = b""  # written to the board since its last output
        # Client bytes wait while `_wait(output since)` is false (after Ctrl-C: a prompt;
        # after a start: the interpreter running) or until `_wait_until`.
        self._wait = None
        self._hold = b""
        self._wait_until = 0.0
        self._seen = b""
        self._slave = -1  # the board's terminal, kept to switch signal characters
        self._improv = b""  # the start of a client Improv packet, waiting for its end
        self._literal = False  # a packet went out with ISIG off; on again at the answer
        self._reset = False  # machine.reset() asked for a hard reset

    def _launch(self, files, raw):
        master, slave = pty.openpty()
        tty.setraw(slave)
        attrs = termios.tcgetattr(slave)
        attrs[3] |= termios.ISIG | termios.NOFLSH  # 0x03 while code runs: SIGINT, input kept
        attrs[6][termios.VQUIT] = attrs[6][termios.VSUSP] = 0  # only Ctrl-C is a signal
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        env = dict(os.environ, MICROPYPATH=":".join(["", self.rom, SHIMS, "lib", ".frozen"]))
        env.pop("FIRMWARE_ROOT", None)  # the data root is the board's filesystem: cwd
        env["IMPROV_SERIAL"] = "1"  # the console is a serial port: Improv Wi-Fi listens
        cmd = [self.micropython]
        if self.heapsize:
            cmd += ["-X", "heapsize=" + self.heapsize]
        cmd += ["-i", "-c", _BOOT % {"files": files, "ready": _READY}]

        def controlling_tty():  # runs in the child: the pty becomes its terminal, for SIGINT
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdin=slave, stdout=slave,
                                     stderr=slave, preexec_fn=controlling_tty)
        if self._slave >= 0:
            os.close(self._slave)
        self._slave = slave  # kept open (not read): signal characters switch on it
        self._literal = False
        self.board = master
        if raw:  # back to the raw REPL once the new process shows its friendly prompt
            self._hold_until(_prompt, 15.0, first=b"\r\x01")
        else:
            self._hold_until(_ready, 15.0)

    def power_on(self):
        self._launch(["boot.py", "main.py"], raw=False)

    def _to_client(self, data):
        if self.trace:
            self.trace.write("board> %r\n" % data)
        # unread output is capped: the newest _BACKLOG bytes while nobody listens (what
        # the next console shows first), much more for a connected client that lags
        self._out = (self._out + data)[-(_LAG if self._connected else _BACKLOG):]

    def _flush_client(self):
        try:
            n = os.write(self.client, self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # the client went away between poll and write
            return
        self._out = self._out[n:]

    def _from_client(self, data):
        if self._wait:
            self._hold += data
            return
        data, self._improv = self._improv + data, b""
        at = data.find(b"IMPROV")
        if at >= 0:
            head, pkt = data[:at], data[at:]
            if head:
                self._from_client(head)
                if self._wait:  # the head asked to wait: the packet waits with the rest
                    self._hold += pkt
                    return
            end = 10 + pkt[8] if len(pkt) >= 9 else len(pkt) + 1
            if len(pkt) < end:
                self._improv = pkt
                return
            self._set_isig(False)
            self._literal = True
            self._write_board(pkt[:end])
            self._hold_until(lambda seen: b"IMPROV" in seen, 3.0, first=pkt[end:])
            return
        cut = data.find(b"\x03") + 1
        if cut:
            # after a Ctrl-C the unix port drops pending input when it gets back to a prompt:
            # what follows waits for the prompt, as it would in a board's UART buffer
            self._write_board(data[:cut])
            self._hold_until(_prompt, 1.0, first=data[cut:])
        else:
            self._write_board(data)

    def _hold_until(self, ready, seconds, first=b""):
        self._wait = ready
        self._hold = first + self._hold
        self._wait_until = time.monotonic() + seconds
        self._seen = b""

    def _write_board(self, data):
        if not data:
            return
        if self.trace:
            self.trace.write("host>  %r\n" % data)
        self._last_in = data
        self._unanswered += data
        try:
            os.write(self.board, data)
        except OSError:
            pass

    def _set_isig(self, on):
        try:
            attrs = termios.tcgetattr(self._slave)
            attrs[3] = attrs[3] | termios.ISIG if on else attrs[3] & ~termios.ISIG
            termios.tcsetattr(self._slave, termios.TCSANOW, attrs)
        except (OSError, termios.error):  # the board is restarting
            pass

    def _release(self):
        if self._wait(self._seen) or time.monotonic() > self._wait_until:
            if self._literal:  # the board read the packet: Ctrl-C is a signal again
                self._literal = False
                self._set_isig(True)
            time.sleep(0.02)  # the prompt is printed just before the terminal flush
            data, self._hold, self._wait = self._hold, b"", None
            if data:
                self._from_client(data)

    def _restart(self, code):
        try:
            os.close(self.board)
        except OSError:
            pass
        if code == 0 and self._last_in.endswith(b"\x04"):
            self._unanswered = b""
            self._to_client(b"MPY: soft reboot\r\n")
            # from the raw REPL: boot.py only, back to raw; from the friendly one, as a board
            # does: boot.py, main.py, friendly REPL
            self._launch(["boot.py"] if self._raw else ["boot.py", "main.py"], raw=self._raw)
            return
        # input the old process never answered goes to the new one (a reset mid-command)
        self._hold, self._unanswered = self._unanswered + self._hold, b""
        if code == RESET_EXIT:
            self._to_client(b"\r\n[virtual board] hard reset\r\n")
            self.power_on()
        else:
            self._to_client(b"\r\n[virtual board] micropython exited with %d; rebooting\r\n"
                            % code)
            time.sleep(0.5)  # a crash loop (main.py raising SystemExit) must not spin the CPU
            self.power_on()

    def _client_connected(self):
        probe = select.poll()
        probe.register(self.client, select.POLLIN)
        return not any(ev & select.POLLHUP for _, ev in probe.poll(0))

    def run(self):
        self.power_on()
        while True:
            connected = self._client_connected()
            if connected != self._connected:
                self._connected = connected
                if not connected:
                    self._out = self._out[-_BACKLOG:]
            waiting = select.poll()
            waiting.register(self.board, select.POLLIN)
            if connected:  # (a hung-up master would wake poll at once, forever)
                waiting.register(self.client,
                                 select.POLLIN | (select.POLLOUT if self._out else 0))
            timeout = 50 if self._wait or not connected else 1000
            for fd, ev in waiting.poll(timeout):
                if fd == self.client:
                    if ev & select.POLLIN:
                        try:
                            data = os.read(self.client, 4096)
                        except OSError:
                            data = b""
                        if data:
                            self._from_client(data)
                    if ev & select.POLLOUT:
                        self._flush_client()
                elif ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    try:
                        data = os.read(self.board, 4096)
                    except OSError:  # EIO: the process closed its terminal (exiting)
                        data = b""
                    if data:
                        self._board_output(data)
                    else:
                        time.sleep(0.005)  # the process is exiting: do not spin on EIO
            if connected and self._out:
                self._flush_client()
            if self._wait:
                self._release()
            code = self.proc.poll()
            if code is not None:
                self._drain()
                if self._reset:
                    self._reset, code = False, RESET_EXIT
                self._restart(code)

    def _board_output(self, data):
        mark = _RESET_MARK.encode()
        if mark in data:
            data = data.replace(mark, b"")
            self._reset = True
            if self.proc.poll() is None:
                self.proc.kill()
        raw_at, prompt_at = data.rfind(b"raw REPL; CTRL-B to exit"), data.rfind(b">>> ")
        if raw_at != prompt_at:  # which REPL a Ctrl-D would soft-reset from
            self._raw = raw_at > prompt_at
        self._seen = (self._seen + data)[-4096:]
        self._unanswered = b""
        self._to_client(data)

    def _drain(self):
        if self._slave >= 0:  # else reading the ended board's terminal would block
            os.close(self._slave)
            self._slave = -1
        while True:
            try:
                data = os.read(self.board, 4096)
            except OSError:
                return
            if not data:
                return
            self._board_output(data)

    def stop(self):
        if self._slave >= 0:
            os.close(self._slave)
            self._slave = -1
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.rom, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", help="the board's filesystem (default: a new temp dir)")
    ap.add_argument("--heapsize", help="micropython -X heapsize, e.g. 512K")
    ap.add_argument("--trace", help="append every byte relayed, each way, to this file")
    a = ap.parse_args()
    root = a.root or tempfile.mkdtemp(prefix="vboard-")
    os.makedirs(root, exist_ok=True)
    trace = open(a.trace, "a", buffering=1) if a.trace else None
    board = VirtualBoard(root, heapsize=a.heapsize, trace=trace)
    print("port: %s" % board.port)
    print("root: %s" % board.root, flush=True)

    def stop(*_):
        board.stop()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        board.run()
    except KeyboardInterrupt:
        stop()


if __name__ == "__main__":
    main()
