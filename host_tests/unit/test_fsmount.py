"""firmware/fsmount.py: the board's LittleFS mounted again with mtime off (less flash wear)
and the port's own mount kept when that fails."""
import os

import support
from firmware import fsmount


class FakeVfs:
    # records what remount does; mount of a VfsLfs2 object fails when told to
    def __init__(self, fail_lfs=False, lfs_missing=False):
        self.calls = []
        self.fail_lfs = fail_lfs
        if lfs_missing:
            self.VfsLfs2 = None

    def VfsLfs2(self, bdev, **kw):
        self.calls.append(("VfsLfs2", bdev, kw))
        return ("lfs", bdev)

    def umount(self, path):
        self.calls.append(("umount", path))

    def mount(self, obj, path):
        self.calls.append(("mount", obj, path))
        if self.fail_lfs and isinstance(obj, tuple):
            raise OSError(19)


def test_remount_without_mtime_and_fallback():
    v = FakeVfs()
    assert fsmount.remount(v, "bdev") is True
    assert v.calls == [("VfsLfs2", "bdev", {"mtime": False}), ("umount", "/"),
                       ("mount", ("lfs", "bdev"), "/")]
    v = FakeVfs(fail_lfs=True)  # not LittleFS: the port's autodetecting mount comes back
    assert fsmount.remount(v, "bdev") is False
    assert v.calls[-1] == ("mount", "bdev", "/")
    v = FakeVfs(lfs_missing=True)  # a build without LittleFS: nothing touched
    assert fsmount.remount(v, "bdev") is False
    assert v.calls == []
    assert fsmount.remount(FakeVfs(), None) is False  # no vfs partition


class RamDevice:
    def __init__(self, nblocks=32, bs=4096):
        self.bs = bs
        self.nblocks = nblocks
        self.ram = bytearray(b"\xff" * (nblocks * bs))

    def readblocks(self, n, buf, off=0):
        start = n * self.bs + off
        buf[:] = self.ram[start:start + len(buf)]

    def writeblocks(self, n, buf, off=None):
        start = n * self.bs + (off or 0)
        self.ram[start:start + len(buf)] = buf

    def ioctl(self, op, arg):
        if op == 4:
            return self.nblocks
        if op == 5:
            return self.bs
        if op == 6:
            self.ram[arg * self.bs:(arg + 1) * self.bs] = b"\xff" * self.bs
        return 0


def test_remounted_littlefs_stores_no_mtime():
    if not support.IS_MICROPYTHON:  # VfsLfs2 is MicroPython's; the calls are checked above
        assert fsmount.remount(FakeVfs(), RamDevice(2)) is True
        return
    import vfs

    dev = RamDevice()
    vfs.VfsLfs2.mkfs(dev)
    vfs.mount(dev, "/fsm")  # as the port's _boot.py: autodetected, mtime on
    with open("/fsm/a", "w") as f:
        f.write("x")
    assert os.stat("/fsm/a")[8] != 0
    assert fsmount.remount(vfs, dev, "/fsm") is True
    with open("/fsm/b", "w") as f:
        f.write("y")
    assert os.stat("/fsm/b")[8] == 0  # no time attribute written
    with open("/fsm/a") as f:
        assert f.read() == "x"  # the files from before are all there
    vfs.umount("/fsm")
