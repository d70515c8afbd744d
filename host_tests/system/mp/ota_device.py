# One power-on of a board in the OTA system test: runs the data root's boot.py, then its
# main.py, in one namespace, the way the ESP32 port does. The root (FIRMWARE_ROOT) is first on
# MICROPYPATH, standing for the board's "/".
import os

_root = os.getenv("FIRMWARE_ROOT")
_g = {"__name__": "__main__"}
for _name in ("boot.py", "main.py"):
    with open(_root + "/" + _name) as _f:
        exec(_f.read(), _g)
