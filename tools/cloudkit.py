"""The kit every local cloud (tools/<platform>_cloud.py) is built on: all but the protocol.

A local cloud keeps its state in one SQLite file under DATA and serves one aiohttp app over
TLS on 127.0.0.1; this module owns the parts that are the same for every platform:

- pki(data): the test PKI in DATA/pki (tools/pki.py), made on the first start and reused
  after, so a device keeps trusting the same CA across restarts of its cloud.
- open_db(data, name, schema): the cloud's SQLite file (autocommit, 10 s busy timeout) with
  its schema applied, so the CLI and tests can read and change it while the server runs.
- Knobs: test knobs, JSON values by name in one table of that file. A fault knob is a dict
  with "count" (uses left); take() consumes one use.
- fault_middleware(): puts a cloud's fault knobs in front of its routes.
- serve(): listen, write DATA/cloud.json (what run_local and the tests read), run the
  cloud's background loops, stop on SIGINT/SIGTERM.
- ticking(): a background loop that survives a failing step.
- start_broker() / BrokerSession: the cloud's own mosquitto (tools/mosquitto.py) and its
  admin session on it, for the platforms that speak MQTT.
- cli() and the commands on it (command, rows_command, show_command, fault_command,
  wait_option), main(), run(): the command line every cloud shares; the cloud names its
  operator commands and what they call.
"""
import argparse
import asyncio
import json
import os
import signal
import socket
import sqlite3
import ssl
import time

from aiohttp import web

from tools.pki import make_certs

HOST = "127.0.0.1"
PKI_FILES = (("ca", "ca.pem"), ("server_cert", "server.pem"), ("server_key", "server.key"))


def pki(data):
    """{"ca", "server_cert", "server_key"}: PEM paths in DATA/pki, made once."""
    d = os.path.join(data, "pki")
    paths = {k: os.path.join(d, f) for k, f in PKI_FILES}
    if not os.path.exists(paths["ca"]):
        make_certs(d)
    return paths


def server_context(paths):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(paths["server_cert"], paths["server_key"])
    return ctx


def open_db(data, name, schema, fast=False):
    """A connection to DATA/name with `schema` applied. fast: no fsync per write (a killed
    process loses nothing, a power cut may lose the last records: fine for a test cloud)."""
    conn = sqlite3.connect(os.path.join(data, name), isolation_level=None, timeout=10)
    if fast:
        conn.execute("pragma synchronous=off")
    conn.executescript(schema)
    return conn


class Knobs:
    """Named JSON values in `table` (name text primary key, value text) of a cloud's
    database: what tests and the CLI set to change how the running cloud behaves."""

    def __init__(self, conn, table="knob"):
        self.conn = conn
        self.table = table

    def get(self, name, default=None):
        row = self.conn.execute("select value from %s where name=?" % self.table,
                                (name,)).fetchone()
        return json.loads(row[0]) if row else default

    def set(self, name, value):
        self.conn.execute("insert or replace into %s values (?,?)" % self.table,
                          (name, json.dumps(value)))

    def take(self, name):
        """The fault knob `name` ({"count": uses left, ...}) with one use consumed, or None
        when it is unset or used up (a knob without "count" has no uses)."""
        knob = self.get(name)
        if not isinstance(knob, dict) or knob.get("count", 0) <= 0:
            return None
        knob["count"] -= 1
        self.set(name, knob)
        return knob


def fault_middleware(paths, before, after=None):
    """aiohttp middleware for a routed request whose path starts with one of `paths` (a
    request no route takes consumes no fault): `await before(request)` answers in place of the
    handler when it returns a response; `after(request, response)` may replace the answer."""

    @web.middleware
    async def faults(request, handler):
        if request.match_info.http_exception is not None or \
                not request.path.startswith(tuple(paths)):
            return await handler(request)
        resp = await before(request)
        if resp is not None:
            return resp
        resp = await handler(request)
        return resp if after is None else after(request, resp)

    return faults


def now_iso(t=None):
    """UTC, to the second, with Z: 2026-04-24T10:15:00Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t or time.time()))


def write_info(data, info):
    """DATA/cloud.json, whole or not at all: readers poll for it to know the cloud is up."""
    tmp = os.path.join(data, "cloud.json.tmp")
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, os.path.join(data, "cloud.json"))


async def ticking(step, period, failed, wake=None):
    """Run `await step()` every `period` s (sooner when `wake` is set) until cancelled; a
    failing step is reported to failed(exc) and the loop goes on."""
    while True:
        try:
            await step()
        except Exception as e:  # a bad row or a broker hiccup must not stop the loop
            failed(e)
        if wake is None:
            await asyncio.sleep(period)
            continue
        wake.clear()
        try:
            await asyncio.wait_for(wake.wait(), period)
        except asyncio.TimeoutError:
            pass


async def serve(data, paths, app, port, describe, loops=(), on_stop=()):
    """Serve `app` over TLS (certificates `paths`) on 127.0.0.1:port (0: any free port),
    then write DATA/cloud.json = describe(port)[0] and print describe(port)[1]; run the
    coroutines `loops` beside it; on SIGINT or SIGTERM cancel them, call each of `on_stop`
    and close the server. Explicit signal handlers: a cloud started from a background shell
    inherits SIGINT ignored."""
    # a request still open at stop (a slow fault, a WebSocket) gets 1 s, not aiohttp's 60
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, HOST, port, ssl_context=server_context(paths))
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    info, banner = describe(port)
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(c) for c in loops]
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before cloud.json: whoever reads it may stop us
        loop.add_signal_handler(sig, stop.set)
    try:
        write_info(data, info)
        print(banner, flush=True)
        await stop.wait()
    finally:
        for t in tasks:
            t.cancel()
        for fn in on_stop:
            fn()
        await runner.cleanup()


def start_broker(data, paths):
    """The cloud's own mosquitto in DATA/mqtt (TLS with `paths`, fresh dynsec state); call
    from the main thread: the broker is bound to the life of the thread that starts it."""
    from tools.mosquitto import Broker

    return Broker(os.path.join(data, "mqtt"), certs=paths).start()


def _nodelay(_client, _userdata, sock):
    # the cloud's acks go out back to back: without TCP_NODELAY all but the first wait on
    # Nagle for the broker's delayed ACK (40 ms on loopback; bench/mqtt-throughput.md)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not a TCP socket
        pass


class BrokerSession:
    """The cloud's own admin session on its broker (paho, MQTT 5). paho runs its network
    thread; every message (on_message(msg)) and every connect or disconnect (on_up(bool)) is
    handed to the asyncio `loop`, where all database work happens. It subscribes to
    `filters` (QoS 1, no-local: the cloud never hears its own publishes) on every connect;
    session_expiry (s): a persistent session, so PUBACKed device messages wait for it."""

    def __init__(self, broker, client_id, loop, filters, on_message, on_up=None,
                 session_expiry=None, log=None):
        import paho.mqtt.client as mqtt

        self.mqtt, self.broker, self.loop = mqtt, broker, loop
        self.filters, self.on_up, self.log = filters, on_up, log
        self.session_expiry = session_expiry
        self.connected = False
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(0.2, 2)
        self.client.username_pw_set(*broker.admin)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_a: loop.call_soon_threadsafe(self._up, False)
        self.client.on_message = lambda _c, _u, m: loop.call_soon_threadsafe(on_message, m)
        self.client.on_socket_open = _nodelay

    def start(self):
        kw = {}
        if self.session_expiry is not None:
            props = self._props("CONNECT")
            props.SessionExpiryInterval = self.session_expiry
            kw = {"clean_start": False, "properties": props}
        self.client.connect(self.broker.host, self.broker.port, keepalive=30, **kw)
        self.client.loop_start()

    def stop(self):
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic, body, retain=False, response_topic=None):
        """QoS 1; body: bytes or str as they are, anything else as JSON."""
        props = self._props("PUBLISH")
        if response_topic:
            props.ResponseTopic = response_topic
        payload = body if isinstance(body, (bytes, str)) else json.dumps(body)
        self.client.publish(topic, payload, qos=1, retain=retain, properties=props)

    def _props(self, packet):
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        return Properties(getattr(PacketTypes, packet))

    def _on_connect(self, client, _u, _f, rc, _p):
        if rc.is_failure:
            if self.log:
                self.loop.call_soon_threadsafe(self.log, "bridge connect refused: %s", rc)
            return
        opts = self.mqtt.SubscribeOptions(qos=1, noLocal=True)
        client.subscribe([(f, opts) for f in self.filters])
        self.loop.call_soon_threadsafe(self._up, True)

    def _up(self, up):
        self.connected = up
        if self.on_up:
            self.on_up(up)


def cli(module, description, token_ttl, serve, ttl_help=None):
    """(parser, subparsers, serve parser): `python -m tools.MODULE serve --data DIR [--port
    N] [--token-ttl S]`, the command line every cloud shares, serve(args) running it; the
    cloud adds its own commands (command(), rows_command(), ...) and calls main()."""
    ap = argparse.ArgumentParser(prog="python -m tools." + module, description=description)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = command(sub, "serve", serve)
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--token-ttl", type=int, default=token_ttl, help=ttl_help)
    return ap, sub, s


def command(sub, name, run):
    """A subcommand on the cloud's data directory (--data DIR) that run(args) carries out."""
    p = sub.add_parser(name)
    p.add_argument("--data", required=True)
    p.set_defaults(run=run)
    return p


def rows_command(sub, name, rows):
    """`NAME --data DIR`: rows(data), one JSON object a line."""

    def run(a):
        for row in rows(a.data):
            print(json.dumps(row))

    return command(sub, name, run)


def show_command(sub, name, state, render):
    """`NAME --data DIR [--json]`: state(data) for people (render(state)) or as JSON."""

    def run(a):
        s = state(a.data)
        print(json.dumps(s, indent=2) if a.json else render(s))

    p = command(sub, name, run)
    p.add_argument("--json", action="store_true", help="the raw state as JSON")
    return p


def wait_option(p):
    """--wait [SECONDS] on an operator command that then waits for the device's answer."""
    p.add_argument("--wait", type=float, nargs="?", const=60, metavar="SECONDS",
                   help="then wait (default 60 s) for the device's answer and print it")


def fault_command(sub, kinds, set_fault, timing=False):
    """`fault --data DIR KIND [--count N]`, with timing also [--retry-after S] [--seconds
    S]; set_fault(args) stores it. The parser: the cloud adds what else its faults take."""
    k = command(sub, "fault", set_fault)
    k.add_argument("kind", choices=kinds)
    k.add_argument("--count", type=int, default=1)
    if timing:
        k.add_argument("--retry-after", type=int, default=2)
        k.add_argument("--seconds", type=float, default=5)
    return k


def main(ap, argv):
    """Parse argv and run the chosen command; its result is the exit status."""
    a = ap.parse_args(argv)
    return a.run(a)


def run(data, main, broker=False):
    """Create DATA, then run the coroutine main(broker) until it ends or Ctrl-C; broker:
    with the cloud's own mosquitto (start_broker), stopped on the way out."""
    os.makedirs(data, exist_ok=True)
    b = start_broker(data, pki(data)) if broker else None
    try:
        asyncio.run(main(b))
    except KeyboardInterrupt:
        pass
    finally:
        if b is not None:
            b.stop()
