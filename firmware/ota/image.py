"""Whole-firmware (MicroPython image) updates through the ESP32's OTA partitions.

The image comes in a signed bundle (firmware/ota/bundle.py format) with exactly one file, the
image. It streams over HTTPS straight into the next OTA partition (`Partition(RUNNING)
.get_next_update()`) one 4 KB flash block at a time: the signature is checked before the
first block is written, the SHA-256 and size of the image as the last one is. Only a complete,
verified image is made the boot partition (`set_boot`). The new firmware runs on trial: the
ESP32 bootloader rolls back unless the app calls `confirm()` (`mark_app_valid_cancel_rollback`)
before the next reset; the health task does that once the cloud has accepted data again.
`ota/image.json` remembers which version was set to boot, so a rollback can be reported.
"""
import hashlib
import json
import os
import struct

from micropython import const

from firmware import log, statefile
from firmware.ota import slots
from firmware.ota.errors import DownloadFailed, UpdateError
from firmware.ota.updater import healthy_before_reset, reset_board

_TAG = "ota"
_STATE = "image.json"
_BLOCK = const(4096)
_HEADER = const(8)
_SIG = const(64)
_MAX_MANIFEST = const(8192)


class _Head:
    """The header, manifest and signature as a read-only stream for read_manifest (not
    seekable, so it does not look for payloads behind them)."""

    def __init__(self, data):
        self.data = data
        self.pos = 0

    def read(self, n):
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out


class ImageWriter:
    """Push parser: feed(bytes) the bundle as it arrives, then finish(). Writes the image's
    bytes to `partition` block by block; raises a BundleError on anything wrong."""

    def __init__(self, partition, public_key, block=_BLOCK, check=None):
        from firmware.ota import bundle  # with Ed25519: loaded only for an update

        self.ob = bundle
        self.part = partition
        self.key = public_key
        self.check = check  # check(manifest): refuses before the first block is written
        self.head = bytearray()
        self.need = _HEADER
        self.manifest = None
        self.size = 0
        self.h = hashlib.sha256()
        self.buf = bytearray(block)
        self.fill = 0
        self.block = 0
        self.got = 0
        self.capacity = partition.ioctl(4, 0) * partition.ioctl(5, 0)

    def feed(self, chunk):
        mv = memoryview(chunk)
        while len(mv):
            if self.manifest is None:
                take = min(len(mv), self.need - len(self.head))
                self.head.extend(mv[:take])
                mv = mv[take:]
                if len(self.head) == _HEADER == self.need:
                    n = struct.unpack("<I", self.head[4:8])[0]
                    if self.head[:4] != self.ob.MAGIC or not 2 <= n <= _MAX_MANIFEST:
                        raise self.ob.BadManifest("not an OTA bundle header")
                    self.need = _HEADER + n + _SIG
                elif len(self.head) == self.need:
                    self._start()
                continue
            self._payload(mv)
            return

    def _start(self):
        manifest, _ = self.ob.read_manifest(_Head(bytes(self.head)), self.key,
                                               max_total=self.capacity)
        if len(manifest["files"]) != 1:
            raise self.ob.BadManifest("an image bundle holds exactly one file")
        if self.check is not None:
            self.check(manifest)
        self.size = manifest["files"][0]["size"]
        self.manifest = manifest
        self.head = bytearray()  # the manifest bytes are no longer needed

    def _payload(self, mv):
        if self.got + len(mv) > self.size:
            raise self.ob.BadSize("bytes after the image")
        self.h.update(mv)
        self.got += len(mv)
        buf = self.buf
        while len(mv):
            take = min(len(mv), len(buf) - self.fill)
            buf[self.fill:self.fill + take] = mv[:take]
            self.fill += take
            mv = mv[take:]
            if self.fill == len(buf):
                self._write()

    def _write(self):
        for i in range(self.fill, len(self.buf)):
            self.buf[i] = 0xFF  # the erased state, for the last partial block
        self.part.writeblocks(self.block, self.buf)
        self.block += 1
        self.fill = 0

    def finish(self):
        """The image is complete and intact: returns the manifest, else raises."""
        if self.manifest is None or self.got < self.size:
            raise self.ob.Truncated("download ended inside the image")
        if self.fill:
            self._write()
        if self.h.digest() != bytes.fromhex(self.manifest["files"][0]["sha256"]):
            raise self.ob.BadHash("image sha256 mismatch")
        return self.manifest


def _partition_class():
    import esp32  # only when used: no hardware object at import time

    return esp32.Partition


class ImageUpdater:
    """Firmware image updates. `partition_class` is esp32.Partition (tests pass the
    file-backed one from host_tests/shims); `client` an http.Client."""

    def __init__(self, root, public_key, client=None, partition_class=None, reset=reset_board,
                 hook=None):
        if public_key is None or len(public_key) != 32:
            raise UpdateError("no OTA public key")
        self.root = root
        self.key = public_key
        self.client = client
        self.part_cls = partition_class or _partition_class()
        self.reset = reset
        self.hook = hook

    def _step(self, stage, detail=None):
        if self.hook is not None:
            self.hook(stage, detail)

    def _load(self):
        try:
            with open(slots.path(self.root, "ota", _STATE)) as f:
                st = json.load(f)
        except (OSError, ValueError):
            return {}
        return st if isinstance(st, dict) else {}

    def _save(self, st):
        try:
            os.mkdir(slots.path(self.root, "ota"))
        except OSError:
            pass
        statefile.write_json(slots.path(self.root, "ota", _STATE), st)

    async def run(self, url, version=None):
        """Stream the image bundle into the next partition, verify, set it to boot, reset."""
        from firmware.ota import versions

        running = self.part_cls(self.part_cls.RUNNING)
        target = running.get_next_update()
        least = []

        def check(manifest):  # no downgrade, signed or not; before a byte is flashed
            least.append(versions.check(self.root, self.version(), manifest, "image"))

        writer = ImageWriter(target, self.key, check=check)

        def sink(chunk):
            writer.feed(chunk)
            self._step("download", writer.got)

        if self.client is None:
            raise UpdateError("no HTTP client")
        log.info(_TAG, "image download %s", url)
        resp = await self.client.request("GET", url, sink=sink)
        if resp.status != 200:
            raise DownloadFailed("image download answered %d" % resp.status)
        manifest = writer.finish()
        got = manifest["version"]
        if version is not None and got != version:
            raise UpdateError("image is version %s, expected %s" % (got, version))
        self._step("verified", got)
        label = target.info()[4]
        self._save({"pending": got, "partition": label, "from": running.info()[4],
                    "version": self.version()})
        target.set_boot()
        versions.raise_floor(self.root, least[0], "image")
        log.info(_TAG, "image %s in %s, on trial at the next boot", got, label)
        self._step("switched", got)
        healthy_before_reset(self.root)
        self.reset()

    def status(self):
        """After a boot: "trial" (the new image runs, confirm() pending), "rolled back" (the
        bootloader went back: the version is in failure()), or None."""
        st = self._load()
        if not st.get("pending"):
            return None
        here = self.part_cls(self.part_cls.RUNNING).info()[4]
        if here == st.get("partition"):
            return "trial"
        if not st.get("failed"):
            st["failed"] = {"version": st["pending"], "reason": "bootloader rolled back"}
            self._save(st)
        return "rolled back"

    def failure(self):
        return self._load().get("failed")

    def version(self):
        """The running image's version: the last one confirmed here, else this build's."""
        v = self._load().get("version")
        if isinstance(v, str):
            return v
        from firmware.version import VERSION

        return VERSION

    def confirm(self):
        """The new image works: cancel the bootloader's rollback. Returns its version."""
        if self.status() != "trial":
            return None
        self.part_cls.mark_app_valid_cancel_rollback()
        st = self._load()
        self._save({"version": st["pending"]})  # what the next image must be newer than
        log.info(_TAG, "image %s confirmed", st["pending"])
        return st["pending"]


def pending(root):
    """The image version set to boot and not yet confirmed, or None."""
    return slots.image_pending(root)


def confirm_trial(root, partition_class=None):
    """For the health task: confirm the running image if it is on trial (returns its
    version), or record a bootloader rollback (returns None)."""
    u = ImageUpdater(root, b"\0" * 32, partition_class=partition_class)
    if u.status() == "trial":
        return u.confirm()
    return None
