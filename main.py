# Runs the firmware: boot.py has already mounted storage and chosen the app slot.
from firmware import log

try:
    import firmware.app

    firmware.app.main()
except Exception as e:  # only a bug outside the supervised tasks gets here
    # redacted like every other line: a raw traceback could print a secret
    log.exc("main", "firmware stopped", e)
    raise SystemExit(1)
