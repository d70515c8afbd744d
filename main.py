# Runs the firmware: boot.py has already mounted storage and chosen the app slot.
import firmware.app

firmware.app.main()
