"""Composition root: config -> board, outbox, cloud adapter; runs the cooperative tasks.

Tasks (docs/design.md "The loop"), each restarted by the supervisor if it crashes:
- sampler   reads each reported sensor at its interval into the outbox, wakes the uplink
- uplink    drains the outbox through the adapter; a record leaves only on success/replay;
            up to the adapter's `send_depth` batches in flight at once (Realer MQTT: 2);
            its backoff ends when any task reaches the cloud (adapter's `on_reached`)
- downlink  polls the command catalog and applies new desired values (firmware/desired.py)
- auth      renews the token before `renew_after`
- local     reports physical input changes without desired_id
- health    feeds the watchdog while the loop progresses, confirms an OTA update on trial
            after the first accepted delivery, one status line every `intervals.status_s`
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
import os  # noqa: E402

from micropython import const  # noqa: E402

from firmware import clock, config, heap, log  # noqa: E402
from firmware.backoff import Backoff  # noqa: E402
from firmware.board.base import BoardError, value_text  # noqa: E402
from firmware.desired import DesiredState, apply_desired  # noqa: E402
from firmware.outbox import Outbox  # noqa: E402
from firmware.tasks import Supervisor, Wake  # noqa: E402

_TAG = "app"
_UPLINK_BASE_MS = const(1000)
_UPLINK_CAP_MS = const(120000)
_IDLE_WAKE_MS = const(30000)
_LINK_CHECK_MS = const(1000)  # how often a backing-off uplink looks at the Wi-Fi station
_CLOSE_TIMEOUT_S = const(10)
_SENSOR_RETRY_MS = const(1000)  # first retry of a failing sensor, doubling from there
_SENSOR_RETRY_MIN_MS = const(100)
# A send attempt that has not returned after this long is stuck (every HTTP request has its
# own 60 s deadline, an MQTT publish its PUBACK timeout: this is the net under both)
_SEND_LIMIT_MS = const(300000)


class SendStuck(Exception):
    """The health task cancelled a send attempt that never returned (a stalled peer, not a
    cloud that said no); the uplink keeps the records and backs off as for a network fault."""


class _Attempt:
    """One send attempt: its task, its records, and what came back."""
    __slots__ = ("task", "records", "deadline", "number", "cancelled", "result", "error")

    def __init__(self, records, deadline, number):
        self.task = None
        self.records = records
        self.deadline = deadline
        self.number = number  # App.sends when it started (the watchdog's uplink progress)
        self.cancelled = False
        self.result = None
        self.error = None


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
        self._attempts: list = []  # _Attempt: the send attempts running, oldest first
        self._ended: list = []  # _Attempt: those that returned, for the uplink to settle
        self._end = Wake()  # an attempt returned

    def _append(self, kind, source, value, desired_id=None, report_status=None):
        self.outbox.append(kind, source, value_text(value), clock.unix_time(),
                           desired_id=desired_id, report_status=report_status)
        self.wake.set()

    async def _clock_ready(self):
        waited = 0
        while not clock.is_set():  # readings need a true timestamp; NTP comes with Wi-Fi
            waited += 1
            if waited == 10:  # say why nothing happens (each waiting task: logged once)
                log.failing("clock", _TAG, "clock", "not set after 10 s; nothing is sampled "
                            "or sent until it is", "; fix: it comes from NTP once Wi-Fi is "
                            "up: check wifi.ssid, wifi.password and that the network reaches "
                            "an NTP server")
            await asyncio.sleep_ms(1000)
        log.recovered("clock", _TAG, "clock: set")

    # A failing sensor (error, driver bug or timeout) is logged once, then retried on its own
    # backoff, capped at twice its interval so the watchdog still sees the sampler progress;
    # its recovery is logged once. Other sensors keep their pace.
    async def sampler(self):
        await self._clock_ready()
        due = {sid: clock.Deadline(0) for sid in self.board.sensors}
        failing: dict = {}  # sid -> Backoff while that sensor fails
        while True:
            enabled = self.cloud.enabled_sensors
            for sid, sensor in self.board.sensors.items():
                if not due[sid].expired():
                    continue
                interval_ms = int(sensor.interval_s * 1000)
                due[sid] = clock.Deadline(interval_ms)
                if enabled is not None and sid not in enabled:
                    continue  # the cloud's sensor catalog does not list it
                try:
                    value = await asyncio.wait_for(sensor.read(), sensor.timeout_s)
                except Exception as e:  # BoardError, a driver bug, asyncio.TimeoutError
                    self.sensor_errors += 1
                    b = failing.get(sid)
                    if b is None:
                        b = failing[sid] = Backoff(min(_SENSOR_RETRY_MS, interval_ms),
                                                   2 * interval_ms)
                        log.warn(_TAG, "sensor %s: %s; retrying with backoff, quiet until it "
                                 "recovers", sid, log.describe(e))
                    due[sid] = clock.Deadline(max(_SENSOR_RETRY_MIN_MS, b.next_ms()))
                    continue
                b = failing.pop(sid, None)
                if b is not None:
                    log.info(_TAG, "sensor %s: recovered after %d failed reads", sid, b.attempts)
                self._append("sensor", sid, value)
                self.readings += 1
            nxt = min(d.remaining_ms() for d in due.values()) if due else _IDLE_WAKE_MS
            await asyncio.sleep_ms(max(50, nxt))

    # The uplink runs up to the adapter's `send_depth` send attempts at once (1 unless the
    # adapter says its sends may overlap: Realer MQTT's next batch goes out while the
    # previous one waits for its acks). A record is in at most one running attempt (`flying`)
    # and leaves the outbox only on its attempt's result; the records of an attempt that
    # failed are pending again for the next one (same message_id). After a failure no new
    # attempt starts until the running ones ended, then the uplink backs off.
    async def uplink(self):
        backoff = Backoff(_UPLINK_BASE_MS, _UPLINK_CAP_MS)
        flying: set = set()  # message_ids in a running attempt: never handed out twice
        self._attempts = []
        self._ended = []
        try:
            while True:
                fault = None  # the exception of the first failed attempt
                delay = None  # (ms, floor) after a partly refused batch
                while self._ended or (self._attempts and (fault or delay)):
                    if not self._ended:  # a failure waits for the others to come back
                        await self._end.wait()
                        continue
                    h = self._ended.pop(0)
                    for r in h.records:
                        flying.discard(r.message_id)
                    if h.error is not None:
                        fault = fault or h.error
                    else:
                        wait = self._settle(h.records, h.result, backoff)
                        if wait is not None and delay is None:
                            delay = wait
                    h = None  # its records are on flash: not held in RAM during a pause
                if fault is not None:
                    log.failing("uplink", _TAG, "uplink", log.describe(fault),  # once, counted
                                "; %d pending" % self.outbox.pending_count())
                    self.board.link_failed(log.describe(fault))  # actuators with a limit go safe
                    # what a server asked for (a host closed by a 429: http.RateLimited's
                    # wait_ms) is slept in full, the rest of the backoff ends with any success
                    wait_ms = getattr(fault, "wait_ms", 0)
                    await self._pause(backoff, backoff.next_ms(wait_ms), wait_ms)
                    continue
                if delay is not None:
                    await self._pause(backoff, delay[0], delay[1])
                    continue
                if len(self._attempts) < max(1, getattr(self.cloud, "send_depth", 1)):
                    records = self._next_batch(flying)
                    if records:
                        if self.wifi is not None and not self.wifi.up.is_set():
                            await self.wifi.up.wait()  # senders wait for the station
                        # a success before this attempt says nothing about its failure
                        self.link.clear()
                        for r in records:
                            flying.add(r.message_id)
                        self._start(records)
                        records = None  # the attempt holds them while it runs
                        continue
                if self._attempts:
                    await self._end.wait()
                else:
                    await self.wake.wait(_IDLE_WAKE_MS)
        finally:  # the uplink itself ends (shutdown, a crash): its attempts end with it
            for h in self._attempts:
                h.task.cancel()  # its connection closes as it unwinds; the records stay
            self._attempts = []

    def _next_batch(self, flying):
        """The oldest pending records not in a running attempt, at most batch_max."""
        # the outbox passes the records in flight without reading them, and never expires one
        return self.outbox.pending(self.cloud.batch_max, flying)

    def _settle(self, records, result, backoff):
        """Applies one attempt's result to the outbox; (delay_ms, floor_ms) when the cloud
        kept some of the records (the uplink backs off), else None."""
        self.board.link_ok()
        log.recovered("uplink", _TAG, "uplink: delivering again")
        # one ack-index write for the whole result, not one per record (bench/mqtt-throughput.md)
        self.outbox.resolve(result.ok, result.dead)
        self.delivered += len(result.ok)
        if not result.failed:
            backoff.reset()
            return None
        delay = backoff.next_ms(result.wait_ms)
        log.info(_TAG, "uplink: the cloud kept %d of %d records sent (%d pending); "
                 "retry in %s (server asked %s)",
                 len(records) - len(result.ok) - len(result.dead), len(records),
                 self.outbox.pending_count(), log.duration(delay),
                 log.duration(result.wait_ms))
        return delay, result.wait_ms

    # The uplink's wait after a failed attempt. What the server asked for (Retry-After, a
    # refused device) is slept in full; the rest, backoff, ends as soon as any task has a
    # successful exchange with the cloud (a token, a catalog, a broker session), or when the
    # Wi-Fi station is found down (the loop then sends the moment it is back): after an
    # outage the drain starts with the link, not up to _UPLINK_CAP_MS later.
    async def _pause(self, backoff, delay_ms, floor_ms):
        if floor_ms > 0:
            await asyncio.sleep_ms(floor_ms)
        left = clock.Deadline(max(0, delay_ms - floor_ms))
        wifi = self.wifi
        while not left.expired():
            if wifi is not None and wifi.station and not wifi.up.is_set():
                return  # the loop waits for the station and sends once it is back
            if await self.link.wait(min(left.remaining_ms(), _LINK_CHECK_MS)):
                backoff.reset()
                return
        if self.link.is_set():  # reached during the server's wait: go on, from scratch
            self.link.clear()
            backoff.reset()

    # Each send attempt is its own task, so the health task can cancel one that never returns
    # (check_uplink); the uplink learns of its end from _ended/_end, never by awaiting the
    # task, so a cancel of the one is never taken for a cancel of the other. A cancelled
    # attempt reaches the uplink as SendStuck, an ordinary failure: the records stay.
    def _start(self, records):
        self.sends += 1
        h = _Attempt(records, clock.Deadline(self.send_limit_ms), self.sends)
        self._attempts.append(h)
        h.task = asyncio.create_task(self._run_attempt(h))

    async def _run_attempt(self, h):
        try:
            h.result = await self.cloud.send(h.records)
        except asyncio.CancelledError:  # by check_uplink (or the uplink's own end)
            h.error = SendStuck("send attempt stuck for %d s; cancelled, records kept" %
                                (self.send_limit_ms // 1000))
        except Exception as e:  # handed to the uplink
            h.error = e
        if h not in self._attempts:
            return  # its uplink ended (and cancelled it): nobody settles it, records stay
        self._attempts.remove(h)
        self._ended.append(h)
        self._end.set()

    def check_uplink(self):
        """For the health task: a send attempt past its limit is cancelled (its HTTP request
        or session drops its connection as it unwinds) and logged once. Returns True then."""
        hit = False
        for h in self._attempts:
            if h.cancelled or not h.deadline.expired():
                continue
            h.cancelled = hit = True
            self.stuck_sends += 1
            log.warn(_TAG, "uplink: a send attempt has not returned in %d s (a stalled peer, "
                     "not a refusal); cancelling it, %d records pending",
                     self.send_limit_ms // 1000, self.outbox.pending_count())
            h.task.cancel()
        return hit

    def on_desired(self, cmd):
        status = apply_desired(self.board, self.outbox, self.desired, cmd.get("id"),
                               cmd.get("desired_id"), cmd.get("value"), seq=cmd.get("seq"),
                               expires_at=_expiry(cmd.get("expires_at")))
        if status != "duplicate":
            log.info(_TAG, "command %s desired %s: %s", cmd.get("id"), cmd.get("desired_id"),
                     status)
            self.applied += 1
            self.wake.set()

    async def downlink(self):
        await self._clock_ready()
        poll_ms = int(self.cfg.get("intervals.catalog_poll_s") * 1000)
        backoff = Backoff(_UPLINK_BASE_MS, _UPLINK_CAP_MS)
        while True:
            try:
                wait = await self.cloud.poll_catalog(self.on_desired)
                backoff.reset()
                log.recovered("catalog", _TAG, "catalog poll: working again")
            except Exception as e:  # a poll that failed is simply tried again later
                log.failing("catalog", _TAG, "catalog poll", log.describe(e))
                wait = backoff.next_ms()
            await asyncio.sleep_ms(max(poll_ms, wait))

    async def auth(self):
        await self._clock_ready()
        backoff = Backoff(_UPLINK_BASE_MS, _UPLINK_CAP_MS)
        first = True
        while True:
            if self.cloud.token_due():
                try:
                    wait = await self.cloud.authenticate()
                except Exception as e:
                    log.failing("auth", _TAG, "auth", log.describe(e))
                    wait = backoff.next_ms()
                if self.cloud.token_due():
                    await asyncio.sleep_ms(max(wait, backoff.next_ms()))
                    continue
                backoff.reset()
                log.recovered("auth", _TAG, "auth: token issued again")
                if first:  # (re)connected: let the cloud reconcile the physical state
                    first = False
                    self.report_command_states()
            renew_at = self.cloud.renew_at
            await asyncio.sleep_ms(max(1000, renew_at.remaining_ms() if renew_at else 60000))

    def link_up(self, first):
        """A broker session opened (MQTT transports): wake the uplink; after a reconnect,
        report the physical command state again so the cloud can reconcile."""
        self.link.set()
        if not first:
            self.report_command_states()

    def report_command_states(self):
        for cid, act in self.board.actuators.items():
            try:
                self._append("command", cid, act.value())
            except BoardError as e:
                log.warn(_TAG, "command %s state unknown: %s", cid, log.describe(e))

    async def local(self):
        await self._clock_ready()
        while True:
            for cid, value in await self.board.local.wait():
                log.info(_TAG, "local change on command %s -> %s", cid, value)
                self._append("command", cid, value)

    async def health(self):
        """Feeds the watchdog while every critical task progresses (firmware/watchdog.py),
        marks the boot healthy for safe mode after a while, logs the status line."""
        from firmware import safemode

        every_ms = int(self.cfg.get("intervals.status_s") * 1000)
        dog = self.watchdog
        step_ms = dog.feed_every_ms(every_ms) if dog is not None else every_ms
        if dog is not None:
            dog.start()
        status = clock.Deadline(every_ms)
        healthy = clock.Deadline(safemode.HEALTHY_AFTER_MS)
        marked = False
        while True:
            # a stuck send is seen within a quarter of its limit
            await asyncio.sleep_ms(max(1, min(step_ms, status.remaining_ms(),
                                              self.send_limit_ms // 4)))
            self.check_uplink()
            if dog is not None:
                dog.feed()
            if self.trial is not None and self.delivered:
                self.confirm_update()
            if not marked and healthy.expired():
                marked = True  # crashed boots stop counting once a boot ran this long
                try:
                    safemode.healthy(self.cfg.root)
                except OSError as e:
                    log.warn(_TAG, "boot counter: %s", log.describe(e))
            if not status.expired():
                continue
            status = clock.Deadline(every_ms)
            gc.collect()
            st = self.outbox.stats()
            wifi = self.wifi
            log.info("status", "readings=%d delivered=%d pending=%d dead=%d applied=%d "
                     "renewals=%d%s%s free=%d %s", self.readings, self.delivered,
                     self.outbox.pending_count(), st.get("dead", 0), self.applied,
                     self.cloud.renewals, self._transport_status(),
                     " wifi=" + wifi.status() if wifi is not None and wifi.station else "",
                     gc.mem_free(), log.link())

    def confirm_update(self):
        """The cloud accepted data on this boot: keep the app (or image) on OTA trial."""
        from firmware.ota import slots

        try:
            slots.confirm(self.cfg.root)
            if slots.image_pending(self.cfg.root):
                from firmware.ota import image

                image.confirm_trial(self.cfg.root)
            log.info("ota", "update %s confirmed", self.trial)
        except Exception as e:  # a flash or partition error: the trial rules decide
            log.warn("ota", "confirm %s: %s", self.trial, log.describe(e))
        self.trial = None

    async def shutdown(self, sup):
        """An orderly stop (Ctrl-C on the host, a planned reset): end the app's tasks, let
        the adapter say goodbye (NUBISON logout, Xyte offline), then end the rest. The
        adapter's own tasks (a broker session) and Wi-Fi run on until close() returns: the
        goodbye needs the live session. close() gets at most 10 s."""
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

    def _transport_status(self):
        mode = getattr(self.cloud, "mode", None)  # optional in the contract
        if mode is None:
            return ""
        return " mode=%s credentials=%d" % (mode, self.cloud.credentials)

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
                   lambda: self._attempts[0].number if self._attempts else None)
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
