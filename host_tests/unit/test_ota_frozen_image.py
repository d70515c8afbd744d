"""App bundles on the frozen image (firmware/ota/updater.py): a board running the firmware
frozen in its image without PSRAM refuses an app bundle (its .mpy code would load into a heap
that cannot hold it) before the download writes anything; with PSRAM, or with the firmware on
the filesystem, the update goes ahead. Both runtimes."""
import os
import sys

import support
from firmware.ota import slots, updater


class Reached(Exception):
    """The fake server was asked for the bundle: the update went past the refusal."""


class FakeClient:
    def __init__(self):
        self.requests = []

    async def request(self, method, url, *args, **kwargs):
        self.requests.append((method, url))
        raise Reached()

    async def close(self):
        pass


def _with(frozen, psram, fn):
    saved = updater.running_frozen, updater.has_psram
    updater.running_frozen = lambda: frozen
    updater.has_psram = lambda: psram
    try:
        return fn()
    finally:
        updater.running_frozen, updater.has_psram = saved


def _updater():
    root = support.tmpdir("frz")
    client = FakeClient()
    return root, client, updater.Updater(root, b"k" * 32, client=client, reset=lambda: None)


def test_app_bundle_refused_on_frozen_image_without_psram_before_anything_is_written():
    root, client, u = _updater()
    before = sorted(os.listdir(root))
    e = _with(True, False, lambda: support.raises(
        updater.AppBundleRefused, support.run, u.run("https://ota.example/b.bin", "1.2")))
    assert "frozen firmware image without PSRAM" in str(e)
    assert "image bundle" in str(e)
    assert isinstance(e, updater.UpdateError)  # the updater's callers log it and go on
    assert client.requests == []  # nothing downloaded
    assert sorted(os.listdir(root)) == before  # nothing written
    assert slots.on_trial(root) is None
    support.rmtree(root)


def test_app_bundle_goes_ahead_with_psram_or_from_the_filesystem():
    for frozen, psram in ((True, True), (False, False), (False, True)):
        root, client, u = _updater()
        _with(frozen, psram, lambda u=u: support.raises(
            Reached, support.run, u.run("https://ota.example/b.bin", "1.2")))
        assert client.requests and client.requests[0][1] == "https://ota.example/b.bin"
        support.rmtree(root)


def test_running_frozen_means_no_firmware_package_before_dot_frozen_on_the_path():
    saved = list(sys.path)
    empty = support.tmpdir("frz-empty")
    shadow = support.tmpdir("frz-shadow")
    os.mkdir(shadow + "/firmware")
    support.write(shadow + "/firmware/__init__.mpy", "")
    try:
        sys.path[:] = [empty, ".frozen"]
        assert updater.running_frozen()
        sys.path[:] = [empty, shadow, ".frozen"]  # a deployed package shadows the image
        assert not updater.running_frozen()
        sys.path[:] = [empty, ".frozen", shadow]  # after .frozen it does not
        assert updater.running_frozen()
        sys.path[:] = [empty, shadow]  # no image at all
        assert not updater.running_frozen()
    finally:
        sys.path[:] = saved
        support.rmtree(empty)
        support.rmtree(shadow)


def test_no_psram_on_the_host():
    assert not updater.has_psram()
