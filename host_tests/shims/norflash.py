"""Host stand-in for a raw data partition (`esp32.Partition`) on NOR flash, over a file.

The methods and their meaning are esp32.Partition's block-device interface
(ports/esp32/esp32_partition.c): `readblocks(block, buf, offset=0)`,
`writeblocks(block, buf)` (erases the blocks first), `writeblocks(block, buf, offset)` (a plain
program, no erase) and `ioctl(4 / 5 / 6)` (block count, block size, erase one block).

NOR semantics: an erase sets a sector to 0xFF; a program can only clear bits (the flash ANDs
the new bytes into the old ones), so programming a byte twice is allowed and gives old & new.
`strict` turns a program that would need a 0 -> 1 transition into an error (a bug in the store).

Counts: erases, programs (writeblocks calls), programmed bytes, read calls and bytes read.

Power cuts: `cut_at = k` makes the k-th block operation (program or erase, counting from 1
after the last `zero()`) torn and raises PowerCut; every later operation raises it too until
`reboot()`. A torn program has programmed a prefix of its bytes and part of the bits of the
next one; a torn erase has set a prefix of the sector to 0xFF and left the rest as it was, or
the end of the sector with `erase_tail` (`torn` picks the split point in eighths, 0..8, so
tests can walk every case).
"""

import os


class PowerCut(Exception):
    pass


class NorError(Exception):
    pass


class NorPartition:
    def __init__(self, path, sectors=16, sector_size=4096):
        self.path = path
        self.ss = sector_size
        self.n = sectors
        size = sectors * sector_size
        try:
            have = os.stat(path)[6]
        except OSError:
            have = -1
        if have != size:
            with open(path, "wb") as f:
                f.write(b"\xff" * size)
        self.f = open(path, "r+b")
        self.strict = False
        self.conflicts = 0  # programs that asked for a 0 -> 1 transition
        self.cut_at = None
        self.torn = 4
        self.erase_tail = False
        self.zero()

    def zero(self):
        self.erases = self.progs = self.prog_bytes = self.reads = self.read_bytes = 0
        self.ops = 0
        self.dead = False

    def reboot(self):
        self.cut_at = None
        self.dead = False

    def close(self):
        self.f.close()

    # ---- the esp32.Partition interface
    def readblocks(self, block, buf, offset=0):
        if self.dead:
            raise PowerCut("read after the power cut")
        start = block * self.ss + offset
        self._range(start, len(buf))
        self.f.seek(start)
        got = self.f.readinto(buf)
        if got != len(buf):
            raise OSError(5)
        self.reads += 1
        self.read_bytes += len(buf)

    def writeblocks(self, block, buf, offset=None):
        if offset is None:  # esp32.Partition: a write without offset erases its blocks first
            for b in range(block, block + (len(buf) + self.ss - 1) // self.ss):
                self.ioctl(6, b)
            offset = 0
        self._program(block * self.ss + offset, bytes(buf))

    def ioctl(self, op, arg):
        if op == 4:
            return self.n
        if op == 5:
            return self.ss
        if op == 6:
            self._erase(arg)
            return 0
        return None

    # ---- flash behaviour
    def _range(self, start, ln):
        if start < 0 or start + ln > self.n * self.ss:
            raise OSError(22)  # EINVAL, as esp_partition_read/write refuse it

    def _tick(self):
        if self.dead:
            raise PowerCut("flash operation after the power cut")
        self.ops += 1
        return self.cut_at is not None and self.ops >= self.cut_at

    def _program(self, start, data):
        self._range(start, len(data))
        cut = self._tick()
        self.f.seek(start)
        old = self.f.read(len(data))
        new = bytearray(len(data))
        bad = 0
        for i in range(len(data)):
            new[i] = old[i] & data[i]
            if new[i] != data[i]:
                bad += 1
        if bad:
            self.conflicts += 1
            if self.strict and not cut:
                raise NorError("program at %d needs a 0 -> 1 transition" % start)
        if cut:
            keep = len(data) * self.torn // 8
            part = bytearray(old)
            part[:keep] = new[:keep]
            if keep < len(data):
                part[keep] = old[keep] & (data[keep] | 0x0F)  # half of the next byte's bits
            new = part
        self.f.seek(start)
        self.f.write(new)
        self.progs += 1
        self.prog_bytes += len(data)
        if cut:
            self.dead = True
            raise PowerCut("program torn at op %d" % self.ops)

    def _erase(self, block):
        if not 0 <= block < self.n:
            raise OSError(22)
        cut = self._tick()
        ln = self.ss * self.torn // 8 if cut else self.ss
        self.f.seek(block * self.ss + (self.ss - ln if self.erase_tail else 0))
        self.f.write(b"\xff" * ln)
        self.erases += 1
        if cut:
            self.dead = True
            raise PowerCut("erase torn at op %d" % self.ops)

    # ---- test helpers
    def peek(self, start, ln):
        self.f.seek(start)
        return self.f.read(ln)

    def poke(self, start, data):
        """Overwrite bytes as they are (bit rot, garbage): not a flash operation."""
        self.f.seek(start)
        self.f.write(data)
