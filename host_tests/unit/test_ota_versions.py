"""No downgrade through OTA (firmware/ota/versions.py), both runtimes: semantic version order,
app bundles and images refuse a version not newer than the running one, the minimum secure
version only moves up and survives a reboot, and only a rollback flag inside the signed
manifest lets an older (never a below-minimum) version in."""
import json
import os

import esp32
from test_ota_bundle import OTHER_SEED, SEED, entry, frame, make_bundle, pub, sign, write_file
from test_ota_image import IMAGE, done, fresh_partitions, updater

import support
from firmware.ota import bundle as ota_bundle
from firmware.ota import image, slots, versions
from firmware.ota import updater as upd

FILES = [("firmware/__init__.py", b""), ("firmware/app.py", b"WHO = 'new'\n")]


def bundle(version, files=FILES, seed=None, **extra):
    m = {"format": 1, "version": version, "files": [entry(p, d) for p, d in files]}
    m.update(extra)
    if seed is None:
        return make_bundle(files, manifest=m)
    return make_bundle(files, seed=seed, manifest=m)


def test_semantic_order_with_pre_releases_and_short_forms():
    chain = ["0.9.9", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta",
             "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.9.0", "1.10.0", "2",
             "2.0.1"]  # the order semver.org gives, plus numbers that sort wrong as text
    for i in range(len(chain) - 1):
        assert versions.compare(chain[i], chain[i + 1]) == -1, chain[i:i + 2]
        assert versions.compare(chain[i + 1], chain[i]) == 1
    assert versions.compare("1.2", "1.2.0") == 0
    assert versions.compare("1.2.0+build.7", "1.2.0") == 0
    for bad in ("", "v1.0", "1.0.0.0", "1..0", "1.0-", "1.0-01", "mp-1.29", None, 7):
        support.raises(versions.BadVersion, versions.parse, bad)
    assert versions.newer("1.0.0", "factory")  # a pre-semver name ranks below any version


def _running(version="2.0.0"):
    """A board whose confirmed app is `version`."""
    root = support.tmpdir("ver")
    u = upd.Updater(root, pub(), reset=lambda: None)
    os.mkdir(root + "/ota")
    path = root + "/ota/download.bin"
    write_file(path, bundle(version))
    u.install(path)
    u.confirm()
    assert u.version() == version
    return root, u, path


def _state(root):
    with open(root + "/ota/state.json") as f:
        return f.read()


def test_an_app_bundle_older_or_equal_is_refused_and_a_newer_one_installed():
    root, u, path = _running("2.0.0")
    for old in ("1.0.0", "2.0.0", "2.0.0-rc.1", "2.0"):
        before = _state(root)
        write_file(path, bundle(old))
        e = support.raises(upd.Downgrade, u.install, path)
        assert "2.0.0" in str(e) and _state(root) == before
        assert "b" not in os.listdir(root + "/ota") or not os.listdir(root + "/ota/b")
    write_file(path, bundle("not-semver"))
    support.raises(versions.BadVersion, u.install, path)
    write_file(path, bundle("2.0.1"))
    assert u.install(path) == "2.0.1" and slots.on_trial(root) == "2.0.1"
    support.rmtree(root)


def test_the_minimum_secure_version_only_moves_up_and_survives_a_reboot():
    root, u, path = _running("2.0.0")
    write_file(path, bundle("2.1.0", min_version="2.0.0"))
    u.install(path)
    u.confirm()
    versions.raise_floor(root, "1.0.0")  # never down
    u2 = upd.Updater(root, pub(), reset=lambda: None)  # a reboot: state from flash only
    assert versions.floor(root) == "2.0.0" and u2.version() == "2.1.0"
    write_file(path, bundle("1.5.0", rollback=True))  # signed rollback, but below the floor
    e = support.raises(upd.Downgrade, u2.install, path)
    assert "minimum secure version 2.0.0" in str(e)
    write_file(path, bundle("3.0.0", min_version="2.5.0"))
    u2.install(path)
    assert versions.floor(root) == "2.5.0"
    assert versions.floor(root, "image") is None  # images keep their own version line
    support.rmtree(root)


def test_only_a_rollback_signed_in_the_manifest_goes_back():
    root, u, path = _running("2.0.0")
    write_file(path, bundle("1.4.0", rollback=True))
    assert u.install(path) == "1.4.0" and slots.on_trial(root) == "1.4.0"
    support.rmtree(root)
    root, u, path = _running("2.0.0")
    # the same rollback manifest signed by another key, and a signed 1.4.0 whose manifest
    # got "rollback": true added afterwards: both fail the signature, nothing changes
    raw = json.dumps({"format": 1, "version": "1.4.0",
                      "files": [entry(p, d) for p, d in FILES]}).encode()
    tampered = raw.replace(b'"format"', b'"rollback": true, "format"')
    forged = frame(tampered, sign(SEED, raw), [d for _, d in FILES])
    for data in (bundle("1.4.0", seed=OTHER_SEED, rollback=True), forged):
        before = _state(root)
        write_file(path, data)
        support.raises(ota_bundle.BadSignature, u.install, path)
        assert _state(root) == before
    write_file(path, bundle("1.4.0", rollback="yes"))
    support.raises(versions.BadVersion, u.install, path)
    write_file(path, bundle("2.1.0", min_version="3.0.0"))
    support.raises(versions.BadVersion, u.install, path)
    support.rmtree(root)


def test_announcements_of_older_versions_are_not_even_downloaded():
    root, u, _ = _running("2.0.0")
    lines = []
    from firmware import log

    log.set_sink(lines.append)
    try:
        assert not u.wanted("1.9.9") and not u.wanted("2.0.0")
        assert u.wanted("2.0.1") and u.wanted("1.9.9", rollback=True)
    finally:
        log.set_sink(None)
    assert any("not newer" in ln for ln in lines)
    support.rmtree(root)


def test_an_image_not_newer_than_the_running_one_is_never_written():
    d = fresh_partitions()
    root = support.tmpdir("imgv")
    img = [("micropython.bin", IMAGE)]
    u, resets = updater(root, bundle("1.30.0", img))
    support.run(u.run("https://x/fw.bin"))
    esp32.Partition._running[0] = "ota_1"
    assert image.confirm_trial(root, esp32.Partition) == "1.30.0"
    assert u.version() == "1.30.0"
    for old in ("1.29.1", "1.30.0"):
        before = bytes(esp32.Partition("ota_0")._image())
        u, resets = updater(root, bundle(old, img))
        support.run(support.araises(upd.Downgrade, u.run("https://x/fw.bin")))
        assert bytes(esp32.Partition("ota_0")._image()) == before  # refused before a block
        assert resets == [] and esp32.Partition._boot[0] == "ota_1"
    u, resets = updater(root, bundle("1.29.1", img, rollback=True, min_version="1.29.0"))
    support.run(u.run("https://x/fw.bin"))
    assert resets == [1] and image.pending(root) == "1.29.1"
    assert versions.floor(root, "image") == "1.29.0" and versions.floor(root) is None
    support.rmtree(root)
    done(d)
