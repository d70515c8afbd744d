"""Firmware image updates (firmware/ota/image.py) into the file-backed esp32.Partition from
host_tests/shims, on both runtimes: the bundle fed in arbitrary pieces lands block by block in
the next OTA partition, which boots only when signature, size and SHA-256 are right; trial,
confirm (mark_app_valid_cancel_rollback) and a bootloader rollback reported by version."""
import gc
import os

import esp32
from test_ota_bundle import OTHER_SEED, make_bundle, pub, read_file

import support
from firmware.ota import bundle as ota_bundle
from firmware.ota import image

IMAGE = bytes((i * 7 + (i >> 8)) & 0xFF for i in range(3 * 4096 + 1000))


_SIZE = esp32.Partition.SIZE


def fresh_partitions():
    # the shim partition reads and rewrites its whole file per block write: keep it at 64 KB
    # (the 256 KB default fragments the unix port's heap after other test files)
    esp32.Partition.SIZE = 16 * 4096
    gc.collect()
    d = support.tmpdir("parts")
    esp32.PARTITION_DIR[0] = d
    esp32.Partition._boot[0] = "ota_0"
    esp32.Partition._running[0] = "ota_0"
    del esp32.Partition._valid_calls[:]
    return d


def done(d):
    esp32.Partition.SIZE = _SIZE
    support.rmtree(d)


def feed(data, step, seed=None):
    part = esp32.Partition(esp32.Partition.RUNNING).get_next_update()
    w = image.ImageWriter(part, pub())
    for i in range(0, len(data), step):
        w.feed(data[i:i + step])
    return w


def test_image_streams_into_the_next_partition_in_any_pieces():
    for step in (1000, 4096, 333, 9000):
        d = fresh_partitions()
        w = feed(make_bundle([("micropython.bin", IMAGE)], version="1.29.1"), step)
        assert w.finish()["version"] == "1.29.1"
        flash = read_file(d + "/ota_1")
        assert flash[:len(IMAGE)] == IMAGE
        assert flash[len(IMAGE):4 * 4096] == b"\xff" * (4 * 4096 - len(IMAGE))
        assert len(flash) == esp32.Partition.SIZE
        assert "ota_0" not in os.listdir(d)  # the running firmware untouched
        done(d)


def test_bad_images_are_refused():
    d = fresh_partitions()
    good = make_bundle([("micropython.bin", IMAGE)])
    tampered = bytearray(good)
    tampered[-1] ^= 0x80
    w = feed(bytes(tampered), 4096)
    support.raises(ota_bundle.BadHash, w.finish)
    support.raises(ota_bundle.BadSignature, feed,
                   make_bundle([("micropython.bin", IMAGE)], seed=OTHER_SEED), 512)
    support.raises(ota_bundle.Truncated, feed(good[:-10], 512).finish)
    support.raises(ota_bundle.BadSize, feed, good + b"x", 512)
    support.raises(ota_bundle.BadManifest, feed, b"GARBAGE!" + good, 512)
    two = make_bundle([("a.bin", b"1"), ("b.bin", b"2")])
    support.raises(ota_bundle.BadManifest, feed, two, 512)
    # refused from the signed manifest alone, before a byte of it is written
    too_big = make_bundle([], manifest={"format": 1, "version": "1", "files": [
        {"path": "micropython.bin", "size": esp32.Partition.SIZE + 1, "sha256": "00" * 32}]})
    support.raises(ota_bundle.BadSize, feed, too_big, 4096)
    assert esp32.Partition._boot[0] == "ota_0"
    done(d)


class Client:
    """Answers one GET with canned bytes through the sink, in 1 KB pieces (as http.Client
    does); the real HTTPS path is in host_tests/system/test_ota_update.py."""

    def __init__(self, data, status=200):
        self.data = data
        self.status = status

    async def request(self, method, url, sink=None):
        for i in range(0, len(self.data), 1024):
            sink(memoryview(self.data)[i:i + 1024])

        class Resp:
            pass

        r = Resp()
        r.status = self.status
        return r


def updater(root, data, status=200):
    resets = []
    u = image.ImageUpdater(root, pub(), client=Client(data, status),
                           partition_class=esp32.Partition, reset=lambda: resets.append(1))
    return u, resets


def test_update_sets_boot_then_trial_is_confirmed():
    d = fresh_partitions()
    root = support.tmpdir("img")
    u, resets = updater(root, make_bundle([("micropython.bin", IMAGE)], version="1.30"))
    support.run(u.run("https://x/fw.bin", "1.30"))
    assert esp32.Partition._boot[0] == "ota_1" and resets == [1]
    assert image.pending(root) == "1.30"
    esp32.Partition._running[0] = "ota_1"  # the bootloader started the new image
    assert u.status() == "trial"
    assert image.confirm_trial(root, esp32.Partition) == "1.30"
    assert esp32.Partition._valid_calls == [1]
    assert u.status() is None and image.pending(root) is None
    assert u.confirm() is None
    support.rmtree(root)
    done(d)


def test_bootloader_rollback_is_reported_by_version():
    d = fresh_partitions()
    root = support.tmpdir("img")
    u, resets = updater(root, make_bundle([("micropython.bin", IMAGE)], version="1.31"))
    support.run(u.run("https://x/fw.bin"))
    # the new image never confirmed: the bootloader went back to ota_0
    assert image.pending(root) == "1.31"
    assert image.confirm_trial(root, esp32.Partition) is None
    assert u.status() == "rolled back"
    assert u.failure() == {"version": "1.31", "reason": "bootloader rolled back"}
    assert image.pending(root) is None
    assert u.confirm() is None and esp32.Partition._valid_calls == []
    support.rmtree(root)
    done(d)


def test_refused_image_is_never_set_to_boot():
    d = fresh_partitions()
    root = support.tmpdir("img")
    good = make_bundle([("micropython.bin", IMAGE)], version="1.32")
    for data, status, exc in ((good[:-1], 200, ota_bundle.Truncated),
                              (good, 404, image.DownloadFailed),
                              (make_bundle([("micropython.bin", IMAGE)], version="9"), 200,
                               image.UpdateError)):
        u, resets = updater(root, data, status)
        support.run(support.araises(exc, u.run("https://x/fw.bin", "1.32")))
        assert resets == [] and esp32.Partition._boot[0] == "ota_0"
        assert u.status() is None
    support.rmtree(root)
    done(d)
