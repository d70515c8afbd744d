"""App updates: download a signed bundle over HTTPS to flash, verify it, unpack it into the
inactive slot, switch with one atomic state-file replace, reset into the trial.

Every stage is safe to cut power in (docs/ota.md): the download and the unpack only touch
`ota/download.bin` and the inactive slot, which nothing boots from; the switch is one rename
(firmware/ota/slots.py); the first boots of the new app are trials that roll back on a crash,
a boot loop or a missing confirm(). An interrupted download starts over from byte 0.

Entry points: `Updater.start(url, version, sha256=None)` (a cloud adapter got a "new firmware"
message: runs the update as a background task), `poll()` (the `ota` task: a manifest URL
polled every `ota.interval_s`), `command(value)` (the command named by `ota.command`),
`confirm()` (the health task, once the cloud has accepted data
on the new app), `failure()` (an update that rolled back, for the adapter to report).
"""
import asyncio
import gc

from micropython import const

from firmware import log
from firmware.ota import slots
from firmware.ota.errors import Busy, Downgrade, DownloadFailed, UpdateError  # noqa: F401

_TAG = "ota"
_CHUNK = const(1024)
_MIN_INTERVAL_S = const(60)
_FIRST_CHECK_MS = const(5000)
_RETRY_FIRST_S = const(5)  # a check that failed on the network retries after 5, 10, 20 ... s


def public_key_from(cfg_value, root):
    """32-byte key: config `ota.public_key` (64 hex digits), else the file
    `ota_public_key.bin` in the data root (written at provisioning). None if neither."""
    if cfg_value:
        try:
            key = bytes.fromhex(cfg_value)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise UpdateError("ota.public_key must be 64 hex digits")
        return key
    try:
        with open(slots.path(root, "ota_public_key.bin"), "rb") as f:
            key = f.read()
    except OSError:
        return None
    return key if len(key) == 32 else None


# -- app bundles on the frozen image (docs/ota.md, docs/boards.md) ------------------------------
class AppBundleRefused(UpdateError):
    """An app bundle offered to a board running the frozen image without PSRAM."""


_PSRAM_REGION = const(1 << 20)  # an IDF data region this large is PSRAM (internal is ~320K)


def running_frozen():
    """True when the firmware package comes from the image: `.frozen` is on sys.path and no
    entry before it holds a `firmware` package (one would shadow the frozen code)."""
    import os
    import sys

    if ".frozen" not in sys.path:
        return False
    for entry in sys.path[:sys.path.index(".frozen")]:
        for name in ("__init__.py", "__init__.mpy"):
            try:
                os.stat((entry + "/" if entry else "") + "firmware/" + name)
                return False
            except OSError:
                pass
    return True


def has_psram():
    try:
        import esp32
    except ImportError:
        return False
    info = getattr(esp32, "idf_heap_info", None)
    if info is None:
        return False
    return any(region[0] >= _PSRAM_REGION for region in info(esp32.HEAP_DATA))


def app_bundle_refusal():
    """Why this board must not take an app bundle, or None. On the frozen image the code runs
    from flash; an app bundle installs .mpy files whose code loads into the GC heap (112K+,
    bench/memory.md), which a board without PSRAM does not have: update the image instead."""
    if running_frozen() and not has_psram():
        return ("app bundle refused: this board runs the frozen firmware image without PSRAM, "
                "and an app's .mpy code would not fit its heap; send an image bundle")
    return None
# -- end app bundles on the frozen image ---------------------------------------------------------


def _resolve(base, url):
    if "://" in url:
        return url
    cut = base.find("/", base.find("://") + 3)
    if url.startswith("/"):
        return (base[:cut] if cut > 0 else base) + url
    return base[:base.rfind("/") + 1] + url


def reset_board():
    import machine

    machine.reset()


def healthy_before_reset(root):
    """A reset into an update is not a crash: an app that downloaded, verified and staged an
    update runs fine, so its boot must not count toward safe mode (firmware/safemode.py, 3
    crashed boots). Otherwise short boots that each reset into an update (boot -> update ->
    trial -> next update within safemode.HEALTHY_AFTER_MS) put a failing trial into safe mode
    instead of rolling it back."""
    try:
        from firmware import safemode
    except ImportError:  # a build without safe mode
        return
    try:
        safemode.healthy(root)
    except OSError as e:
        log.warn(_TAG, "boot counter: %s", log.describe(e))


class Updater:
    """Owns `ota/` in the data root. `client` is a firmware.net.http.Client (made on demand
    from `ca_file`); `reset` restarts the board (machine.reset); `hook(stage, detail)` is
    told of each step (tests cut the power there)."""

    def __init__(self, root, public_key, client=None, ca_file=None, manifest_url=None,
                 interval_s=3600, trials=2, chunk=_CHUNK, reset=reset_board, hook=None,
                 sleep_ms=None):
        if public_key is None or len(public_key) != 32:
            raise UpdateError("no OTA public key (config ota.public_key or ota_public_key.bin)")
        self.root = root
        self.key = public_key
        self._client = client
        self._own_client = client is None
        self.ca_file = ca_file
        self.manifest_url = manifest_url
        self.interval_s = max(_MIN_INTERVAL_S, interval_s)
        self.trials = trials
        self.chunk = chunk
        self.reset = reset
        self.hook = hook
        self._sleep_ms = sleep_ms  # poll()'s waits (asyncio.sleep_ms); tests pass their own
        self.task = None
        self.last_error = None

    @classmethod
    def from_config(cls, cfg, **kw):
        """The app's updater from config `ota` {manifest_url, interval_s, public_key,
        trial_boots}; None when no public key is configured (updates are then off)."""
        key = public_key_from(cfg.get("ota.public_key", None), cfg.root)
        if key is None:
            return None
        ca = cfg.get("ota.ca_file", None) or cfg.get("cloud.ca_file", None)
        return cls(cfg.root, key, ca_file=slots.path(cfg.root, ca) if ca else None,
                   manifest_url=cfg.get("ota.manifest_url", None),
                   interval_s=cfg.get("ota.interval_s", 3600),
                   trials=cfg.get("ota.trial_boots", 2), **kw)

    def step(self, stage, detail=None):
        log.progress(_TAG, stage, detail)  # download and unpack progress in the log
        if self.hook is not None:
            self.hook(stage, detail)

    def client(self):
        if self._client is None:
            from firmware.net import http

            self._client = http.Client(ca_file=self.ca_file, timeout_ms=30000)
        return self._client

    def version(self):
        from firmware.version import VERSION

        return slots.running_version(self.root, VERSION)

    def failure(self):
        """{"version", "reason"} of the last update that rolled back, or None."""
        return slots.failure(self.root)

    def clear_failure(self):
        slots.clear_failure(self.root)

    def confirm(self):
        """The app on trial works: keep it. Returns its version or None (nothing on trial)."""
        version = slots.confirm(self.root)
        if version is not None:
            log.info(_TAG, "update %s confirmed", version)
        return version

    def start(self, url, version, sha256=None, rollback=False):
        """Run an update in the background (for a cloud message naming a new version).
        Returns False when it is not needed or cannot start now (the reason is logged)."""
        if self.task is not None and not self.task.done():
            log.info(_TAG, "update %s ignored: another update is running", version)
            return False
        if not self.wanted(version, rollback):
            return False
        self.task = asyncio.create_task(self._guarded(url, version, sha256))
        return True

    # An announcement is not signed: this only saves a download. The signed manifest is
    # what install() checks (firmware/ota/versions.py); `rollback` lets an announced older
    # version through to that check.
    def wanted(self, version, rollback=False):
        if version is not None and version == self.version():
            return False
        if version is not None and not rollback:
            from firmware.ota import versions

            try:
                ok = versions.newer(version, self.version())
            except versions.BadVersion as e:
                log.warn(_TAG, "update skipped: %s", e)
                return False
            if not ok:
                log.warn(_TAG, "update %s skipped: not newer than the running %s", version,
                         self.version())
                return False
        if slots.on_trial(self.root):
            log.info(_TAG, "update %s waits: an update is on trial", version)
            return False
        failed = slots.failure(self.root)
        if version is not None and failed and failed.get("version") == version:
            log.info(_TAG, "update %s skipped: it rolled back before (%s)", version,
                     failed.get("reason"))
            return False
        return True

    async def _guarded(self, url, version, sha256):
        try:
            await self.run(url, version, sha256)
        except Exception as e:  # logged and kept for the status; the app keeps running
            self.last_error = e
            log.warn(_TAG, "update %s failed: %s", version, log.describe(e))

    async def run(self, url, version=None, sha256=None):
        """Download, install and reset. Raises UpdateError, a BundleError or a network error
        (the running app unchanged); does not return when the update is installed (reset)."""
        if slots.inactive(self.root) is None:
            raise Busy("an update is on trial; confirm or roll back first")
        refused = app_bundle_refusal()  # before the download writes anything
        if refused:
            raise AppBundleRefused(refused)
        bundle = await self.download(url, sha256)
        if self._own_client and self._client is not None:
            await self._client.close()  # the TLS session's buffers are not needed to verify
        gc.collect()  # one large free block for the manifest and the verify
        try:
            self.install(bundle, version)
        except BaseException:
            from firmware.ota import fetch

            fetch.remove(bundle)  # a refused bundle is not kept in flash
            raise
        self.step("reset", version)
        healthy_before_reset(self.root)
        log.info(_TAG, "resetting into the update")
        self.reset()

    async def download(self, url, sha256=None):
        """Stream the bundle to ota/download.bin in chunk-sized writes; returns its path."""
        from firmware.ota import fetch

        return await fetch.download(self, url, sha256)

    def install(self, bundle, version=None):
        """Verify `bundle` (a file), unpack it into the inactive slot and stage it for the next
        boot. Returns the bundle's version. On any error the slot is emptied, the state file
        untouched and the error raised."""
        from firmware.ota import fetch

        return fetch.install(self, bundle, version)

    async def check(self):
        """Fetch the manifest (JSON {"version", "url", "sha256"?, "rollback"?}); update when
        it names a newer version than the running one (or an older one announced as a
        rollback, which the bundle's signed manifest must confirm). Returns the version
        started, or None."""
        resp = await self.client().request("GET", self.manifest_url)
        if resp.status != 200:
            raise DownloadFailed("manifest answered %d" % resp.status)
        try:
            m = resp.json()
            version = m["version"]
            url = _resolve(self.manifest_url, m["url"])
        except (ValueError, KeyError, TypeError) as e:
            raise UpdateError("manifest unreadable: %s" % log.describe(e))
        if not isinstance(version, str) or not self.wanted(version, m.get("rollback") is True):
            return None
        await self.run(url, version, m.get("sha256"))
        return version

    def command(self, value):
        """A cloud command named by config `ota.command`: "check" (or empty) checks the
        configured manifest now, an https:// URL checks that manifest instead. Returns False
        when nothing could start (the reason is logged)."""
        url = value if isinstance(value, str) and value.startswith("https://") else None
        if url is None and value not in (None, "", "check", True):
            log.warn(_TAG, "ota command: %r is neither 'check' nor an https manifest URL", value)
            return False
        url = url or self.manifest_url
        if not url:
            log.warn(_TAG, "ota command: no manifest URL (config ota.manifest_url)")
            return False
        if self.task is not None and not self.task.done():
            return False
        self.task = asyncio.create_task(self._checked(url))
        return True

    async def _checked(self, url):
        saved, self.manifest_url = self.manifest_url, url
        try:
            await self.check()
        except Exception as e:  # logged; the app keeps running
            self.last_error = e
            log.warn(_TAG, "update check: %s", log.describe(e))
        finally:
            self.manifest_url = saved

    async def poll(self):
        """Background task: check the manifest URL every interval_s (first check soon after
        start, so a fresh board picks up a pending update). A check the network failed
        (refused, timed out, out of memory beside the app's own TLS session, a server error)
        is retried sooner, after 5, 10, 20 ... s up to interval_s: one lost request must not
        delay an update by a whole interval. A refused bundle or manifest waits the interval
        (downloading it again would not change it)."""
        if not self.manifest_url:
            return
        failed = self.failure()
        if failed:
            log.warn(_TAG, "update %s rolled back: %s", failed.get("version"),
                     failed.get("reason"))
        sleep_ms = self._sleep_ms or asyncio.sleep_ms
        await sleep_ms(_FIRST_CHECK_MS)
        retry_s = _RETRY_FIRST_S
        while True:
            wait_s = self.interval_s
            try:
                await self.check()
                retry_s = _RETRY_FIRST_S
            except Exception as e:  # the app keeps running; try again later
                self.last_error = e
                if _transient(e):
                    wait_s = min(retry_s, self.interval_s)
                    retry_s = min(retry_s * 2, self.interval_s)
                log.warn(_TAG, "update check: %s; next check in %d s", log.describe(e), wait_s)
            await sleep_ms(wait_s * 1000)


def _transient(e):
    """A failure that may not happen again: the network's, the server's (DownloadFailed: a
    status, a short or corrupted transfer) or memory that was busy at that moment. A refusal
    (UpdateError, a bundle's signature or hashes) is not."""
    if isinstance(e, UpdateError):
        return isinstance(e, DownloadFailed)
    import sys

    bundle = sys.modules.get("firmware.ota.bundle")  # not loaded: e cannot be its error
    return bundle is None or not isinstance(e, bundle.BundleError)
