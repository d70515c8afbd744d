"""Host stand-in for `esp32`: NVS in a dict and OTA partitions backed by files (for OTA tests)."""

import os

PARTITION_DIR = ["/tmp/esp32-partitions"]


class NVS:
    _store = {}

    def __init__(self, namespace):
        self.ns = namespace
        self._store.setdefault(namespace, {})

    def set_i32(self, key, value):
        self._store[self.ns][key] = int(value)

    def get_i32(self, key):
        if key not in self._store[self.ns]:
            raise OSError(-4354)  # ESP_ERR_NVS_NOT_FOUND
        return self._store[self.ns][key]

    def set_blob(self, key, value):
        self._store[self.ns][key] = bytes(value)

    def get_blob(self, key, buf):
        data = self._store[self.ns][key]
        buf[: len(data)] = data
        return len(data)

    def erase_key(self, key):
        self._store[self.ns].pop(key, None)

    def commit(self):
        pass


class Partition:
    BOOT = 0
    RUNNING = 1
    TYPE_APP = 0
    TYPE_DATA = 1
    BLOCK = 4096
    SIZE = 64 * 4096
    _boot = ["ota_0"]
    _running = ["ota_0"]
    _valid_calls = []

    def __init__(self, id):
        if id == Partition.BOOT:
            id = self._boot[0]
        elif id == Partition.RUNNING:
            id = self._running[0]
        self.label = id
        try:
            os.mkdir(PARTITION_DIR[0])
        except OSError:
            pass
        self.path = PARTITION_DIR[0] + "/" + id

    def info(self):
        return (Partition.TYPE_APP, 0x10, 0, Partition.SIZE, self.label, False)

    def get_next_update(self):
        return Partition("ota_1" if self.label == "ota_0" else "ota_0")

    def _image(self):
        try:
            with open(self.path, "rb") as f:
                data = bytearray(f.read())
        except OSError:
            data = bytearray(b"\xff" * Partition.SIZE)
        return data

    def readblocks(self, block, buf, offset=0):
        start = block * Partition.BLOCK + offset
        buf[:] = self._image()[start: start + len(buf)]

    def writeblocks(self, block, buf, offset=None):
        data = self._image()
        start = block * Partition.BLOCK + (offset or 0)
        data[start: start + len(buf)] = buf
        with open(self.path, "wb") as f:
            f.write(data)

    def ioctl(self, op, arg):
        if op == 4:
            return Partition.SIZE // Partition.BLOCK
        if op == 5:
            return Partition.BLOCK
        if op == 6:
            return 0
        return None

    def set_boot(self):
        Partition._boot[0] = self.label

    @staticmethod
    def mark_app_valid_cancel_rollback():
        Partition._valid_calls.append(1)
