# Boot: mount, check safe mode, pick the OTA app slot. Nothing networked, no app import.
# The factory firmware/ (never written by OTA) provides the slot logic; the chosen slot
# directory goes first on sys.path so main.py's `import firmware.app` loads the slot's app.
# Layout and rules: docs/ota.md.
import sys


def _boot(root):
    from firmware.ota import slots

    slot, note = slots.choose(root)
    active = None
    try:
        from firmware import safemode

        active = safemode.check(root)
        safemode.active = active
    except ImportError:  # a build without safe mode
        pass
    if note:
        print("boot:", note)
    if active:
        print("boot: safe mode (%s): app not started, REPL stays" % active)
        return
    if slot is None:
        return
    sys.path.insert(0, slot)
    # forget the factory package so the slot's is imported; keep the slot logic loaded, so
    # main.py and the app share this (factory) copy of it
    for name in list(sys.modules):
        if (name == "firmware" or name.startswith("firmware.")) and name != slots.__name__:
            del sys.modules[name]
    print("boot: app from", slot)


# The frozen _boot.py has already mounted the internal LittleFS at / on the board, with a
# modification time on every file; firmware/fsmount.py mounts it again without (less wear).
if sys.platform == "esp32":
    import vfs
    from flashbdev import bdev

    from firmware import fsmount

    fsmount.remount(vfs, bdev)
_boot("" if sys.platform == "esp32" else (__import__("os").getenv("FIRMWARE_ROOT") or ""))
