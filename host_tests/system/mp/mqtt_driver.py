# Drives firmware.net.mqtt under MicroPython; prints one JSON line per action/event.
# argv[1]: a file holding JSON {"url", "ca"?, "client_id", "user"?, "password"?, "version"?,
# "keepalive"?, "window"?, "actions": [[name, ...args]]} or {"mode": "stream", ...} (below).
import asyncio
import json
import sys
from time import ticks_diff, ticks_ms

from firmware.net import mqtt

_PROP_NAMES = {"user": mqtt.USER_PROPERTY, "response_topic": mqtt.RESPONSE_TOPIC,
               "content_type": mqtt.CONTENT_TYPE, "expiry": mqtt.MESSAGE_EXPIRY,
               "correlation": mqtt.CORRELATION_DATA}


def say(**kw):
    print(json.dumps(kw))


def props_in(spec):
    if not spec:
        return None
    out = {}
    for name, value in spec.items():
        if name == "user":
            value = [tuple(p) for p in value]
        elif name == "correlation":
            value = value.encode()
        out[_PROP_NAMES[name]] = value
    return out


def props_out(props):
    out = {}
    for name, pid in _PROP_NAMES.items():
        if pid in props:
            v = props[pid]
            out[name] = v.decode() if isinstance(v, bytes) else v
    return out


def make_client(spec, inbox):
    return mqtt.Client(spec["url"], spec["client_id"], spec.get("user"), spec.get("password"),
                       keepalive_s=spec.get("keepalive", 30), version=spec.get("version", 5),
                       ca_file=spec.get("ca"), window=spec.get("window", 8), timeout_ms=5000,
                       on_message=inbox.append)


async def actions(spec):
    inbox: list = []
    c = make_client(spec, inbox)
    try:
        await c.connect()
    except Exception as e:
        say(connect=type(e).__name__, code=getattr(e, "code", None), msg=str(e)[:160],
            credentials_refused=isinstance(e, mqtt.CredentialsRefused))
        return
    say(connect="ok", session_present=c.session_present)
    for action in spec["actions"]:
        name, args = action[0], action[1:]
        out: dict = {"action": name}
        try:
            if name == "subscribe":
                out["codes"] = await c.subscribe(args[0])
            elif name == "publish":
                topic, payload, qos = args[0], args[1], args[2]
                out["pid"] = await c.publish(topic, payload, qos,
                                             props=props_in(args[3] if len(args) > 3 else None))
            elif name == "burst":
                topic, n = args[0], args[1]
                t0 = ticks_ms()
                peak = 0
                for i in range(n):
                    await c.publish(topic, b"%d" % i, 1, wait=False)
                    peak = max(peak, c.inflight)
                await c.flush()
                out.update(n=n, ms=ticks_diff(ticks_ms(), t0), peak=peak)
            elif name == "recv":
                t0 = ticks_ms()
                while not inbox and ticks_diff(ticks_ms(), t0) < args[0]:
                    await asyncio.sleep_ms(10)
                if inbox:
                    m = inbox.pop(0)
                    out.update(topic=m.topic, payload=m.payload.decode(), qos=m.qos,
                               retain=m.retain, props=props_out(m.props))
                else:
                    out["timeout"] = True
            elif name == "idle":
                await asyncio.sleep_ms(args[0])
                out["connected"] = c.connected
                out["error"] = type(c.error).__name__ if c.error else None
            elif name == "disconnect":
                await c.disconnect()
        except Exception as e:
            out["error"] = type(e).__name__
            out["code"] = getattr(e, "code", None)
            out["denied"] = getattr(e, "denied", None)
            out["msg"] = str(e)[:160]
        say(**out)
    await c.disconnect()


async def stream(spec):
    """Publish `n` QoS 1 messages, one per interval, through c.run() (reconnects), retrying a
    message until it is acknowledged, the way the outbox does; echo what arrives on `sub`.
    With `tail`, go on past `n` until `tail` messages were published after the first message
    arrived (a test that pushes one after a reconnect then sees messages sent after it, however
    late its push lands)."""
    inbox: list = []
    c = make_client(spec, inbox)
    c.subscriptions[spec["sub"]] = 1

    async def on_connect(client):
        say(event="connected", connects=client.connects)

    runner = asyncio.create_task(c.run(on_connect=on_connect, base_ms=100, cap_ms=500))
    deadline = ticks_ms() + spec.get("timeout_ms", 40000)
    sent = retries = received = tail = 0
    while (sent < spec["n"] or tail < spec.get("tail", 0)) and \
            ticks_diff(deadline, ticks_ms()) > 0:
        try:
            await c.publish(spec["topic"], b"m%d" % sent, 1)
            sent += 1
            tail += 1 if received else 0
            say(event="published", n=sent)
        except mqtt.conn.NetError:
            retries += 1
            await asyncio.sleep_ms(100)
        await asyncio.sleep_ms(spec.get("interval_ms", 50))
        while inbox:
            received += 1
            say(event="message", payload=inbox.pop(0).payload.decode())
    while not (inbox or received) and ticks_diff(deadline, ticks_ms()) > 0 and \
            spec.get("await_message"):
        await asyncio.sleep_ms(20)
    while inbox:
        say(event="message", payload=inbox.pop(0).payload.decode())
    say(event="done", sent=sent, retries=retries, connects=c.connects)
    await c.stop()
    await runner


with open(sys.argv[1]) as f:
    spec = json.load(f)
asyncio.run(stream(spec) if spec.get("mode") == "stream" else actions(spec))
