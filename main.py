# Runs the firmware: boot.py has already mounted storage, checked safe mode and chosen the
# app slot. A crash of an app on OTA trial rolls back to the previous slot and resets.
import sys

try:  # loaded now, while the heap works: the crash handler may need it locked or not
    from firmware.heap import recover as _heap_back
except ImportError:  # a build without it still reports its crash
    def _heap_back(code=0):
        pass


def _root():
    if sys.platform == "esp32":
        return ""
    import os

    return os.getenv("FIRMWARE_ROOT") or ""


def _crashed(e):
    _heap_back(1)  # "heap is locked" would otherwise end this report with a MemoryError
    try:
        from firmware import log

        # redacted like every other line: a raw traceback could print a secret
        log.exc("main", "firmware stopped", e)
    except Exception:  # the app's own log module may be what is broken
        print("main: firmware stopped: %s (log unavailable)" % type(e).__name__)
    slots = sys.modules.get("firmware.ota.slots")
    if slots is None:
        try:
            from firmware.ota import slots
        except Exception:
            slots = None
    if slots is not None and slots.on_trial(_root()):
        version = slots.fail(_root(), "crashed: %s" % type(e).__name__)
        print("main: update %s failed on trial; back to the previous app at reset" % version)
    if sys.platform == "esp32":  # on the host the next run is the next boot
        import time

        import machine

        # a board in the field starts again; the boot counter turns repeated crashes into
        # safe mode, and the pause lets the line leave the UART and paces a crash loop
        time.sleep(2)
        machine.reset()


def _safe_mode():
    try:
        from firmware import safemode
    except ImportError:
        return None
    return safemode.active


def _run():
    try:
        reason = _safe_mode()
        if reason:
            print("main: safe mode (%s): app not started" % reason)
            return
        import firmware.app

        if firmware.app.main() == 1:  # not configured: take Wi-Fi over the serial port
            from firmware import improv

            improv.serve()
    except Exception as e:  # only a bug outside the supervised tasks gets here
        _crashed(e)
        raise SystemExit(1)


_run()
