# Mounts, starts the watchdog, checks safe mode and picks the OTA slot; nothing networked.
# (Filled in by the board and OTA work; on the host this file does nothing.)
