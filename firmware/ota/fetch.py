"""The heavy half of an app update, loaded only while one runs (firmware/ota/updater.py
keeps the triggers resident): stream the bundle to flash, verify it, unpack it into the
inactive slot, stage the trial. Functions of the Updater `u` (its root, key, client, hooks).
"""
import hashlib
import os

from micropython import const

from firmware import log
from firmware.ota import slots
from firmware.ota.errors import Busy, DownloadFailed, UpdateError

_TAG = "ota"

_MAX_DOWNLOAD = const(4 * 1024 * 1024 + 16384)  # bundle payload limit + header room
# 4 MB at 8 KB/s: a slow link still finishes, a trickling server does not hold the client
_DOWNLOAD_DEADLINE_MS = const(600000)


def _rmtree(p):
    try:
        names = os.listdir(p)
    except OSError:
        try:
            os.remove(p)  # a file where the directory should be
        except OSError:
            pass
        return
    for name in names:
        full = p + "/" + name
        if os.stat(full)[0] & 0x4000:
            _rmtree(full)
        else:
            os.remove(full)
    os.rmdir(p)


def remove(p):
    try:
        os.remove(p)
    except OSError:
        pass


async def download(u, url, sha256=None):
    """Stream the bundle to ota/download.bin in chunk-sized writes; returns its path."""
    try:
        os.mkdir(slots.path(u.root, "ota"))
    except OSError:  # exists
        pass
    dest = slots.path(u.root, "ota", "download.bin")
    remove(dest)  # a cut download starts over
    h = hashlib.sha256() if sha256 else None
    size = [0]
    f = open(dest, "wb")
    try:
        def sink(chunk):
            size[0] += len(chunk)
            if size[0] > _MAX_DOWNLOAD:
                raise DownloadFailed("bundle larger than %d bytes" % _MAX_DOWNLOAD)
            f.write(chunk)
            if h is not None:
                h.update(chunk)
            u.step("download", size[0])

        log.info(_TAG, "downloading %s", url)
        resp = await u.client().request("GET", url, sink=sink,
                                         deadline_ms=_DOWNLOAD_DEADLINE_MS)
    except BaseException:
        f.close()
        remove(dest)
        raise
    f.close()
    if resp.status != 200:
        remove(dest)
        raise DownloadFailed("bundle download answered %d" % resp.status)
    if h is not None and h.digest().hex() != sha256.lower():
        remove(dest)
        raise DownloadFailed("bundle SHA-256 differs from the one announced")
    log.info(_TAG, "downloaded %d bytes", size[0])
    return dest


def install(u, bundle, version=None):
    """Verify `bundle` (a file), unpack it into the inactive slot and stage it for the next
    boot. Returns the bundle's version. On any error the slot is emptied, the state file
    untouched and the error raised."""
    # with Ed25519: loaded after the download, once its TLS session is closed
    from firmware.ota import bundle as ota_bundle

    slot = slots.inactive(u.root)
    if slot is None:
        raise Busy("an update is on trial; confirm or roll back first")
    from firmware.ota import versions

    dest = slots.slot_dir(u.root, slot)
    with open(bundle, "rb") as f:
        manifest, _ = ota_bundle.read_manifest(f, u.key)
        got = manifest["version"]
        if version is not None and got != version:
            raise UpdateError("bundle is version %s, expected %s" % (got, version))
        least = versions.check(u.root, u.version(), manifest)  # no downgrade, signed or not
        u.step("verified", got)
        _rmtree(dest)
        os.mkdir(dest)
        try:
            ota_bundle.extract(f, manifest, dest, chunk=u.chunk,
                               progress=lambda p: u.step("unpack", p))
        except BaseException:
            _rmtree(dest)
            raise
    u.step("unpacked", got)
    slots.stage(u.root, slot, got, u.trials)
    versions.raise_floor(u.root, least)
    remove(bundle)
    log.info(_TAG, "update %s in slot %s, on trial at the next boot", got, slot)
    u.step("switched", got)
    return got
