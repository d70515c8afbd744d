"""Installing a downloaded bundle (firmware/ota/updater.py) on both runtimes: verify, unpack
into the inactive slot, stage the trial; every refusal leaves the state file and the running
app as they were. Downloads over real HTTPS are in host_tests/system/test_ota_update.py."""
import os

from test_ota_bundle import OTHER_SEED, make_bundle, pub, read_file, write_file

import support
from firmware.ota import bundle as ota_bundle
from firmware.ota import slots, updater

FILES = [("firmware/__init__.py", b""), ("firmware/app.py", b"WHO = 'new'\n"),
         ("lib/extra.txt", bytes(range(256)) * 9)]


def setup(data=None, version="1.1"):
    root = support.tmpdir("upd")
    steps = []
    u = updater.Updater(root, pub(), reset=lambda: steps.append("reset"),
                        hook=lambda stage, detail: steps.append(stage))
    os.mkdir(root + "/ota")
    path = root + "/ota/download.bin"
    write_file(path, data if data is not None else make_bundle(FILES, version=version))
    return root, u, path, steps


def state_bytes(root):
    try:
        return read_file(root + "/ota/state.json")
    except OSError:
        return None


def test_install_unpacks_into_the_inactive_slot_and_stages_a_trial():
    root, u, path, steps = setup()
    assert u.install(path, "1.1") == "1.1"
    for name, data in FILES:
        assert read_file(root + "/ota/a/" + name) == data
    assert slots.on_trial(root) == "1.1"
    assert slots.choose(root)[0] == root + "/ota/a"
    assert "download.bin" not in os.listdir(root + "/ota")  # flash freed
    assert steps[0] == "verified" and steps[-2:] == ["unpacked", "switched"]
    assert steps.count("unpack") == len(FILES)
    assert u.confirm() == "1.1" and u.version() == "1.1"
    # the next update goes to the other slot; the confirmed one is untouched
    write_file(path, make_bundle(FILES[:2], version="1.2"))
    u.install(path)
    assert slots.on_trial(root) == "1.2"
    assert sorted(os.listdir(root + "/ota/b/firmware")) == ["__init__.py", "app.py"]
    assert read_file(root + "/ota/a/lib/extra.txt") == FILES[2][1]
    support.rmtree(root)


def _refused(data, exc, version=None):
    root, u, path, steps = setup(data)
    before = state_bytes(root)
    support.raises(exc, u.install, path, version)
    assert state_bytes(root) == before
    assert slots.choose(root) == (None, None)  # still the running (factory) app
    assert "switched" not in steps
    assert "a" not in os.listdir(root + "/ota")  # nothing half-unpacked left behind
    support.rmtree(root)


def test_tampered_payload_is_refused_and_the_slot_emptied():
    data = bytearray(make_bundle(FILES))
    data[-100] ^= 1
    _refused(bytes(data), ota_bundle.BadHash)


def test_wrong_signature_is_refused_before_unpacking():
    _refused(make_bundle(FILES, seed=OTHER_SEED), ota_bundle.BadSignature)


def test_truncated_bundle_is_refused():
    _refused(make_bundle(FILES)[:-10], ota_bundle.Truncated)


def test_bundle_of_another_version_than_announced_is_refused():
    _refused(make_bundle(FILES, version="6.6.6"), updater.UpdateError, "1.1")


def test_no_update_while_a_trial_is_pending():
    root, u, path, steps = setup()
    u.install(path)
    write_file(path, make_bundle(FILES, version="1.3"))
    support.raises(updater.Busy, u.install, path)
    assert slots.on_trial(root) == "1.1"
    assert not u.wanted("1.3")
    support.rmtree(root)


def test_wanted_skips_the_running_and_the_rolled_back_version():
    root, u, path, steps = setup()
    assert not u.wanted("factory")
    assert u.wanted("1.1")
    u.install(path)
    slots.choose(root)
    slots.fail(root, "crashed: ValueError")
    assert u.failure() == {"version": "1.1", "reason": "crashed: ValueError"}
    assert not u.wanted("1.1")
    assert u.wanted("1.2")
    u.clear_failure()
    assert u.failure() is None
    support.rmtree(root)


def test_public_key_from_config_or_file():
    root = support.tmpdir("key")
    assert updater.public_key_from(None, root) is None
    assert updater.public_key_from("ab" * 32, root) == b"\xab" * 32
    support.raises(updater.UpdateError, updater.public_key_from, "abc", root)
    write_file(root + "/ota_public_key.bin", pub())
    assert updater.public_key_from("", root) == pub()
    support.raises(updater.UpdateError, updater.Updater, root, b"short")
    support.rmtree(root)


def test_manifest_urls_resolve_against_the_manifest():
    base = "https://h:8443/fw/manifest.json"
    assert updater._resolve(base, "b.bin") == "https://h:8443/fw/b.bin"
    assert updater._resolve(base, "/x/b.bin") == "https://h:8443/x/b.bin"
    assert updater._resolve(base, "https://o/b.bin") == "https://o/b.bin"


def test_command_refuses_values_it_cannot_use():
    root, u, path, steps = setup()
    assert not u.command("rm -rf /")
    assert not u.command("check")  # no ota.manifest_url configured
    assert not u.command(42)
    assert u.task is None
    support.rmtree(root)


def test_from_config_reads_the_ota_section():
    from firmware.config import Config

    root = support.tmpdir("cfg")
    off = Config({"cloud": {"ca_file": "ca.pem"}}, root, [])
    assert updater.Updater.from_config(off) is None  # no key: updates are off
    cfg = Config({"cloud": {"ca_file": "ca.pem"},
                  "ota": {"public_key": pub().hex(), "manifest_url": "https://h/m.json",
                          "interval_s": 600, "trial_boots": 3}}, root, [])
    u = updater.Updater.from_config(cfg)
    assert (u.key, u.manifest_url, u.interval_s, u.trials) == (pub(), "https://h/m.json",
                                                               600, 3)
    assert u.ca_file == root + "/ca.pem"
    support.rmtree(root)


class _Stop(BaseException):
    """Ends poll()'s endless loop from the injected sleep (poll catches only Exception)."""


class _Answer:
    def __init__(self, status, body):
        self.status = status
        self.body = body

    def json(self):
        return self.body


class _FlakyServer:
    """A client whose manifest requests fail (or answer) in the order given."""

    def __init__(self, outcomes):
        self.outcomes = list(outcomes)

    async def request(self, method, url):
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def _poll_waits(outcomes, interval_s=600):
    """The waits (ms) poll() asks for while the manifest requests end as `outcomes`."""
    root = support.tmpdir("poll")
    waits = []

    async def sleep_ms(ms):
        waits.append(ms)
        if len(waits) > len(outcomes):
            raise _Stop()

    u = updater.Updater(root, pub(), client=_FlakyServer(outcomes), interval_s=interval_s,
                        manifest_url="https://h/m.json", sleep_ms=sleep_ms)
    try:
        support.run(u.poll())
    except _Stop:
        pass
    support.rmtree(root)
    return waits, u


def test_poll_retries_a_failed_check_soon_and_backs_off_up_to_the_interval():
    # the running version ("factory") offered: a successful check that installs nothing
    same = _Answer(200, {"version": "factory", "url": "b.bin"})
    waits, u = _poll_waits([OSError(110), _Answer(503, None), MemoryError(), OSError(104),
                            same, OSError(113)])
    assert waits == [5000, 5000, 10000, 20000, 40000, 600000, 5000], waits
    assert isinstance(u.last_error, OSError)
    # the backoff stops at the interval
    waits, u = _poll_waits([OSError(110)] * 6, interval_s=60)
    assert waits == [5000, 5000, 10000, 20000, 40000, 60000, 60000], waits


def test_poll_waits_the_whole_interval_after_a_refused_manifest():
    # a refusal (unreadable manifest, a bad bundle) would not change by asking again soon
    waits, u = _poll_waits([_Answer(200, {"no": "version"}), _Answer(200, ["x"])])
    assert waits == [5000, 600000, 600000], waits
    assert isinstance(u.last_error, updater.UpdateError)
    assert not updater._transient(ota_bundle.BadSignature("x"))
    assert updater._transient(updater.DownloadFailed("manifest answered 503"))
