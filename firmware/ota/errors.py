"""The errors every update path raises (app bundles, firmware images, version checks), in
their own small module so the updater, fetch, image and versions share them without
importing each other."""


class UpdateError(Exception):
    """An update was refused or could not be completed; the running app is unchanged."""


class Busy(UpdateError):
    """Another update is running, or a new app is on trial and not yet confirmed."""


class Downgrade(UpdateError):
    """The signed bundle is not newer than the running version (and is not signed as a
    rollback), or it is below the minimum secure version (firmware/ota/versions.py)."""


class DownloadFailed(UpdateError):
    """The server's answer was not the bundle (status, size or whole-file SHA-256)."""
