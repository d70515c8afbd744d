"""The board's filesystem mount: LittleFS without per-file modification times.

The port's frozen _boot.py mounts the vfs partition with VfsLfs2's defaults, which store an
8-byte mtime attribute with every file written: every write of a small file then costs at
least a 64-byte metadata commit. Without it a file of up to 8 bytes is one 32-byte commit (the
outbox's ack index) and up to 40 bytes one 64-byte commit (an outbox record): the outbox's
flash wear drops by about a quarter (bench/outbox-wear.md). Nothing in the firmware reads
mtime. The on-flash format is the same either way (the attribute is optional), so a board
that goes back to an image without this keeps its files.
"""


def remount(vfs, bdev, path="/"):
    """Mount bdev at path as LittleFS with mtime off, in place of what _boot.py mounted. True
    when done; on any failure (not LittleFS, no partition) the port's own mount stays."""
    if bdev is None:
        return False
    try:
        fs = vfs.VfsLfs2(bdev, mtime=False)
    except (AttributeError, OSError, TypeError, ValueError):  # no LittleFS in this build
        return False
    try:
        vfs.umount(path)
    except OSError:  # nothing mounted there: mount ours anyway
        pass
    try:
        vfs.mount(fs, path)
        return True
    except OSError:
        vfs.mount(bdev, path)  # what _boot.py does: detects the filesystem itself
        return False
