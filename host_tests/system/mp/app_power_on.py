# One power-on of a board running the real firmware in host_tests/system/test_ota_app_e2e.py:
# the data root's boot.py, then its main.py, in one namespace, as the ESP32 port runs them.
# machine.reset() (the OTA updater's last step) ends the process with exit code 77, so the
# test sees the reset and starts the next boot as a new process.
import os
import sys

import machine  # the host shim (host_tests/shims is on MICROPYPATH)

_RESET_EXIT = 77


def _reset():
    print("[board] machine.reset()")
    sys.exit(_RESET_EXIT)  # SystemExit passes the supervisor and the app's `except Exception`


machine.reset = _reset
_root = os.getenv("FIRMWARE_ROOT")
_g = {"__name__": "__main__"}
for _name in ("boot.py", "main.py"):
    with open(_root + "/" + _name) as _f:
        exec(_f.read(), _g)
