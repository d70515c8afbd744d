"""firmware/improv.py: the Improv Wi-Fi serial packets byte for byte as the public spec gives
them, the parser amid log noise and split reads, and the service: state, device info, scan,
Wi-Fi settings that connect (saved in the secrets file, never logged) or do not (nothing
saved, error 0x03), damaged and unknown packets, Ctrl-C outside a packet."""
import json

import network

import support
from firmware import config, improv, log


def _rpc(command, items=()):
    return improv.packet(improv.TYPE_RPC, improv.rpc(command, improv.strings(items)))


def test_packet_layout_and_checksum_follow_the_spec():
    # the spec's example: SSID MyWirelessAP, password mysecurepassword
    data = improv.rpc(improv.CMD_WIFI, improv.strings(["MyWirelessAP", "mysecurepassword"]))
    assert data == b"\x01\x1e\x0cMyWirelessAP\x10mysecurepassword"
    p = improv.packet(improv.TYPE_RPC, data)
    assert p[:6] == b"IMPROV" and p[6] == 1 and p[7] == 3 and p[8] == len(data)
    assert p[9:-1] == data and p[-1] == sum(p[:-1]) & 0xFF
    assert improv.packet(improv.TYPE_STATE, b"\x02") == \
        b"IMPROV\x01\x01\x01\x02" + bytes((sum(b"IMPROV\x01\x01\x01\x02") & 0xFF,))
    assert improv.parse_strings(b"\x02ab\x00") == [b"ab", b""]
    assert improv.parse_strings(b"\x05ab") is None


def test_parser_finds_packets_among_log_lines_and_split_reads():
    p = improv.Parser()
    a = _rpc(improv.CMD_STATE)
    b = _rpc(improv.CMD_INFO)
    stream = b"12.3 I app: hello IMP\r\n" + a + b"noise" + b
    got = []
    for i in range(0, len(stream), 5):
        got += p.feed(stream[i:i + 5])
    assert got == [(3, b"\x02\x00"), (3, b"\x03\x00")]
    assert not p.interrupted
    bad = bytearray(a)
    bad[-1] ^= 0xFF
    assert p.feed(bytes(bad)) == [(None, b"")]
    assert p.feed(b"\r\x03") == [] and p.interrupted  # Ctrl-C outside a packet
    p2 = improv.Parser()
    assert p2.feed(_rpc(improv.CMD_WIFI, ["net", "\x03\x03"])) != [] and not p2.interrupted


class Rig:
    def __init__(self, cfg=None):
        self.root = support.tmpdir("improv")
        support.write(self.root + "/ca.pem", "-----BEGIN CERTIFICATE-----\n")
        if cfg is not None:
            support.write(self.root + "/config.json", json.dumps(cfg))
        self.out = []
        self.lines = []
        log.set_sink(self.lines.append)
        network.WLAN.script = []
        network.WLAN.next_status = [network.STAT_GOT_IP]
        self.service = improv.Service(self.root, self.out.append, wlan=network.WLAN(),
                                      connect_ms=200)

    def send(self, raw):
        self.out.clear()
        for ptype, body in improv.Parser().feed(raw):
            support.run(self.service.handle(ptype, body))
        replies = []
        for o in self.out:
            replies += improv.Parser().feed(o)
        return replies

    def read(self, name):
        with open(self.root + "/" + name) as f:
            return json.load(f)

    def close(self):
        log.set_sink(None)
        support.rmtree(self.root)


def _sim_config():
    return {"cloud": {"platform": "realer", "api_url": "https://127.0.0.1:1", "device_id": 5,
                      "client_id": "cdv_x1", "client_secret": "improv-cloud-secret",
                      "ca_file": "ca.pem"}, "board": "sim"}


def test_state_info_scan_and_unknown_commands():
    r = Rig(_sim_config())
    try:
        assert r.send(_rpc(improv.CMD_STATE)) == [(2, b"\x00"), (1, b"\x02")]
        replies = r.send(_rpc(improv.CMD_INFO))
        assert replies[0] == (2, b"\x00") and replies[1][0] == 4
        body = replies[1][1]
        assert body[0] == 3 and body[1] == len(body) - 2
        info = improv.parse_strings(body[2:])
        assert info[0] == b"esp32-iot-firmware" and info[3] == b"5" and len(info) == 4
        # the shim radio cannot scan: the final, empty result only
        assert r.send(_rpc(improv.CMD_SCAN)) == [(2, b"\x00"), (4, b"\x04\x00")]
        assert r.send(_rpc(0x42)) == [(2, b"\x00"), (2, b"\x02")]
        damaged = bytearray(_rpc(improv.CMD_STATE))
        damaged[-1] ^= 1
        assert r.send(bytes(damaged)) == [(2, b"\x01")]
        # a length byte that disagrees with the data
        assert r.send(improv.packet(3, b"\x02\x05")) == [(2, b"\x01")]
    finally:
        r.close()


def test_wifi_that_connects_is_saved_in_the_secrets_file_and_never_logged():
    r = Rig(_sim_config())
    try:
        pw = "improv-pass-7731"
        replies = r.send(_rpc(improv.CMD_WIFI, ["HomeNet", pw]))
        assert replies == [(2, b"\x00"), (1, b"\x03"), (1, b"\x04"), (4, b"\x01\x00")]
        assert r.read("secrets.json") == {"wifi": {"ssid": "HomeNet", "password": pw}}
        assert r.read("config.json")["secrets_file"] == "secrets.json"
        assert network.WLAN.connect_calls[-1] == "HomeNet"
        assert r.service.ready  # the config now loads: the app can start
        cfg = config.load(r.root)
        assert cfg.get("wifi.ssid") == "HomeNet"
        text = "\n".join(r.lines)
        assert "connected to HomeNet; Wi-Fi saved in secrets.json" in text
        assert pw not in text
        # asked again, it says provisioned and repeats the result
        assert r.send(_rpc(improv.CMD_STATE)) == [(2, b"\x00"), (1, b"\x04"), (4, b"\x01\x00")]
    finally:
        r.close()
        log.forget("improv-pass-7731")
        log.forget("improv-cloud-secret")


def test_wifi_that_fails_saves_nothing_and_reports_unable_to_connect():
    r = Rig(_sim_config())
    try:
        network.WLAN.script = [network.STAT_WRONG_PASSWORD]
        replies = r.send(_rpc(improv.CMD_WIFI, ["HomeNet", "wrong-pass-1"]))
        assert replies == [(2, b"\x00"), (1, b"\x03"), (2, b"\x03"), (1, b"\x02")]
        assert support.raises(OSError, r.read, "secrets.json")
        assert "wrong password" in "\n".join(r.lines)
        assert not r.service.ready
        assert r.send(_rpc(improv.CMD_WIFI, ["", "x"])) == [(2, b"\x00"), (2, b"\x01")]
    finally:
        r.close()
        log.forget("wrong-pass-1")


def test_wifi_without_any_config_is_saved_and_the_service_keeps_waiting():
    r = Rig(None)
    try:
        replies = r.send(_rpc(improv.CMD_WIFI, ["Net2", "pw-no-config-1"]))
        assert replies[-2:] == [(1, b"\x04"), (4, b"\x01\x00")]
        assert r.read("secrets.json")["wifi"]["ssid"] == "Net2"
        assert not r.service.ready  # no config.json yet: the app still cannot start
        assert "config.json: not found" in "\n".join(r.lines)
    finally:
        r.close()
        log.forget("pw-no-config-1")


def test_run_serves_until_ready_or_interrupted():
    r = Rig(_sim_config())
    try:
        feed = [_rpc(improv.CMD_WIFI, ["Net3", "run-pass-1"])]

        def read():
            return feed.pop(0) if feed else b""

        assert support.run(r.service.run(read, lambda: True)) is True
        feed[:] = [b"\x03"]
        support.raises(KeyboardInterrupt, support.run,
                       improv.Service(r.root, r.out.append).run(read, lambda: True))
        feed[:] = []
        assert support.run(improv.Service(r.root, r.out.append).run(read, lambda: True)) \
            is False  # the input ended
    finally:
        r.close()
        log.forget("run-pass-1")
