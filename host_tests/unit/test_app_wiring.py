"""The app's wiring between the pieces (both runtimes): uplink failures count toward each
command's fallback_after_failures and a delivery resets the count; the uplink waits for the
Wi-Fi station; shutdown stops the tasks and awaits the adapter's close(); Xyte's firmware
message fetches the file record and hands it to the updater (make_cloud's config errors:
test_platforms.py).
Scripted clouds step the tasks one send at a time: bounded step counts, no timed checks."""
import asyncio

from test_realer_https import FakeHttp, FakeResp
from test_xyte import DEV, message, registered, sent

import support
from firmware import clock, config, log
from firmware import uplink as uplink_mod
from firmware.app import App
from firmware.board.factory import make_board
from firmware.clouds import Adapter, SendResult
from firmware.outbox import Outbox
from firmware.tasks import Supervisor

_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
_STEPS = 3000  # a hang guard only: counts loop steps, never time


def _quiet(fn):
    lines: list = []
    log.set_sink(lines.append)
    try:
        return fn(), lines
    finally:
        log.set_sink(None)


class _Scripted(Adapter):
    """An adapter whose send() runs only when the test grants it, and then fails ("fail":
    OSError, as a lost network does) or delivers the batch ("ok") as the script says."""

    batch_max = 1
    enabled_sensors = None
    renewals = 0
    renew_at = None

    def __init__(self, script, gated=True):
        self.script = list(script)
        self.calls = 0
        self.gated = gated
        self.gate = asyncio.Event()
        self.app = None
        self.closed = 0

    async def send(self, records):
        if self.gated:
            await self.gate.wait()
            self.gate.clear()
        self.calls += 1
        outcome = self.script.pop(0) if self.script else "ok"
        if outcome == "fail":
            # a session coming back: the uplink retries at once instead of backing off
            self.app.link.set()
            raise OSError(113)
        res = SendResult()
        res.ok = [r.message_id for r in records]
        return res

    async def poll_catalog(self, on_desired):
        return 3600000

    def token_due(self):
        return False

    async def authenticate(self):
        return 0

    def background(self):
        return []


_COMMANDS = [{"id": 3, "kind": "switch", "safe_value": 0, "initial": 1,
              "fallback_after_failures": 3},
             {"id": 4, "kind": "switch", "safe_value": 0, "initial": 1}]


def _app(cloud, records=12, commands=_COMMANDS):
    root = support.tmpdir("wiring")
    support.write(root + "/ca.pem", _PEM)
    raw = {"cloud": {"platform": "realer", "api_url": "https://127.0.0.1:1", "device_id": 1,
                     "client_id": "cdv_wiring", "client_secret": "wiring-secret-01",
                     "ca_file": "ca.pem"},
           "board": "sim", "intervals": {"status_s": 60, "catalog_poll_s": 60}}
    (cfg, _) = _quiet(lambda: config.validate(raw, root))
    board = make_board("sim", [], commands, [])
    outbox = Outbox(config.join(root, "outbox"), max_records=1000)
    for i in range(records):
        outbox.append("sensor", 7, str(i), clock.unix_time())
    # a factory (the adapter needs the config) or an adapter built already
    a = App(cfg, board, outbox, cloud if callable(cloud) else support.made(cloud))
    a.cloud.app = a
    return a, root


def _run(tasks, judge):
    """Run `tasks` (name -> factory) and `judge` under one Supervisor until judge returns;
    returns the log lines. A judge that raises fails the test with its message."""
    sup = Supervisor()
    failed: list = []

    async def judging():
        try:
            await judge()
        except Exception as e:  # reported below, not restarted
            failed.append(repr(e))
        finally:
            sup.stop()

    for name, factory in tasks:
        sup.add(name, factory)
    sup.add("judge", judging)
    (_, lines) = _quiet(lambda: support.run(sup.run_forever()))
    assert not failed, (failed, lines[-20:])
    return lines


async def _until(cond, what):
    n = _STEPS
    while not cond():
        n -= 1
        if n < 0:
            raise AssertionError("never happened: " + what)
        await asyncio.sleep_ms(1)


async def _one_send(cloud):
    """Let exactly one send() run to its end (the uplink handles its outcome in the same
    step as the raise/return, so the board has been told when calls moves)."""
    before = cloud.calls
    cloud.gate.set()
    await _until(lambda: cloud.calls == before + 1, "send %d" % (before + 1))
    await asyncio.sleep_ms(1)


# --- 0. a send result goes to the outbox in one ack-index write ------------------------------

def test_a_send_result_is_resolved_with_one_outbox_index_write():
    from firmware.backoff import Backoff

    a, root = _app(_Scripted([]), records=12)
    recs = a.outbox.pending(12)
    ids = [r.message_id for r in recs]
    res = SendResult()
    res.ok = ids[:5] + ids[6:11]
    res.dead = [(ids[5], "rejected")]
    gen = a.outbox._igen  # generation of the ack index: one step per write
    _quiet(lambda: uplink_mod._settle(a, recs, res, Backoff(1000, 60000)))
    assert (a.outbox._igen - gen) & 0xFF == 1
    assert a.delivered == 10 and [r.message_id for r in a.outbox.pending(12)] == ids[11:]
    st = Outbox(config.join(root, "outbox")).stats()
    assert (st["delivered"], st["dead"], st["pending"]) == (10, 1, 1), st
    support.rmtree(root)


# --- 1. uplink failures -> fallback_after_failures; a delivery resets the count -------------

def test_consecutive_send_failures_take_a_limited_command_safe_after_n_and_not_before():
    cloud = _Scripted(["fail", "fail", "fail", "fail", "fail"])
    a, root = _app(cloud)
    limited, unlimited = a.board.actuators[3], a.board.actuators[4]
    seen = []

    async def judge():
        for _ in range(5):
            await _one_send(cloud)
            seen.append((limited.value(), unlimited.value()))

    lines = _run([("uplink", a.uplink)], judge)
    # safe at exactly the third failure, stays safe; the command without a limit never moves
    assert seen == [(1, 1), (1, 1), (0, 1), (0, 1), (0, 1)], seen
    assert sum(1 for x in lines if "fallback: commands [3]" in x) == 1, lines
    assert a.outbox.pending_count() == 12  # nothing left the outbox on a failure
    support.rmtree(root)


def test_a_delivery_between_failures_starts_the_count_again():
    cloud = _Scripted(["fail", "fail", "ok", "fail", "fail", "fail"])
    a, root = _app(cloud)
    limited = a.board.actuators[3]
    seen = []

    async def judge():
        for _ in range(6):
            await _one_send(cloud)
            seen.append(limited.value())

    _run([("uplink", a.uplink)], judge)
    # without link_ok the 4th and 5th failures would be the 3rd and 4th in a row
    assert seen == [1, 1, 1, 1, 1, 0], seen
    assert a.delivered == 1 and a.outbox.pending_count() == 11
    support.rmtree(root)


def test_a_command_taken_safe_goes_safe_again_in_the_next_outage():
    cloud = _Scripted(["fail", "fail", "fail", "ok", "fail", "fail", "fail"])
    a, root = _app(cloud)
    limited = a.board.actuators[3]
    seen = []

    async def judge():
        for i in range(7):
            await _one_send(cloud)
            seen.append(limited.value())
            if i == 3:
                limited.apply(1)  # the cloud moved it back on after the link returned

    _run([("uplink", a.uplink)], judge)
    assert seen == [1, 1, 0, 0, 1, 1, 0], seen
    support.rmtree(root)


# --- 2. the uplink waits for the Wi-Fi station ------------------------------------------------

class _Station:
    """What the uplink reads of firmware.wifi.Wifi: `up`, an asyncio.Event."""

    station = None

    def __init__(self):
        self.up = asyncio.Event()


def test_uplink_waits_for_wifi_up_then_sends():
    cloud = _Scripted([], gated=False)
    a, root = _app(cloud, records=3)
    a.wifi = _Station()
    calls_while_down = []

    async def judge():
        for _ in range(50):  # records pending, Wi-Fi down: 50 scheduler rounds, no send
            await asyncio.sleep_ms(1)
        calls_while_down.append(cloud.calls)
        a.wifi.up.set()
        await _until(lambda: a.outbox.pending_count() == 0, "delivery after Wi-Fi up")

    _run([("uplink", a.uplink)], judge)
    assert calls_while_down == [0] and cloud.calls == 3 and a.delivered == 3
    support.rmtree(root)


def test_uplink_sends_at_once_when_wifi_is_already_up_or_absent():
    for station in (True, False):
        cloud = _Scripted([], gated=False)
        a, root = _app(cloud, records=2)
        if station:
            a.wifi = _Station()
            a.wifi.up.set()

        async def judge(a=a):
            await _until(lambda: a.delivered == 2, "delivery")

        _run([("uplink", a.uplink)], judge)
        assert cloud.calls == 2
        support.rmtree(root)


# --- 2b. after an outage the drain starts with the first successful exchange ---------------

class _Link:
    """Realer over HTTPS as the device sees it: `up` False -> every request fails like a lost
    route; up -> the documented answers (token, catalogs, feed-data created), except that
    feed-data answers `feed` (a FakeResp) while it is set. Counts feed-data requests."""

    def __init__(self):
        self.up = False
        self.feed = None
        self.posts = 0
        self.tries = 0

    async def request(self, method, url, json=None, **kw):
        self.tries += 1
        if not self.up:
            raise OSError(113)  # EHOSTUNREACH
        if url.endswith("/oauth/token"):
            return FakeResp(200, {"access_token": "tok-link", "renew_after": 3600})
        if url.endswith("/sensors"):
            return FakeResp(200, {"code": 2000, "sensors": [{"id": 7}]})
        if url.endswith("/commands"):
            return FakeResp(200, {"code": 2000, "commands": []})
        self.posts += 1
        if self.feed is not None:
            return self.feed
        items = json["items"] if "items" in json else [json]
        return FakeResp(200, {"code": 2000, "results": [
            {"message_id": i["message_id"], "http_status": 201, "status": "created"}
            for i in items]})


_REAL_BACKOFF = uplink_mod.Backoff


def _longest_backoff(base_ms, cap_ms):
    """Every wait is the cap (120 s for the uplink): only a wake can end it in a test."""
    return _REAL_BACKOFF(cap_ms, cap_ms, rand=lambda: 1.0)


async def _rounds(n=100):
    # zero-time scheduler rounds: the uplink's 120 s wait cannot run out meanwhile
    for _ in range(n):
        await asyncio.sleep_ms(0)


def _outage(exchange, feed=None, feed_after=None):
    """Records pending, the uplink failed (lost route, or `feed` answered) and sits in its
    longest backoff. The link comes back (feed-data answers `feed_after`) and another task
    has one successful `exchange`. Returns (feed-data posts within 100 zero-time rounds of
    it, pending then)."""
    from firmware.clouds.realer_https import RealerHttps

    http = _Link()
    a, root = _app(lambda cfg, **hooks: RealerHttps(cfg, http, **hooks), records=30)
    cloud = a.cloud
    seen: list = []
    if feed is not None:
        http.up, http.feed = True, feed

    async def judge():
        await _until(lambda: http.tries if feed is None else http.posts,
                     "the first attempt failed")
        await _rounds()  # the uplink is in its wait now
        before = http.posts
        http.up, http.feed = True, feed_after
        await exchange(cloud)  # the first successful exchange after the outage
        await _rounds()
        seen.append((http.posts - before, a.outbox.pending_count()))

    uplink_mod.Backoff = _longest_backoff
    try:
        _run([("uplink", a.uplink)], judge)
    finally:
        uplink_mod.Backoff = _REAL_BACKOFF
    support.rmtree(root)
    return seen[0]


async def _token(cloud):
    await cloud.authenticate(force=True)


async def _catalog(cloud):
    await cloud.poll_catalog(None)


def test_a_token_or_catalog_success_ends_the_uplinks_backoff_after_an_outage():
    # lost route: the uplink waits 120 s; the auth task's token or the downlink's catalog
    # comes through: the drain starts at once (one request: 30 records, one batch of 20)
    for exchange in (_token, _catalog):
        posts, pending = _outage(exchange)
        assert posts >= 1 and pending <= 10, (exchange, posts, pending)


def test_a_success_ends_the_wait_after_a_kept_answer_but_never_a_servers_retry_after():
    # a 503 kept the records (120 s backoff): the catalog's success ends the wait
    posts, pending = _outage(_catalog, feed=FakeResp(503, b""))
    assert posts >= 1 and pending <= 10, (posts, pending)
    # a 429 asked for an hour: a success elsewhere does not shorten what the server asked
    posts, pending = _outage(_catalog, feed=FakeResp(429, {"error": "rate_limited"},
                                                     {"retry-after": "3600"}))
    assert posts == 0 and pending == 30, (posts, pending)


class _SpyEvent(asyncio.Event):
    """An Event that counts the waits begun on it (who is waiting for the station)."""

    waits = 0

    async def wait(self):
        self.waits += 1
        return await super().wait()


class _Board:
    """What the app reads of firmware.wifi.Wifi on a board: a station whose `up` is watched."""

    station = True

    def __init__(self):
        self.up = _SpyEvent()
        self.up.set()


def test_the_wifi_station_coming_back_ends_the_uplinks_backoff():
    # the cloud is unreachable with the station up: the uplink sits in its 120 s backoff;
    # the station goes down and comes back: the drain starts the moment it is up
    from firmware.clouds.realer_https import RealerHttps

    http = _Link()
    a, root = _app(lambda cfg, **hooks: RealerHttps(cfg, http, **hooks), records=30)
    a.wifi = _Board()
    seen: list = []

    async def judge():
        await _until(lambda: http.tries, "the first attempt failed")
        await _rounds()
        a.wifi.up.clear()  # link lost: the uplink notices within _LINK_CHECK_MS
        await _until(lambda: a.wifi.up.waits, "the uplink waits for the station")
        before = http.posts
        http.up = True
        a.wifi.up.set()  # link back
        await _rounds()
        seen.append((http.posts - before, a.outbox.pending_count()))

    uplink_mod.Backoff = _longest_backoff
    try:
        _run([("uplink", a.uplink)], judge)
    finally:
        uplink_mod.Backoff = _REAL_BACKOFF
    support.rmtree(root)
    posts, pending = seen[0]
    assert posts >= 1 and pending <= 10, (posts, pending)


# --- 3. shutdown: tasks end, the adapter's close() is awaited ----------------------------------

class _Closing(_Scripted):
    """An adapter with a session task (a broker connection) and a close() that needs it."""

    def __init__(self, fail=False):
        super().__init__([])
        self.fail = fail
        self.close_steps: list = []
        self.session_alive = False
        self.ended: list = []

    def background(self):
        return [("session", self.session)]

    async def session(self):
        self.session_alive = True
        try:
            await asyncio.Event().wait()
        finally:
            self.session_alive = False

    async def close(self):
        # the goodbye goes out on the live session, after the app's tasks have ended
        self.close_steps.append(("begin", self.session_alive, list(self.ended)))
        await asyncio.sleep_ms(1)  # a real logout awaits the network
        if self.fail:
            raise OSError(104)
        self.close_steps.append("end")


def _shutdown_run(cloud):
    a, root = _app(cloud)
    ended: list = []

    async def forever():
        try:
            await asyncio.Event().wait()
        finally:
            ended.append("worker")

    if isinstance(cloud, _Closing):
        cloud.ended = ended
    sup = Supervisor()
    sup.add("uplink", a.uplink)
    sup.add("worker", forever)
    for name, factory in cloud.background():
        sup.add(name, factory)

    async def go():
        runner = asyncio.create_task(sup.run_forever())
        await _until(lambda: sup.info("uplink").runs and sup.info("worker").runs and
                     (not isinstance(cloud, _Closing) or cloud.session_alive), "start")
        # like main(): the orderly stop runs outside the supervised tasks
        await a.shutdown(sup)
        await _until(runner.done, "the supervisor stopped")
        await runner

    (_, lines) = _quiet(lambda: support.run(go()))
    support.rmtree(root)
    return sup, ended, lines


def test_shutdown_stops_the_tasks_and_awaits_close():
    cloud = _Closing()
    sup, ended, lines = _shutdown_run(cloud)
    assert cloud.close_steps == [("begin", True, ["worker"]), "end"], lines
    assert ended == ["worker"] and not cloud.session_alive  # and the session ended after
    assert sup.info("session").task is None
    assert sup.info("uplink").task is None and sup.info("worker").task is None
    assert cloud.calls == 0  # the gated send never ran: cancelled while waiting


def test_a_failing_close_is_logged_not_raised():
    cloud = _Closing(fail=True)
    sup, ended, lines = _shutdown_run(cloud)
    assert cloud.close_steps == [("begin", True, ["worker"])] and ended == ["worker"]
    assert not cloud.session_alive
    assert any("close:" in x and "104" in x for x in lines), lines


def test_shutdown_with_the_contracts_default_close():
    cloud = _Scripted([])
    sup, ended, lines = _shutdown_run(cloud)
    assert ended == ["worker"]


def test_shutdown_makes_the_last_delivery_durable():
    # a delivery that empties the queue waits for the next append's slot (Outbox.flush): an
    # orderly stop (a planned reset) must not leave that record to be sent again after the boot
    cloud = _Scripted([], gated=False)
    a, root = _app(cloud, records=1)
    sup = Supervisor()
    sup.add("uplink", a.uplink)

    async def go():
        runner = asyncio.create_task(sup.run_forever())
        await _until(lambda: a.outbox.pending_count() == 0, "the delivery")
        await a.shutdown(sup)
        await _until(runner.done, "the supervisor stopped")
        await runner

    (_, lines) = _quiet(lambda: support.run(go()))
    left = Outbox(config.join(root, "outbox"), max_records=1000).pending_count()
    support.rmtree(root)
    assert cloud.calls == 1 and left == 0, (left, lines)


# --- 4. Xyte: a firmware message -> files/<id> -> updater.start ------------------------------

class _Updater:
    def __init__(self):
        self.started: list = []

    def start(self, url, version, sha256=None):
        self.started.append((url, version, sha256))
        return True


_SUM = "ab" * 32


def _firmware_message(cloud, answers, version="1.2.0", file_id="f-1", ota=True):
    http = cloud.http = FakeHttp(answers)
    updater = _Updater()
    if ota:
        cloud.ota = updater

    async def go():
        cloud._on_message(message("firmware", {"latest_fw_version": version,
                                               "latest_fw_file_id": file_id}))
        for _ in range(20):  # let the fetch task run to its end
            await asyncio.sleep_ms(1)

    (_, lines) = _quiet(lambda: support.run(go()))
    return http, updater, lines


def test_xyte_firmware_message_fetches_the_file_and_starts_the_updater():
    cloud, root = registered()
    http, updater, lines = _firmware_message(
        cloud, [FakeResp(200, {"url": "https://files.example/fw-1.2.0.bin", "checksum": _SUM,
                               "version": "1.2.0"})])
    assert [(m, u) for m, u, _ in http.calls] == [
        ("GET", "https://hub.example/v1/devices/%s/files/f-1" % DEV)]
    assert updater.started == [("https://files.example/fw-1.2.0.bin", "1.2.0", _SUM)], lines
    assert cloud.latest_fw == ("1.2.0", "f-1")
    support.rmtree(root)


def test_xyte_firmware_checksum_that_is_not_sha256_is_not_passed_on():
    cloud, root = registered()
    http, updater, lines = _firmware_message(
        cloud, [FakeResp(200, {"url": "https://files.example/fw.bin", "checksum": "0" * 12})])
    assert updater.started == [("https://files.example/fw.bin", "1.2.0", None)], lines
    support.rmtree(root)


def test_xyte_firmware_without_an_https_url_is_logged_not_started():
    for resp in (FakeResp(200, {"url": "http://files.example/fw.bin", "checksum": _SUM}),
                 FakeResp(200, {"checksum": _SUM}),
                 FakeResp(200, ["not", "an", "object"]),
                 FakeResp(200, ValueError("broken json")),
                 FakeResp(404, {"url": "https://files.example/fw.bin"})):
        cloud, root = registered()
        http, updater, lines = _firmware_message(cloud, [resp])
        assert len(http.calls) == 1 and updater.started == [], lines
        assert any("firmware 1.2.0" in x and " W " in x for x in lines), lines
        support.rmtree(root)


def test_xyte_firmware_fetch_that_fails_is_logged_not_crashed():
    cloud, root = registered()

    class _Down:
        calls: list = []

        async def request(self, method, url, **kw):
            self.calls.append(url)
            raise OSError(113)

    cloud.http = _Down()
    updater = _Updater()
    cloud.ota = updater

    async def go():
        cloud.firmware_available("1.2.0", "f-1")
        for _ in range(20):
            await asyncio.sleep_ms(1)

    (_, lines) = _quiet(lambda: support.run(go()))
    assert len(_Down.calls) == 1 and updater.started == []
    assert any("firmware 1.2.0" in x and "113" in x for x in lines), lines
    support.rmtree(root)


def test_xyte_firmware_without_updater_or_when_current_fetches_nothing():
    for version, ota, file_id in (("1.2.0", False, "f-1"), ("1.0.0", True, "f-1"),
                                  ("1.2.0", True, None)):
        cloud, root = registered()
        http, updater, lines = _firmware_message(cloud, [], version=version, file_id=file_id,
                                                 ota=ota)
        assert http.calls == [] and updater.started == [], (version, ota, lines)
        assert cloud.latest_fw == (version, file_id)
        support.rmtree(root)


def _update_command(params, ota=True, start_ok=True):
    cloud, root = registered()
    cloud.http = FakeHttp([])
    updater = _Updater()
    if not start_ok:
        updater.start = lambda url, version, sha256=None: updater.started.append(
            (url, version, sha256)) and False
    if ota:
        cloud.ota = updater
    (_, lines) = _quiet(lambda: cloud._on_message(message("commands", {
        "id": "c-fw", "status": "pending", "name": "update_firmware", "parameters": params})))
    answers = [(b["status"], b.get("message")) for _, b, _ in sent(cloud)]
    support.rmtree(root)
    return updater.started, answers, lines


def test_xyte_update_firmware_command_starts_the_updater_with_its_url():
    # the spec's command: parameters {url, version}
    started, answers, lines = _update_command({"url": "https://s3.example/fw-1.3.4.zip",
                                               "version": "1.3.4"})
    assert started == [("https://s3.example/fw-1.3.4.zip", "1.3.4", None)], lines
    assert [a[0] for a in answers] == ["in_progress", "done"], answers
    assert "1.3.4" in answers[1][1]


def test_xyte_update_firmware_command_that_cannot_start_is_an_error():
    for params, ota, start_ok in (({"url": "https://s3.example/fw.zip", "version": "1.3.4"},
                                   False, True),
                                  ({"url": "http://s3.example/fw.zip", "version": "1.3.4"},
                                   True, True),
                                  ({"version": "1.3.4"}, True, True),
                                  ({"url": "https://s3.example/fw.zip", "version": "1.3.4"},
                                   True, False)):
        started, answers, lines = _update_command(params, ota, start_ok)
        assert [a[0] for a in answers] == ["in_progress", "error"], (params, ota, answers)
        assert len(started) == (1 if not start_ok else 0), (params, started)


# --- 5. the adapter gets the app's hooks at construction (firmware/clouds/__init__.py) ----------

def test_the_app_hands_its_hooks_to_the_adapter_it_makes():
    got: dict = {}

    def make(cfg, **hooks):
        got.update(hooks)
        return _Scripted([])

    a, root = _app(make, records=0)
    try:
        assert sorted(got) == ["on_desired", "on_link_up", "on_reached", "ota"], got
        assert got["ota"] is None  # no OTA key in this config
        got["on_reached"]()
        assert a.link.is_set()  # a success elsewhere ends the uplink's backoff
        before = a.outbox.pending_count()
        _quiet(lambda: got["on_link_up"](False))  # a reconnect: every actuator's state again
        assert a.outbox.pending_count() == before + len(_COMMANDS)
        _quiet(lambda: got["on_desired"]({"id": "c-1", "desired_id": 9, "value": "0"}))
        assert a.applied == 1
    finally:
        support.rmtree(root)
