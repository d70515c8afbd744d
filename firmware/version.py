"""The version of this build when it runs as the factory app (flashed by cable) or as the
firmware image: what an OTA update must be newer than before any slot holds a signed one
(firmware/ota/versions.py). A release sets it; 0.0.0 ranks below every release."""
VERSION = "0.0.0"
