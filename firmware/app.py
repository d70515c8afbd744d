"""Composition root: config -> board, outbox, cloud adapter; builds, wires, starts and stops
the cooperative tasks, whose loops live in modules of their own and take the app as argument.

Tasks (docs/design.md "The loop"), each restarted by the supervisor if it crashes:
- sampler   (firmware/sensing.py) reads each reported sensor at its interval into the
            outbox, wakes the uplink
- uplink    (firmware/uplink.py) drains the outbox through the adapter; a record leaves only
            on success/replay; up to the adapter's `send_depth` batches in flight at once
            (Realer MQTT: 2); its backoff ends when any task reaches the cloud (`on_reached`)
- downlink  (firmware/upkeep.py) polls the command catalog and applies new desired values
            (firmware/desired.py)
- auth      (firmware/upkeep.py) renews the token before `renew_after`
- local     (firmware/sensing.py) reports physical input changes without desired_id
- health    (firmware/upkeep.py) feeds the watchdog while the loop progresses, confirms an
            OTA update on trial after the first accepted delivery, one status line every
            `intervals.status_s`
- wifi      (on the board) keeps the station up; senders wait for it
- ota       (with `ota.manifest_url`) polls the update manifest
plus the adapter's own tasks (a broker or WebSocket session) and the board's (switches).
"""
import gc

# Collect after every 1/64 of the heap allocated (at least 1K), from before the firmware's
# modules load. Without frequent collections allocations walk up through all free space
# before the first one, and what is made meanwhile to last (a connection, a token, a
# catalog's routes) lands anywhere among the garbage: the heap ends up in holes too small for
# a TLS context, a read buffer or a catalog answer (bench/memory.md: the frozen Realer MQTT
# image at 56K passes with 1K, not with 2K or more). A fixed 1K on a big heap (PSRAM, the
# unix port's default) would sweep megabytes every 1K allocated: the virtual board's REPL
# then starved (test_board_log).
if hasattr(gc, "threshold"):  # MicroPython only
    gc.threshold(max(1024, (gc.mem_free() + gc.mem_alloc()) >> 6))

import asyncio  # noqa: E402

from micropython import const  # noqa: E402

from firmware import clock, config, heap, log, sensing, upkeep, uplink  # noqa: E402
from firmware.board.base import BoardError, value_text  # noqa: E402
from firmware.desired import DesiredState, apply_desired  # noqa: E402
from firmware.outbox import Outbox  # noqa: E402
from firmware.tasks import Supervisor, Wake  # noqa: E402

_TAG = "app"
_CLOSE_TIMEOUT_S = const(10)
# A send attempt that has not returned after this long is stuck (every HTTP request has its
# own 60 s deadline, an MQTT publish its PUBACK timeout: this is the net under both)
_SEND_LIMIT_MS = const(300000)


class App:
    """`make_cloud(cfg, **hooks)` makes the adapter (firmware/clouds/__init__.py: the contract)
    with the app's callbacks; `ota` is the updater (None: updates are off)."""

    def __init__(self, cfg, board, outbox, make_cloud, ota=None):
        self.cfg = cfg
        self.board = board
        self.outbox = outbox
        self.link = Wake()  # the cloud is reachable again: ends the uplink's backoff
        self.ota = ota  # firmware.ota.updater.Updater when config `ota` has a public key
        self.cloud = make_cloud(
            cfg, on_desired=self.on_desired,  # desired state may also arrive by subscription
            on_link_up=self.link_up,  # a broker session (re)opened
            on_reached=self.link.set,  # any task's successful exchange (token, catalog)
            ota=ota)
        self.desired = DesiredState(cfg.root)
        self.wake = Wake()
        self.readings = 0
        self.delivered = 0
        self.applied = 0
        self.sensor_errors = 0
        self.wifi = None  # firmware.wifi.Wifi, made by main() or supervisor()
        self.watchdog = None  # firmware.watchdog.Watchdog, made by supervisor()
        self.trial = None  # the update on trial this boot, confirmed after a delivery
        self.send_limit_ms = _SEND_LIMIT_MS
        self.stuck_sends = 0  # send attempts the health task had to cancel
        self.sends = 0  # send attempts started (the watchdog's uplink progress)
        # the uplink's send attempts (firmware/uplink.py), also seen by health and the watchdog
        self.attempts: list = []  # those running, oldest first
        self.ended: list = []  # those that returned, for the uplink to settle
        self.end = Wake()  # an attempt returned

    # The supervised tasks, each a coroutine function of its own module that takes the app:
    # as class attributes they bind like methods (app.uplink() is uplink.run(app)), and the
    # bound method is the supervisor's factory. No wrapper function, no closure.
    sampler = sensing.sampler
    uplink = uplink.run
    downlink = upkeep.downlink
    auth = upkeep.auth
    local = sensing.local
    health = upkeep.health

    def append(self, kind, source, value, desired_id=None, report_status=None):
        self.outbox.append(kind, source, value_text(value), clock.unix_time(),
                           desired_id=desired_id, report_status=report_status)
        self.wake.set()

    def on_desired(self, cmd):
        status = apply_desired(self.board, self.outbox, self.desired, cmd.get("id"),
                               cmd.get("desired_id"), cmd.get("value"), seq=cmd.get("seq"),
                               expires_at=_expiry(cmd.get("expires_at")))
        if status != "duplicate":
            log.info(_TAG, "command %s desired %s: %s", cmd.get("id"), cmd.get("desired_id"),
                     status)
            self.applied += 1
            self.wake.set()

    def link_up(self, first):
        """A broker session opened (MQTT transports): wake the uplink; after a reconnect,
        report the physical command state again so the cloud can reconcile."""
        self.link.set()
        if not first:
            self.report_command_states()

    def report_command_states(self):
        for cid, act in self.board.actuators.items():
            try:
                self.append("command", cid, act.value())
            except BoardError as e:
                log.warn(_TAG, "command %s state unknown: %s", cid, log.describe(e))

    async def shutdown(self, sup):
        """An orderly stop (Ctrl-C on the host, a planned reset): end the app's tasks, let
        the adapter say goodbye (NUBISON logout, Xyte offline), then end the rest. The
        adapter's own tasks (a broker session) and Wi-Fi run on until close() returns: the
        goodbye needs the live session. close() gets at most 10 s. Last, the outbox makes its
        last delivery durable (Outbox.flush)."""
        keep = [name for name, _ in self.cloud.background()] + ["wifi"]
        for name in sup.names():
            task = sup.info(name).task
            if task is not None and name not in keep:
                task.cancel()
        await asyncio.sleep_ms(0)
        try:  # a goodbye is not worth a hung Ctrl-C (a QoS 1 PUBACK may never come)
            await asyncio.wait_for(self.cloud.close(), _CLOSE_TIMEOUT_S)
        except Exception as e:  # asyncio.TimeoutError included
            log.warn(_TAG, "close: %s", log.describe(e))
        sup.stop()
        await asyncio.sleep_ms(0)
        try:  # a delivery left for the next append's slot is not sent again after a reset
            self.outbox.flush()
        except Exception as e:  # OutboxError: the record comes back once, nothing is lost
            log.warn(_TAG, "outbox: %s", log.describe(e))

    def supervisor(self, sampler=True):
        """All tasks under one Supervisor (lowpower runs them without the sampler). Makes the
        Wi-Fi station (a task only on the board) and the watchdog with its critical tasks."""
        from firmware.watchdog import STALL_S, Watchdog
        from firmware.wifi import Wifi

        if self.wifi is None:
            self.wifi = Wifi(self.cfg.get("wifi"))
        dog_s = self.cfg.get("watchdog_s")
        dog = self.watchdog = Watchdog(int(dog_s * 1000) if dog_s else None)
        stall_ms = int(self.cfg.get("intervals.stall_s", STALL_S) * 1000)

        # readings plus sensor errors, or None while the sampler has nothing to do (clock
        # unset, or the cloud enables none of the board's sensors)
        def sampler_progress():
            if not clock.is_set() or not self.board.sensors:
                return None
            enabled = self.cloud.enabled_sensors
            if enabled is not None and not any(sid in enabled for sid in self.board.sensors):
                return None
            return self.readings + self.sensor_errors

        sup = Supervisor()
        names = ["uplink", "downlink", "auth", "local", "health"]
        if sampler:
            names.insert(0, "sampler")
            slowest = max([s.interval_s for s in self.board.sensors.values()] or [0])
            dog.expect("sampler", max(stall_ms, int(slowest * 3000)), sampler_progress)
        # a send attempt that even cancelling cannot end holds its value: the board resets
        dog.expect("uplink", max(stall_ms, 2 * self.send_limit_ms),
                   lambda: self.attempts[0].number if self.attempts else None)
        for name in names:
            sup.add(name, getattr(self, name))
        if self.wifi.station:
            self.wifi.alive = dog
            dog.expect("wifi", stall_ms)
            sup.add("wifi", self.wifi.run)
        for name, factory in self.board.background() + self.cloud.background():
            sup.add(name, factory)
        if self.ota is not None and self.ota.manifest_url:
            sup.add("ota", self.ota.poll)
        return sup


def _expiry(value):
    """Unix seconds from an ISO 8601 UTC string or a number; None when absent/unreadable."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        return clock.parse_iso8601(value)
    return None


def make_cloud(cfg, **hooks):
    """The adapter the config names (firmware/platforms.py), imported only now, so a board
    carries in RAM just the one it uses; ConfigError when it is not in this build."""
    from firmware import platforms

    platform = cfg.get("cloud.platform")
    transport = cfg.get("cloud.transport")
    entry = platforms.row(platform, transport)
    if entry is None:
        raise config.ConfigError(["cloud.platform: %s over %s is not in this build" %
                                  (platform, transport)])
    name, cls = entry[platforms.MODULE], entry[platforms.CLASS]
    config.unload("firmware.platforms")  # start-up only
    try:
        module = __import__(name, None, None, (cls,))
    except ImportError as e:
        raise config.ConfigError(["cloud.platform: the %s adapter is not in this build (%s)" %
                                  (platform, e)])
    return getattr(module, cls)(cfg, **hooks)


def _setup_ota(cfg):
    """(the update on trial to confirm or None, the updater or None without an OTA key);
    logs a rollback."""
    from firmware.ota import slots

    trial = slots.on_trial(cfg.root) or slots.image_pending(cfg.root)
    ota = None
    if cfg.get("ota.public_key") or _exists(slots.path(cfg.root, "ota_public_key.bin")):
        from firmware.ota.updater import UpdateError, Updater  # 7K of RAM: only when on

        try:
            ota = Updater.from_config(cfg)
        except UpdateError as e:
            log.error("ota", "%s: updates are off", e)
    failed = slots.failure(cfg.root)
    if failed:
        log.warn("ota", "update %s rolled back: %s", failed.get("version"), failed.get("reason"))
    return trial, ota


def _exists(path):
    import os  # start-up only: not one more name in this module's table for good

    try:
        os.stat(path)
        return True
    except OSError:
        return False


def build(root=None):
    """Config -> App, or ConfigError listing every problem. Actuators go safe first."""
    cfg = config.load(root)
    log.set_level({"debug": log.DEBUG, "info": log.INFO, "warn": log.WARN,
                   "error": log.ERROR}[cfg.get("log.level")])
    from firmware.board.factory import make_board  # start-up only

    board = make_board(cfg.get("board"), cfg.get("sensors"), cfg.get("commands"),
                       cfg.get("switches"))
    board.safe_all()
    outbox = Outbox(config.join(cfg.root, "outbox"), max_records=cfg.get("outbox.max_records"),
                    ttl_s=cfg.get("outbox.ttl_s"))
    trial, ota = _setup_ota(cfg)
    app = App(cfg, board, outbox, make_cloud, ota)  # adapters start updates with ota.start()
    app.trial = trial
    if app.desired.claims():
        app.desired.recover(board, outbox)
    # the OTA slot logic is start-up only when no update is on trial and OTA is off (main.py's
    # crash handler imports it again if it must): 0.8K of RAM. (The board factory stays: the
    # drivers imported later register in its table.)
    if app.trial is None and app.ota is None:
        config.unload("firmware.ota.slots")
        config.unload("firmware.ota")  # its package too (0.1K): nothing else of it is loaded
    gc.collect()  # start-up garbage and the dropped modules go before the tasks start
    return app


def main(root=None):
    from firmware import safemode
    from firmware.wifi import Wifi

    if safemode.active:  # boot.py found a reason not to start; the REPL stays free
        log.error(_TAG, "safe mode: %s; not starting", safemode.active)
        return 2
    try:
        app = build(root)
        app.wifi = Wifi(app.cfg.get("wifi"))  # on the board a missing ssid is a config error
    except config.ConfigError as e:
        for line in e.problems:
            log.error("config", line)
        log.error(_TAG, "not starting: fix config.json and reset")
        return 1
    platform = app.cfg.get("cloud.platform")
    transport = app.cfg.get("cloud.transport")
    log.info(_TAG, "starting: %s%s, %d sensors, %d commands", platform,
             " over " + transport if transport else "",
             len(app.board.sensors), len(app.board.actuators))
    if app.cfg.get("lowpower.enabled"):
        from firmware import lowpower

        while True:  # on the board run_once ends in deep sleep and never returns
            lowpower.run_once(app)
    sup = app.supervisor()
    try:
        asyncio.run(sup.run_forever())
    except KeyboardInterrupt:  # raised from the loop's wait, outside any task: stop cleanly
        heap.recover()  # Ctrl-C may have left the heap locked (firmware/heap.py)
        asyncio.run(app.shutdown(sup))
        log.info(_TAG, "stopped")
    return 0
