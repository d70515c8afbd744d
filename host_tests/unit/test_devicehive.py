"""The DeviceHive adapter on both runtimes, against a scripted in-process peer that answers
like the local cloud: handshake order, requestId matching, 401 -> token/refresh ->
authenticate, command mapping, once-only application across a reboot, report and
notification shapes, error codes, malformed server messages. The real socket, TLS and the
local cloud are system/test_devicehive_e2e.py."""
import asyncio
import json

import support
from firmware import config, log
from firmware.app import App
from firmware.board.factory import make_board
from firmware.clouds import devicehive as dh
from firmware.net import conn, ws
from firmware.outbox import Outbox, Record

NOW = 1777025700
ACCESS = "eyJhbGciOiJIUzI1NiJ9.access-one.sig1"
REFRESH = "eyJhbGciOiJIUzI1NiJ9.refresh-one.sig2"


def make_cfg(root=None, **cloud):
    root = root or support.tmpdir("dh")
    support.write(root + "/ca.pem", "-----BEGIN CERTIFICATE-----\n")
    section = {"platform": "devicehive", "api_url": "wss://127.0.0.1:8443",
               "device_id": "esp32-1", "access_token": ACCESS, "refresh_token": REFRESH,
               "ca_file": "ca.pem"}
    section.update(cloud)
    raw = {"cloud": section, "board": "sim",
           "sensors": [{"id": 7, "quantity": "temperature", "interval_s": 5}],
           "commands": [{"id": 3, "kind": "switch", "safe_value": 0},
                        {"id": 4, "kind": "dimmer", "min": 0, "max": 100, "safe_value": 0}]}
    return config.validate(raw, root)


class Peer:
    """A DeviceHive server in miniature: tokens, device/save, subscribe, one queue of
    commands, notification/insert and command/update recorded."""

    def __init__(self):
        self.valid = {ACCESS}
        self.expire_next = 0  # answer the next N authenticated requests 401 Token expired
        self.authed = False
        self.saved = []
        self.notifications = []
        self.updates = []
        self.subscribes = []
        self.answer = True
        self.fail = {}  # action -> (code, error) for the next request of that action
        self.issued = 0

    def __call__(self, msg):
        action, rid = msg.get("action"), msg.get("requestId")

        def ok(**kw):
            kw.update(action=action, requestId=rid, status="success")
            return [kw]

        def err(code, text):
            return [{"action": action, "requestId": rid, "status": "error", "code": code,
                     "error": text}]

        if not self.answer:
            return []
        if action in self.fail:
            return err(*self.fail.pop(action))
        if action == "authenticate":
            self.authed = msg.get("token") in self.valid
            return ok() if self.authed else err(401, "Token expired")
        if action == "token/refresh":
            if msg.get("refreshToken") != REFRESH:
                return err(401, "Invalid refresh token")
            self.issued += 1
            token = "eyJhbGciOiJIUzI1NiJ9.access-%d.sig" % (self.issued + 1)
            self.valid = {token}
            return ok(accessToken=token)
        if not self.authed:
            return err(401, "Unauthorized")
        if self.expire_next:
            self.expire_next -= 1
            self.authed = False
            self.valid = set()
            return err(401, "Token expired")
        if action == "device/save":
            self.saved.append(msg)
            return ok()
        if action == "command/subscribe":
            self.subscribes.append(msg)
            return ok(subscriptionId=7)
        if action == "notification/insert":
            self.notifications.append(msg)
            return ok(notification={"id": len(self.notifications)})
        if action == "command/update":
            self.updates.append(msg)
            return ok()
        return err(400, "unknown action")


class FakeSocket:
    """The ws.WebSocket surface the adapter uses; every request goes to the peer."""

    def __init__(self, peer):
        self.peer = peer
        self.sent: list = []
        self.inbox: list = []
        self.ev = asyncio.Event()
        self.closed = False

    async def send_text(self, text):
        if self.closed:
            raise ws.WsClosed(1000, "")
        msg = json.loads(text)
        self.sent.append(msg)
        for r in self.peer(msg):
            self.push(r)

    def push(self, msg):
        self.inbox.append(msg if isinstance(msg, str) else json.dumps(msg))
        self.ev.set()

    async def recv(self, timeout_ms=None):
        while not self.inbox:
            if self.closed:
                raise ws.WsClosed(1006, "gone")
            self.ev.clear()
            await self.ev.wait()
        return self.inbox.pop(0)

    async def ping(self, data=b""):
        pass

    async def close(self, code=1000, reason=""):
        self.closed = True
        self.ev.set()


class Connector:
    def __init__(self, peer):
        self.peer = peer
        self.sockets: list = []
        self.urls: list = []

    async def __call__(self, url, ca_file=None, timeout_ms=None, max_message=None):
        self.urls.append((url, ca_file))
        s = FakeSocket(self.peer)
        self.sockets.append(s)
        return s


async def until(cond, what, steps=400):
    for _ in range(steps):
        if cond():
            return
        await asyncio.sleep_ms(5)
    raise AssertionError("never happened: " + what)


def adapter(peer=None, cfg=None):
    peer = peer or Peer()
    connector = Connector(peer)
    return dh.DeviceHive(cfg or make_cfg(), connector), peer, connector


async def started(cloud, task_holder):
    task_holder.append(asyncio.create_task(cloud.session()))
    await until(lambda: cloud.ready, "session ready")


def run_session(cloud, body):
    """Run the adapter's session task around body(cloud) and stop it afterwards."""
    async def main():
        tasks: list = []
        try:
            await started(cloud, tasks)
            return await body(cloud)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.sleep_ms(10)
    return support.run(main())


def test_handshake_authenticates_saves_subscribes_in_order():
    links: list = []
    cloud, peer, connector = adapter()
    cloud.on_link_up = links.append

    async def body(c):
        return c.token_due()

    due = run_session(cloud, body)
    sent = connector.sockets[0].sent
    assert [m["action"] for m in sent] == ["authenticate", "device/save", "command/subscribe"]
    assert connector.urls == [("wss://127.0.0.1:8443/api/websocket", cloud.ca_file)]
    assert sent[0]["token"] == ACCESS
    assert sent[1]["deviceId"] == "esp32-1" and sent[1]["device"]["name"] == "esp32-1"
    assert sent[1]["device"]["data"] == {"commands": ["3", "4"]}
    assert sent[2] == {"action": "command/subscribe", "requestId": sent[2]["requestId"],
                       "deviceId": "esp32-1"}  # first boot: no timestamp yet
    assert len(set(m["requestId"] for m in sent)) == 3
    assert links == [True] and cloud.subscription == 7 and due is False


def test_expired_token_at_authenticate_is_refreshed_on_the_same_socket():
    peer = Peer()
    peer.valid = set()  # the configured access token has expired
    cloud, _, connector = adapter(peer)
    lines: list = []
    log.set_sink(lines.append)
    try:
        run_session(cloud, lambda c: asyncio.sleep_ms(0))
    finally:
        log.set_sink(None)
    sent = connector.sockets[0].sent
    assert len(connector.sockets) == 1
    assert [m["action"] for m in sent] == ["authenticate", "token/refresh", "authenticate",
                                           "device/save", "command/subscribe"]
    assert sent[1]["refreshToken"] == REFRESH
    new = sent[2]["token"]
    assert new != ACCESS and cloud.access_token == new and cloud.renewals == 1
    log.info("t", "token %s", new)  # the refreshed token is registered as a secret
    assert new not in "\n".join(lines)


def test_401_mid_send_refreshes_and_sends_once_more():
    cloud, peer, connector = adapter()
    recs = [Record("1-1", "sensor", 7, "21.5", NOW), Record("1-2", "sensor", 7, "21.6", NOW)]

    async def body(c):
        peer.expire_next = 1
        return await c.send(recs)

    res = run_session(cloud, body)
    assert res.ok == ["1-1", "1-2"] and res.dead == [] and not res.failed
    actions = [m["action"] for m in connector.sockets[0].sent][3:]
    # pipelined: both went out, both got 401, one refresh, both once more
    assert actions == ["notification/insert", "notification/insert", "token/refresh",
                       "authenticate", "notification/insert", "notification/insert"]
    assert [n["notification"]["parameters"]["message_id"] for n in peer.notifications] == \
        ["1-1", "1-2"]
    assert cloud.renewals == 1


def test_refused_refresh_token_stops_the_session_with_a_named_error():
    peer = Peer()
    peer.valid = set()
    peer.fail["token/refresh"] = (401, "Invalid refresh token")
    cloud, _, connector = adapter(peer)
    lines: list = []
    log.set_sink(lines.append)

    async def main():
        t = asyncio.create_task(cloud.session())
        await until(lambda: any("provision new ones" in ln for ln in lines), "refusal logged")
        t.cancel()
        await asyncio.sleep_ms(10)

    try:
        support.run(main())
    finally:
        log.set_sink(None)
    assert not cloud.ready and connector.sockets[0].closed
    assert REFRESH not in "\n".join(lines)


def test_refresh_refused_mid_send_keeps_the_record_and_drops_the_socket():
    cloud, peer, connector = adapter()

    async def body(c):
        peer.expire_next = 1
        peer.fail["token/refresh"] = (401, "Refresh token expired")
        return await c.send([Record("1-1", "sensor", 7, "1", NOW)])

    res = run_session(cloud, body)
    assert res.ok == [] and res.dead == [] and res.failed
    assert connector.sockets[0].closed and cloud.renewals == 0


def test_notification_and_report_shapes():
    cloud, _, _ = adapter()
    action, body = cloud.to_wire(Record("a-1", "sensor", 7, "21.5", NOW))
    assert action == "notification/insert"
    assert body == {"deviceId": "esp32-1", "notification": {
        "notification": "sensor", "timestamp": "2026-04-24T10:15:00.000",
        "parameters": {"id": 7, "value": "21.5", "message_id": "a-1"}}}
    local = cloud.to_wire(Record("a-2", "command", 3, "1", NOW))
    assert local[0] == "notification/insert" and local[1]["notification"]["notification"] == \
        "command"
    for status, expect in (("applied", "applied"), (None, "applied"),
                           ("rejected", "rejected"), ("stale", "expired")):
        action, body = cloud.to_wire(Record("a-3", "command", 4, "55", NOW, desired_id=901,
                                            report_status=status))
        assert action == "command/update"
        assert body == {"deviceId": "esp32-1", "commandId": 901, "command": {
            "status": expect, "result": {"value": "55", "message_id": "a-3"}}}


def test_error_codes_decide_dead_or_kept():
    cloud, peer, _ = adapter()
    recs = [Record("1-1", "command", 4, "5", NOW, desired_id=1, report_status="applied"),
            Record("1-0", "sensor", 7, "1", 5),
            Record("1-2", "sensor", 7, "1", NOW), Record("1-3", "sensor", 7, "2", NOW)]

    async def body(c):
        peer.fail["command/update"] = (404, "Command not found")
        peer.fail["notification/insert"] = (503, "busy")
        return await c.send(recs)

    res = run_session(cloud, body)
    dead = dict(res.dead)
    assert dead["1-1"] == "404 Command not found"
    assert "unsendable" in dead["1-0"] and len(dead) == 2  # t before 2025
    assert res.failed and res.wait_ms > 0 and res.ok == ["1-3"]  # 1-2 kept (503)
    assert [n["notification"]["parameters"]["message_id"] for n in peer.notifications] == \
        ["1-3"]


def test_send_without_a_session_raises_a_net_error():
    cloud, _, _ = adapter()
    e = support.raises(dh.NotConnected, support.run,
                       cloud.send([Record("1-1", "sensor", 7, "1", NOW)]))
    assert isinstance(e, conn.NetError)


def test_unanswered_request_times_out_and_drops_the_socket():
    cloud, peer, connector = adapter(cfg=make_cfg(ack_timeout_s=0.2))

    async def body(c):
        peer.answer = False
        return await support.araises(conn.NetTimeout,
                                     c.send([Record("1-1", "sensor", 7, "1", NOW)]))

    run_session(cloud, body)
    assert connector.sockets[0].closed


def test_pushed_command_is_mapped_and_its_timestamp_kept_across_reboot():
    root = support.tmpdir("dhts")
    got: list = []
    cloud, peer, connector = adapter(cfg=make_cfg(root))
    cloud.on_desired = got.append

    async def body(c):
        sock = connector.sockets[0]
        sock.push({"action": "command/insert", "subscriptionId": 7, "command": {
            "id": 901, "command": "4", "deviceId": "esp32-1", "parameters": {"value": 42},
            "timestamp": "2026-04-24T10:15:00.123", "lifetime": 60, "status": None}})
        sock.push({"action": "command/insert", "subscriptionId": 7, "command": {
            "id": "902", "command": "fan-speed", "parameters": 7,
            "timestamp": "2026-04-24T10:16:00.000Z"}})
        await until(lambda: len(got) == 2, "two commands")

    run_session(cloud, body)
    assert got[0] == {"id": 4, "desired_id": 901, "value": 42, "expires_at": NOW + 60}
    # an unknown name is handed on as it is (the app reports it rejected); no lifetime
    assert got[1] == {"id": "fan-speed", "desired_id": "902", "value": 7, "expires_at": None}
    again, _, connector2 = adapter(cfg=make_cfg(root))  # a reboot: same data root
    assert again.last_ts == "2026-04-24T10:16:00.000Z"
    run_session(again, lambda c: asyncio.sleep_ms(0))
    assert connector2.sockets[0].sent[2]["timestamp"] == "2026-04-24T10:16:00.000Z"
    support.rmtree(root)


def test_command_applied_once_expired_reported_and_duplicates_ignored_across_reboot():
    root = support.tmpdir("dhapp")

    def boot():
        cfg = make_cfg(root)
        board = make_board("sim", cfg.get("sensors"), cfg.get("commands"))
        outbox = Outbox(root + "/outbox", max_records=100)
        cloud, peer, connector = adapter(cfg=cfg)
        return App(cfg, board, outbox, support.made(cloud)), peer, connector

    def push(connector, cid, value, ts, lifetime=None):
        connector.sockets[-1].push({"action": "command/insert", "subscriptionId": 7,
                                    "command": {"id": cid, "command": "4",
                                                "parameters": {"value": value},
                                                "timestamp": ts, "lifetime": lifetime}})

    now_ts = dh.dh_time(dh.clock.unix_time())
    app, peer, connector = boot()

    async def first(c):
        push(connector, 11, 55, now_ts, 600)
        push(connector, 12, 20, "2026-01-01T00:00:00.000", 60)  # long past its lifetime
        push(connector, 11, 55, now_ts, 600)  # redelivered on the same socket
        await until(lambda: app.outbox.pending_count() == 2, "two reports")
        res = await c.send(app.outbox.pending(10))
        app.outbox.resolve(res.ok)  # as the uplink does: one send result, durable at once
        return res

    res = run_session(app.cloud, first)
    assert len(res.ok) == 2 and app.board.actuators[4].value() == 55
    assert [(u["commandId"], u["command"]["status"], u["command"]["result"]["value"])
            for u in peer.updates] == [(11, "applied", "55"), (12, "expired", "55")]
    app2, peer2, connector2 = boot()  # reboot: the cloud sends 11 again after subscribe

    async def second(c):
        push(connector2, 11, 55, now_ts, 600)
        await asyncio.sleep_ms(50)

    run_session(app2.cloud, second)
    assert connector2.sockets[0].sent[2]["timestamp"] == now_ts
    assert app2.outbox.pending_count() == 0 and app2.applied == 0  # not applied twice
    support.rmtree(root)


def test_malformed_server_messages_are_logged_and_survived():
    got: list = []
    cloud, peer, connector = adapter()
    cloud.on_desired = got.append
    lines: list = []
    bad = ["{not json", "[1, 2]", "42", json.dumps({"action": "weird/thing"}),
           json.dumps({"action": "command/insert"}),
           json.dumps({"action": "command/insert", "command": "x"}),
           json.dumps({"action": "command/insert", "command": {"id": [1], "command": "4"}}),
           json.dumps({"action": "command/insert", "command": {"id": True, "command": "4"}}),
           json.dumps({"action": "command/insert", "command": {"id": 5, "command": 4}}),
           json.dumps({"action": "command/insert", "command": {"id": 5, "command": "4",
                                                               "deviceId": "other"}}),
           json.dumps({"requestId": ["x"], "status": "success"}),
           json.dumps({"requestId": "nobody", "status": "success"}),
           json.dumps({"action": "command/insert", "command": {
               "id": 6, "command": "4", "parameters": {"value": 1}, "timestamp": 17,
               "lifetime": "long"}})]

    async def body(c):
        log.set_sink(lines.append)
        for b in bad:
            connector.sockets[0].push(b)
        await until(lambda: got, "the last (readable) command")
        log.set_sink(None)
        return await c.send([Record("1-1", "sensor", 7, "1", NOW)])

    res = run_session(cloud, body)
    assert res.ok == ["1-1"] and len(connector.sockets) == 1  # same socket, still working
    assert got == [{"id": 4, "desired_id": 6, "value": 1, "expires_at": None}]
    assert sum(1 for ln in lines if " W " in ln or "ignored" in ln) >= len(bad) - 1
    assert any("not JSON" in ln for ln in lines)
    assert any("weird/thing" in ln for ln in lines)


def test_responses_match_their_requests_out_of_order():
    cloud, peer, connector = adapter()

    async def body(c):
        held: list = []
        sock = connector.sockets[0]
        real = sock.peer
        sock.peer = lambda m: (held.append(real(m)[0]), [])[1]  # hold the answers
        t1 = asyncio.create_task(c.request("notification/insert", {"deviceId": "esp32-1",
                                                                   "notification": {}}))
        t2 = asyncio.create_task(c.request("command/update", {"commandId": 1}))
        await until(lambda: len(held) == 2, "two requests out")
        sock.push(held[1])  # the second answer first
        sock.push(held[0])
        return await t1, await t2

    r1, r2 = run_session(cloud, body)
    assert r1["action"] == "notification/insert" and r2["action"] == "command/update"


def test_send_pipelines_a_batch_and_a_cut_keeps_what_was_not_answered():
    cloud, peer, connector = adapter(cfg=make_cfg(ack_timeout_s=0.3))
    recs = [Record("1-%d" % i, "sensor", 7, str(i), NOW) for i in range(4)]

    async def body(c):
        held: list = []
        sock = connector.sockets[0]
        real = sock.peer
        sock.peer = lambda m: (held.append(real(m)[0]), [])[1]
        t = asyncio.create_task(c.send(recs))
        await until(lambda: len(held) == 4, "the whole batch out before any answer")
        for a in held[:2]:  # two answers, then the socket goes silent
            sock.push(a)
        return await t

    res = run_session(cloud, body)
    assert res.ok == ["1-0", "1-1"] and res.failed and res.dead == []
    assert connector.sockets[0].closed  # unanswered: the socket is not trusted


def test_time_helpers():
    assert dh.dh_time(NOW) == "2026-04-24T10:15:00.000"
    for text in ("2026-04-24T10:15:00.000", "2026-04-24T10:15:00Z",
                 "2026-04-24T10:15:00.999+00:00", "2026-04-24T12:15:00+02:00"):
        assert dh.parse_time(text) == NOW, text
    for bad in (None, 17, "", "yesterday", "2026-04-24"):
        assert dh.parse_time(bad) is None
    assert dh.command_value({"value": 3}) == 3 and dh.command_value(5) == 5
    assert dh.command_value({"other": 1}) is None


def test_only_a_success_answer_to_the_request_delivers_its_record():
    # a proxy's HTML page, a JSON list, an empty message, an answer without status, a
    # "success" for another action: none of them is DeviceHive's acceptance
    bad = [lambda m: "<html><body>502 Bad Gateway</body></html>", lambda m: "[1, 2]",
           lambda m: "", lambda m: {"action": m["action"], "requestId": m["requestId"]},
           lambda m: {"action": "command/update", "requestId": m["requestId"],
                      "status": "success"}]
    for make in bad:
        cloud, peer, connector = adapter(cfg=make_cfg(ack_timeout_s=0.2))
        res = run_session(cloud, _send_one_answered_by(connector, make))
        if isinstance(res, conn.NetError):
            continue  # no answer at all: send raised, the uplink keeps the records
        assert res.ok == [] and res.dead == [] and res.failed, make({"action": "a",
                                                                       "requestId": "r"})


def _send_one_answered_by(connector, make):
    async def body(c):
        sock = connector.sockets[0]
        real = sock.peer
        sock.peer = lambda m: [make(m)] if m.get("action") == "notification/insert" \
            else real(m)
        try:
            return await c.send([Record("1-1", "sensor", 7, "1", NOW)])
        except conn.NetError as e:
            return e
    return body
