"""tools/cloudkit.py, the kit every local cloud is built on: PKI made once, the SQLite file,
knobs, the fault middleware, serve() (TLS, cloud.json, background loops, SIGINT) and the CLI."""
import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import textwrap
import urllib.request

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from rig import scratch_dir, wait_for

from tools import cloudkit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCHEMA = "create table if not exists knob (name text primary key, value text);"


def test_pki_is_made_once_and_reused():
    with scratch_dir() as d:
        first = cloudkit.pki(d)
        assert sorted(first) == ["ca", "server_cert", "server_key"]
        assert all(p.startswith(os.path.join(d, "pki")) and os.path.exists(p)
                   for p in first.values())
        with open(first["ca"], "rb") as f:
            ca = f.read()
        again = cloudkit.pki(d)
        assert again == first
        with open(again["ca"], "rb") as f:
            assert f.read() == ca  # a restarted cloud keeps the CA its devices trust
        ctx = ssl.create_default_context(cafile=first["ca"])
        assert ctx.cert_store_stats()["x509_ca"] == 1
        cloudkit.server_context(first)  # the key matches the certificate


def test_open_db_applies_the_schema_and_is_shared_between_connections():
    with scratch_dir() as d:
        server = cloudkit.open_db(d, "x.db", SCHEMA, fast=True)
        cli = cloudkit.open_db(d, "x.db", SCHEMA)
        assert server.execute("pragma synchronous").fetchone()[0] == 0
        assert cli.execute("pragma synchronous").fetchone()[0] != 0
        cloudkit.Knobs(cli).set("a", 1)  # autocommit: the server sees it at once
        assert cloudkit.Knobs(server).get("a") == 1
        assert os.listdir(d) == ["x.db"]


def test_knobs_hold_json_and_take_counts_uses_down():
    with scratch_dir() as d:
        knobs = cloudkit.Knobs(cloudkit.open_db(d, "x.db", SCHEMA))
        assert knobs.get("missing") is None and knobs.get("missing", 7) == 7
        knobs.set("url", "mqtts://127.0.0.1:1")
        knobs.set("fault", {"kind": "429", "count": 2, "retry_after": 3})
        assert knobs.get("url") == "mqtts://127.0.0.1:1"
        assert knobs.take("fault") == {"kind": "429", "count": 1, "retry_after": 3}
        other = cloudkit.Knobs(cloudkit.open_db(d, "x.db", SCHEMA))  # the CLI's view
        assert other.get("fault")["count"] == 1
        assert other.take("fault")["count"] == 0
        assert knobs.take("fault") is None and knobs.get("fault")["count"] == 0
        knobs.set("nocount", {"kind": "drop"})
        knobs.set("plain", 3)
        assert knobs.take("nocount") is None and knobs.take("plain") is None
        assert knobs.take("missing") is None


def test_knobs_in_another_table():
    with scratch_dir() as d:
        conn = cloudkit.open_db(d, "x.db", "create table kv (name text primary key, value "
                                           "text);")
        cloudkit.Knobs(conn, "kv").set("fault:drop", {"count": 1})
        assert conn.execute("select value from kv").fetchone()[0] == '{"count": 1}'


def test_fault_middleware_answers_in_place_only_for_routed_requests_under_its_paths():
    calls = []

    async def before(request):
        calls.append(request.path)
        if request.headers.get("X-Fault") == "503":
            return web.Response(status=503, text="fault")
        return None

    def after(request, resp):
        return web.Response(status=resp.status, text="garbled") \
            if request.headers.get("X-Fault") == "garbage" else resp

    async def ok(request):
        return web.Response(text="handled " + request.path)

    async def main():
        app = web.Application(middlewares=[cloudkit.fault_middleware(("/api", "/oauth"),
                                                                     before, after)])
        for path in ("/api/x", "/oauth/token", "/_admin/x"):
            app.router.add_get(path, ok)
        async with TestClient(TestServer(app)) as client:
            out = []
            for path, fault in (("/api/x", "503"), ("/api/x", "garbage"), ("/api/x", ""),
                                ("/oauth/token", "503"), ("/_admin/x", "503"),
                                ("/api/nowhere", "503")):
                r = await client.get(path, headers={"X-Fault": fault})
                out.append((r.status, await r.text()))
            return out

    assert asyncio.run(main()) == [(503, "fault"), (200, "garbled"), (200, "handled /api/x"),
                                   (503, "fault"), (200, "handled /_admin/x"),
                                   (404, "404: Not Found")]
    # the admin route and a path no route takes never reach the fault knobs
    assert calls == ["/api/x", "/api/x", "/api/x", "/oauth/token"]


def test_ticking_goes_on_after_a_failing_step_and_wakes_early():
    async def main():
        steps, failures = [], []
        wake, third = asyncio.Event(), asyncio.Event()

        async def step():
            steps.append(len(steps))
            if len(steps) == 2:
                raise ValueError("bad row")
            if len(steps) == 3:
                third.set()

        # a period no test waits out: only the wake event gets the later steps going
        task = asyncio.ensure_future(cloudkit.ticking(step, 3600, failures.append, wake))
        for n in (1, 2):
            while len(steps) < n:
                await asyncio.sleep(0)
            wake.set()
        await asyncio.wait_for(third.wait(), 30)
        task.cancel()
        return steps, failures

    steps, failures = asyncio.run(main())
    assert steps[:3] == [0, 1, 2]
    assert [str(e) for e in failures] == ["bad row"]


def test_cli_shares_serve_operator_and_fault_commands(capsys):
    ran = []
    ap, sub, _ = cloudkit.cli("x_cloud", "a cloud", 120, lambda a: ran.append(a) or 3,
                              ttl_help="seconds")
    cloudkit.fault_command(sub, ("401", "slow"), lambda a: ran.append(a), timing=True)
    cloudkit.rows_command(sub, "list", lambda data: [{"data": data, "n": 1}, {"n": 2}])
    cloudkit.show_command(sub, "show", lambda data: {"at": data}, lambda s: "at " + s["at"])
    cloudkit.wait_option(cloudkit.command(sub, "send", lambda a: a.wait))
    assert ap.prog == "python -m tools.x_cloud"
    assert cloudkit.main(ap, ["serve", "--data", "D"]) == 3  # the command's exit status
    a = ran.pop()
    assert (a.cmd, a.data, a.port, a.token_ttl) == ("serve", "D", 0, 120)
    cloudkit.main(ap, ["fault", "--data", "D", "slow", "--seconds", "1.5"])
    a = ran.pop()
    assert (a.kind, a.count, a.retry_after, a.seconds) == ("slow", 1, 2, 1.5)
    assert cloudkit.main(ap, ["send", "--data", "D", "--wait"]) == 60
    assert cloudkit.main(ap, ["send", "--data", "D"]) is None
    capsys.readouterr()
    cloudkit.main(ap, ["list", "--data", "D"])
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [
        {"data": "D", "n": 1}, {"n": 2}]
    cloudkit.main(ap, ["show", "--data", "D"])
    assert capsys.readouterr().out == "at D\n"
    cloudkit.main(ap, ["show", "--data", "D", "--json"])
    assert json.loads(capsys.readouterr().out) == {"at": "D"}


def test_broker_session_subscribes_hands_messages_to_the_loop_and_publishes():
    from tools.mosquitto import SyncClient

    async def main(broker):
        loop = asyncio.get_running_loop()
        got, ups, up = asyncio.Queue(), [], asyncio.Event()

        def on_up(state):
            ups.append(state)
            up.set()

        session = cloudkit.BrokerSession(broker, "kit-test", loop, ["dev/+/up"],
                                         lambda m: got.put_nowait((m.topic, m.payload)),
                                         on_up, session_expiry=60)
        broker.add_client("dev", "pw", client_id="dev1", publish=["dev/1/up"],
                          subscribe=["dev/1/down"])
        session.start()
        try:
            await asyncio.wait_for(up.wait(), 30)
            assert session.connected
            dev = SyncClient(broker.host, broker.port, "dev", "pw", client_id="dev1")
            await loop.run_in_executor(None, dev.connect)
            await loop.run_in_executor(None, dev.subscribe, "dev/1/down")
            await loop.run_in_executor(None, dev.publish, "dev/1/up", b'{"n": 1}')
            topic_payload = await asyncio.wait_for(got.get(), 30)
            session.publish("dev/1/down", {"answer": 2}, response_topic="dev/1/up")
            down = await loop.run_in_executor(None, dev.next_message, 30)
            dev.close()
        finally:
            session.stop()
        return topic_payload, down, ups

    with scratch_dir() as d:
        broker = cloudkit.start_broker(d, cloudkit.pki(d))
        try:
            (topic, payload), down, ups = asyncio.run(main(broker))
        finally:
            broker.stop()
        assert os.path.isdir(os.path.join(d, "mqtt"))
    assert (topic, payload) == ("dev/1/up", b'{"n": 1}')
    assert down.topic == "dev/1/down" and json.loads(down.payload) == {"answer": 2}
    assert down.properties.ResponseTopic == "dev/1/up"
    assert ups[0] is True


# A minimal cloud on the kit, run as its own process like `python -m tools.<p>_cloud serve`.
MINI = textwrap.dedent("""
    import asyncio, sys
    from aiohttp import web
    from tools import cloudkit

    async def hello(request):
        return web.json_response({"hello": True})

    async def loop_step():
        print("tick", flush=True)

    async def main(data):
        app = web.Application()
        app.router.add_get("/hello", hello)
        pki = cloudkit.pki(data)
        describe = lambda port: ({"api_url": "https://127.0.0.1:%d" % port,
                                  "ca_file": pki["ca"]}, "mini cloud on %d" % port)
        await cloudkit.serve(data, pki, app, 0, describe,
                             [cloudkit.ticking(loop_step, 3600, print)],
                             [lambda: print("stopped", flush=True)])

    cloudkit.run(sys.argv[1], lambda _broker: main(sys.argv[1]))
""")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_listens_over_tls_writes_cloud_json_and_stops_on_a_signal(sig):
    with scratch_dir() as d:
        data = os.path.join(d, "cloud")  # run() creates it
        proc = subprocess.Popen([sys.executable, "-c", MINI, data], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                 signal.SIG_IGN))
        try:
            info_path = os.path.join(data, "cloud.json")
            wait_for("cloud.json", lambda: os.path.exists(info_path) or proc.poll() is not None,
                     60)
            assert proc.poll() is None, proc.stderr.read().decode()
            with open(info_path) as f:
                info = json.load(f)
            assert not os.path.exists(info_path + ".tmp")
            assert info["ca_file"] == os.path.join(data, "pki", "ca.pem")
            ctx = ssl.create_default_context(cafile=info["ca_file"])  # verification on
            with urllib.request.urlopen(info["api_url"] + "/hello", context=ctx,
                                        timeout=30) as r:
                assert json.load(r) == {"hello": True}
            # started with SIGINT ignored (a background shell): the kit still stops on it
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        assert proc.returncode == 0, err.decode()
        lines = out.decode().split()
        assert lines[:3] == ["mini", "cloud", "on"] and "tick" in lines
        assert lines[-1] == "stopped"


CLOUDS = ("realer", "nubison", "devicehive", "xyte")


def test_every_cloud_serves_with_the_same_flags(capsys):
    import importlib

    for platform in CLOUDS:
        cloud = importlib.import_module("tools.%s_cloud" % platform)
        try:
            cloud.main(["serve", "--help"])
        except SystemExit as e:
            assert e.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: python -m tools.%s_cloud serve" % platform), out
        for flag in ("--data DATA", "--port PORT", "--token-ttl TOKEN_TTL"):
            assert flag in out, (platform, flag)


def test_operator_commands_exit_0_on_a_running_cloud():
    from tools import realer_cloud, run_local

    with scratch_dir() as d:
        proc, _ = run_local.start_cloud(d)
        try:
            for args in (["fault", "429", "--count", "2"], ["show-device"],
                         ["list-feed-data"]):
                r = subprocess.run([sys.executable, "-m", "tools.realer_cloud", args[0],
                                    "--data", d] + args[1:], cwd=ROOT, capture_output=True,
                                   timeout=120)
                assert r.returncode == 0, (args, r.stderr.decode())
            assert realer_cloud.db(d).execute("select value from knob where name='fault'"
                                              ).fetchone()[0] == json.dumps(
                {"kind": "429", "count": 2, "retry_after": 2, "seconds": 5})
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(60) == 0
