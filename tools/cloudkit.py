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
- cli() / data_command() / run(): the `serve` command line every cloud shares.
"""
import argparse
import asyncio
import json
import os
import signal
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
    write_info(data, info)
    print(banner, flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for t in tasks:
            t.cancel()
        for fn in on_stop:
            fn()
        await runner.cleanup()


def cli(module, description, token_ttl, ttl_help=None):
    """(parser, subparsers, serve parser): `python -m tools.MODULE serve --data DIR [--port
    N] [--token-ttl S]`, the command line every cloud shares; the cloud adds its own."""
    ap = argparse.ArgumentParser(prog="python -m tools." + module, description=description)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = data_command(sub, "serve")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--token-ttl", type=int, default=token_ttl, help=ttl_help)
    return ap, sub, s


def data_command(sub, name):
    """A subcommand that works on the cloud's data directory (--data DIR)."""
    p = sub.add_parser(name)
    p.add_argument("--data", required=True)
    return p


def fault_command(sub, kinds, timing=False):
    """`fault --data DIR KIND [--count N]`, with timing also [--retry-after S] [--seconds
    S]: the parser; the cloud adds what else its faults take."""
    k = data_command(sub, "fault")
    k.add_argument("kind", choices=kinds)
    k.add_argument("--count", type=int, default=1)
    if timing:
        k.add_argument("--retry-after", type=int, default=2)
        k.add_argument("--seconds", type=float, default=5)
    return k


def run(data, main):
    """Create DATA, then run the coroutine `main` until it ends or Ctrl-C."""
    os.makedirs(data, exist_ok=True)
    try:
        asyncio.run(main)
    except KeyboardInterrupt:
        pass
