"""Over-the-air updates: A/B app slots (slots, read by boot.py), bundle download and install
(updater), whole-firmware images through esp32.Partition (image). Layout: docs/ota.md."""
