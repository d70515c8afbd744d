"""The MQTT client's session logic against a scripted broker on a loopback socket (both
runtimes): in-flight window, DUP resend, keepalive, refusals, malformed input. Interop with a
real broker is proven in host_tests/system/test_mqtt_client.py against mosquitto."""
import asyncio
import os
import struct

import support
from firmware.net import mqtt


class ScriptedBroker:
    """Accepts connections and answers each packet through `self.on_packet(first, body, w)`;
    records (type, flags, body) of every packet it received."""

    def __init__(self, connack=b"\x20\x03\x00\x00\x00"):
        self.connack = connack
        self.received: list = []
        self.connections = 0
        self.writers: list = []
        self.on_packet = self.default

    async def start(self):
        # MicroPython's Server does not expose its socket, so pick a port and retry if taken
        for _ in range(50):
            self.port = 20000 + int.from_bytes(os.urandom(2), "little") % 40000
            try:
                self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
                return self
            except OSError:
                continue
        raise AssertionError("no free loopback port for the scripted broker")

    def url(self):
        return "mqtt://127.0.0.1:%d" % self.port

    async def _serve(self, reader, writer):
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                first = (await reader.readexactly(1))[0]
                length, shift = 0, 0
                while True:
                    b = (await reader.readexactly(1))[0]
                    length |= (b & 0x7F) << shift
                    shift += 7
                    if not b & 0x80:
                        break
                body = await reader.readexactly(length) if length else b""
                self.received.append((first >> 4, first & 15, body))
                if first >> 4 == mqtt.CONNECT:
                    writer.write(self.connack)
                else:
                    await self.on_packet(first, body, writer)
                await writer.drain()
        except Exception:  # client went away
            pass
        writer.close()
        try:
            await writer.wait_closed()
        except Exception:  # already closed by drop_clients
            pass

    async def default(self, first, body, w):
        ptype = first >> 4
        if ptype == mqtt.PUBLISH and first & 6:
            pid = struct.unpack("!H", body[2 + body[1]:4 + body[1]])[0]
            w.write(b"\x40\x02" + struct.pack("!H", pid))
        elif ptype == mqtt.SUBSCRIBE:
            w.write(b"\x90\x04" + body[:2] + b"\x00\x01")
        elif ptype == mqtt.PINGREQ:
            w.write(b"\xd0\x00")

    def of_type(self, ptype):
        return [r for r in self.received if r[0] == ptype]

    async def drop_clients(self):
        for w in self.writers:
            w.close()
            await w.wait_closed()  # on MicroPython this is what closes the socket
        self.writers = []
        await asyncio.sleep_ms(50)

    async def stop(self):
        self.server.close()
        await self.server.wait_closed()


def _pid(body):
    return struct.unpack("!H", body[2 + body[1]:4 + body[1]])[0]


async def _broker(**kw):
    return await ScriptedBroker(**kw).start()


def test_window_keeps_exactly_that_many_publishes_in_flight():
    async def main():
        b = await _broker()
        outstanding: list = []
        peak = [0]

        async def hold_until_three(first, body, w):
            if first >> 4 != mqtt.PUBLISH:
                return
            outstanding.append(_pid(body))
            peak[0] = max(peak[0], len(outstanding))
            if len(outstanding) == 3:  # ack only a full window: proves it was kept full
                for pid in outstanding:
                    w.write(b"\x40\x02" + struct.pack("!H", pid))
                outstanding.clear()

        b.on_packet = hold_until_three
        c = mqtt.Client(b.url(), "dev", window=3)
        await c.connect()
        for i in range(21):
            await c.publish("t", b"%d" % i, qos=1, wait=False)
        await c.flush()
        await c.disconnect()
        await b.stop()
        pubs = b.of_type(mqtt.PUBLISH)
        assert len(pubs) == 21 and peak[0] == 3
        assert [p[2][-2:].strip(b"\x00") for p in pubs][-1] == b"20"
        assert all(p[1] & 8 == 0 for p in pubs)  # none was a resend

    support.run(main())


def test_broker_receive_maximum_shrinks_the_window():
    async def main():
        # CONNACK with Receive Maximum 2
        b = await _broker(connack=b"\x20\x06\x00\x00\x03\x21\x00\x02")
        unacked: list = []
        peak = [0]

        async def slow_acks(first, body, w):
            if first >> 4 == mqtt.PUBLISH:
                unacked.append(_pid(body))
                peak[0] = max(peak[0], len(unacked))
                if len(unacked) == 2:
                    for pid in unacked:
                        w.write(b"\x40\x02" + struct.pack("!H", pid))
                    unacked.clear()

        b.on_packet = slow_acks
        c = mqtt.Client(b.url(), "dev", window=8)
        await c.connect()
        for _ in range(6):
            await c.publish("t", b"x", qos=1, wait=False)
        await c.flush()
        await c.disconnect()
        await b.stop()
        assert peak[0] == 2

    support.run(main())


def test_unacked_publishes_are_resent_with_dup_after_reconnect():
    async def main():
        b = await _broker()
        acking = [False]

        async def maybe_ack(first, body, w):
            if first >> 4 == mqtt.PUBLISH and acking[0]:
                w.write(b"\x40\x02" + struct.pack("!H", _pid(body)))

        b.on_packet = maybe_ack
        c = mqtt.Client(b.url(), "dev", window=4)
        await c.connect()
        for i in range(3):
            await c.publish("t", b"m%d" % i, qos=1, wait=False)
        while len(b.of_type(mqtt.PUBLISH)) < 3:
            await asyncio.sleep_ms(10)
        await b.drop_clients()
        err = await c.wait_closed()
        assert isinstance(err, mqtt.conn.NetError)
        assert c.inflight == 3
        acking[0] = True
        await c.connect()
        await c.flush()
        await c.disconnect()
        await b.stop()
        first_round, resent = b.of_type(mqtt.PUBLISH)[:3], b.of_type(mqtt.PUBLISH)[3:]
        assert [_pid(p[2]) for p in resent] == [_pid(p[2]) for p in first_round]
        assert all(p[1] & 8 for p in resent) and all(p[2].endswith(b"m%d" % i)
                                                     for i, p in enumerate(resent))

    support.run(main())


def test_waiting_publisher_gets_puback_reason_code():
    async def main():
        b = await _broker()

        async def refuse(first, body, w):
            if first >> 4 == mqtt.PUBLISH:
                w.write(b"\x40\x03" + struct.pack("!H", _pid(body)) + b"\x87")

        b.on_packet = refuse
        c = mqtt.Client(b.url(), "dev")
        await c.connect()
        e = await support.araises(mqtt.PublishRejected, c.publish("t", b"x", qos=1))
        assert e.code == 0x87 and c.inflight == 0
        await c.disconnect()
        await b.stop()

    support.run(main())


def test_incoming_qos1_is_handled_then_acknowledged():
    async def main():
        b = await _broker()
        got: list = []

        async def push_on_subscribe(first, body, w):
            if first >> 4 == mqtt.SUBSCRIBE:
                w.write(b"\x90\x04" + body[:2] + b"\x00\x01")
                props = mqtt.encode_props({mqtt.USER_PROPERTY: [("k", "v")]})
                w.write(mqtt.packet(mqtt.PUBLISH, 2, b"\x00\x03d/1\x00\x2a" + props + b"on"))

        async def handler(msg):
            await asyncio.sleep_ms(1)
            got.append((msg.topic, msg.payload, msg.pid, msg.props))
            raise ValueError("handler bug")  # must not end the session

        b.on_packet = push_on_subscribe
        c = mqtt.Client(b.url(), "dev", on_message=handler)
        await c.connect()
        assert await c.subscribe("d/#") == [1]
        while not b.of_type(mqtt.PUBACK):
            await asyncio.sleep_ms(10)
        assert c.connected
        await c.disconnect()
        await b.stop()
        assert got == [("d/1", b"on", 42, {mqtt.USER_PROPERTY: [("k", "v")]})]
        assert b.of_type(mqtt.PUBACK)[0][2] == b"\x00\x2a"

    support.run(main())


def test_connack_refusals_are_named():
    async def main():
        for connack, version, cls in ((b"\x20\x03\x00\x86\x00", 5, mqtt.BadCredentials),
                                      (b"\x20\x03\x00\x87\x00", 5, mqtt.NotAuthorized),
                                      (b"\x20\x03\x00\x89\x00", 5, mqtt.ServerUnavailable),
                                      (b"\x20\x02\x00\x04", 4, mqtt.BadCredentials),
                                      (b"\x20\x02\x00\x03", 4, mqtt.ServerUnavailable)):
            b = await _broker(connack=connack)
            c = mqtt.Client(b.url(), "dev", "user", "pass-word", version=version)
            e = await support.araises(mqtt.ConnectRefused, c.connect())
            assert type(e) is cls
            assert not c.connected
            await b.stop()

    support.run(main())


def test_malformed_input_ends_the_session_with_disconnect_0x81():
    async def main():
        for evil in (b"\x30\xff\xff\xff\xff\x01",                # remaining length > 4 bytes
                     b"\x30\x06\x00\x01t\x02\x7f\x00",           # unknown property
                     b"\x30\xff\xff\x03" + b"x" * 10,            # over max_packet
                     b"\x70\x02\x00\x01"):                       # PUBCOMP: never expected
            b = await _broker()

            async def send_evil(first, body, w, evil=evil):
                if first >> 4 == mqtt.PINGREQ:
                    w.write(evil)

            b.on_packet = send_evil
            c = mqtt.Client(b.url(), "dev", keepalive_s=1, max_packet=4096)
            await c.connect()
            err = await c.wait_closed()
            assert isinstance(err, mqtt.MqttProtocolError), (evil, err)
            while not b.of_type(mqtt.DISCONNECT):
                await asyncio.sleep_ms(10)
            assert b.of_type(mqtt.DISCONNECT)[0][2][:1] == b"\x81"
            await b.stop()

    support.run(main())


def test_silent_broker_is_a_dead_peer():
    async def main():
        b = await _broker()

        async def ignore(first, body, w):
            pass

        b.on_packet = ignore
        c = mqtt.Client(b.url(), "dev", keepalive_s=1)
        await c.connect()
        err = await c.wait_closed()
        await b.stop()
        assert isinstance(err, mqtt.conn.NetTimeout)
        assert b.of_type(mqtt.PINGREQ)  # it asked before giving up

    support.run(main())


def test_server_disconnect_reason_is_reported():
    async def main():
        b = await _broker()

        async def kick(first, body, w):
            if first >> 4 == mqtt.SUBSCRIBE:
                w.write(b"\xe0\x02\x8e\x00")

        b.on_packet = kick
        c = mqtt.Client(b.url(), "dev")
        await c.connect()
        await support.araises(mqtt.MqttError, c.subscribe("x"))
        err = await c.wait_closed()
        await b.stop()
        assert isinstance(err, mqtt.ServerDisconnect) and err.code == 0x8E

    support.run(main())


def test_partly_denied_subscribe():
    async def main():
        b = await _broker()

        async def deny_second(first, body, w):
            if first >> 4 == mqtt.SUBSCRIBE:
                w.write(b"\x90\x05" + body[:2] + b"\x00\x01\x87")

        b.on_packet = deny_second
        c = mqtt.Client(b.url(), "dev")
        await c.connect()
        e = await support.araises(mqtt.SubscribeDenied, c.subscribe(["mine/#", "theirs/#"]))
        assert e.denied == [("theirs/#", 0x87)]
        assert c.subscriptions == {"mine/#": 1}
        await c.disconnect()
        await b.stop()

    support.run(main())


def test_run_reconnects_and_resubscribes():
    async def main():
        b = await _broker()
        connected: list = []

        async def on_connect(client):
            connected.append(client.connects)

        c = mqtt.Client(b.url(), "dev")
        c.subscriptions["d/#"] = 1  # as if subscribed in an earlier session
        runner = asyncio.create_task(c.run(on_connect=on_connect, base_ms=20, cap_ms=50))
        while len(b.of_type(mqtt.SUBSCRIBE)) < 1:
            await asyncio.sleep_ms(10)
        await b.drop_clients()
        while len(b.of_type(mqtt.SUBSCRIBE)) < 2:
            await asyncio.sleep_ms(10)
        await c.stop()
        await runner
        await b.stop()
        assert b.connections == 2 and connected == [1, 2]
        assert b.of_type(mqtt.DISCONNECT)  # stop() said goodbye

    support.run(main())


def test_publish_bigger_than_the_send_buffer_goes_whole_and_pubacks_match():
    # header from the preallocated buffer, payload from the caller's: the broker sees one
    # PUBLISH each, in order; PUBACKs (handled in place) free the window
    async def main():
        b = await _broker()
        c = mqtt.Client(b.url(), "dev", window=4)
        await c.connect()
        big = bytes(range(256)) * 4  # 1024 bytes, over the 512-byte send buffer
        for i in range(6):
            await c.publish("t/%d" % (i % 2), big if i % 2 else b"small%d" % i, 1, wait=False)
        await c.flush()
        got = b.of_type(mqtt.PUBLISH)
        await c.disconnect()
        await b.stop()
        return got

    got = support.run(main())
    assert len(got) == 6
    for i, (_, flags, body) in enumerate(got):
        topic = ("t/%d" % (i % 2)).encode()
        assert body[2:2 + len(topic)] == topic and flags == 2
        payload = body[2 + len(topic) + 2 + 1:]  # topic, packet id, empty properties
        assert payload == (bytes(range(256)) * 4 if i % 2 else b"small%d" % i)
