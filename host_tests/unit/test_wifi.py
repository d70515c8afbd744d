"""Wi-Fi station management against the network/ntptime shims, on both runtimes.

The station logic runs with platform="esp32" and the shim WLAN, whose `script` decides what
each connect() does; no test waits on a duration, only on the station's own state.
"""
import asyncio

import network
import ntptime

import support
from firmware import config, log
from firmware.wifi import Wifi, WifiError

_PASSWORD = "wlan-pass-7f3k9"


class _Steps:
    """A backoff that records its use and waits 1 ms (the real one is tested elsewhere)."""

    def __init__(self):
        self.calls = 0
        self.resets = 0

    def next_ms(self):
        self.calls += 1
        return 1

    def reset(self):
        self.resets += 1


def _fresh(script=()):
    network.WLAN.script[:] = list(script)
    network.WLAN.connect_calls[:] = []
    network.WLAN.next_status[0] = network.STAT_GOT_IP
    ntptime.calls[:] = []
    ntptime.fail[0] = False
    wlan = network.WLAN(network.STA_IF)
    steps = _Steps()
    w = Wifi({"ssid": "greenhouse", "password": _PASSWORD}, platform="esp32", wlan=wlan,
             ntp=ntptime, backoff=steps, connect_ms=30, check_ms=1)
    return w, wlan, steps


def _logged(fn):
    lines = []
    log.set_sink(lines.append)
    try:
        fn()
    finally:
        log.set_sink(None)
    assert not any(_PASSWORD in line for line in lines), lines
    return lines


async def _until(cond, steps=5000):
    # a hang guard, not a timing check: a station that never gets there fails the test
    while not cond():
        steps -= 1
        if steps < 0:
            raise AssertionError("the station never reached the expected state")
        await asyncio.sleep_ms(1)


async def _up(w):
    await _until(w.up.is_set)


def _drive(w, scenario):
    async def go():
        task = asyncio.create_task(w.run())
        try:
            await scenario()
        finally:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    return _logged(lambda: support.run(go()))


def test_host_has_no_station_and_reports_up():
    w = Wifi(None, platform="linux")
    assert not w.station
    assert w.up.is_set()
    assert w.status() == "host"
    w2 = Wifi({"ssid": "x", "password": _PASSWORD})  # this process is not an esp32 either
    assert not w2.station and w2.up.is_set()


def test_board_without_ssid_is_a_config_error():
    e = support.raises(WifiError, Wifi, None, platform="esp32")
    assert isinstance(e, config.ConfigError)
    assert e.problems and e.problems[0].startswith("wifi.ssid")
    support.raises(WifiError, Wifi, {"ssid": ""}, platform="esp32")
    support.raises(WifiError, Wifi, {"ssid": 5, "password": _PASSWORD}, platform="esp32")


def test_password_is_a_secret():
    Wifi({"ssid": "greenhouse", "password": _PASSWORD}, platform="linux")
    lines = []
    log.set_sink(lines.append)
    try:
        log.info("t", "joining with %s", _PASSWORD)
    finally:
        log.set_sink(None)
    assert lines and _PASSWORD not in lines[0] and "***" in lines[0]


def test_connects_after_failures_with_backoff_then_sets_the_clock():
    w, wlan, steps = _fresh([network.STAT_WRONG_PASSWORD, network.STAT_NO_AP_FOUND,
                             network.STAT_GOT_IP])
    assert not w.up.is_set() and w.status() == "down"

    async def scenario():
        await _up(w)

    lines = _drive(w, scenario)
    assert network.WLAN.connect_calls == ["greenhouse"] * 3
    assert steps.calls == 2 and steps.resets == 1  # backed off twice, reset on success
    assert w.connects == 1 and w.losses == 0
    assert w.status() == "up"
    assert ntptime.calls == [ntptime.host]  # NTP right after connecting
    assert wlan.active()
    assert any("wrong password" in x for x in lines)
    assert any("no AP" in x for x in lines)


def test_an_attempt_that_never_gets_an_ip_times_out():
    w, wlan, steps = _fresh([network.STAT_CONNECTING, network.STAT_GOT_IP])

    async def scenario():
        await _up(w)

    lines = _drive(w, scenario)
    assert len(network.WLAN.connect_calls) == 2
    assert steps.calls == 1
    assert any("no IP within 30 ms" in x for x in lines)


def test_connect_raising_oserror_is_retried():
    w, wlan, steps = _fresh([OSError("Wifi Internal Error"), network.STAT_GOT_IP])

    async def scenario():
        await _up(w)

    lines = _drive(w, scenario)
    assert w.connects == 1 and steps.calls == 1
    assert any("Wifi Internal Error" in x for x in lines)


def test_link_loss_clears_up_and_reconnects():
    w, wlan, steps = _fresh([network.STAT_GOT_IP, network.STAT_NO_AP_FOUND,
                             network.STAT_GOT_IP])
    seen_down = []

    async def scenario():
        await _up(w)
        wlan.set_status(network.STAT_IDLE)  # the AP went away
        await _until(lambda: not w.up.is_set())
        seen_down.append(w.status())
        await _up(w)

    lines = _drive(w, scenario)
    assert seen_down == ["down"]
    assert w.losses == 1 and w.connects == 2
    assert len(network.WLAN.connect_calls) == 3
    assert any("link lost" in x for x in lines)
    assert len(ntptime.calls) == 1  # the clock is not re-queried on every reconnect


def test_ntp_failure_keeps_the_link_up_and_is_logged():
    w, wlan, steps = _fresh([network.STAT_GOT_IP])
    ntptime.fail[0] = True

    async def scenario():
        await _up(w)
        await _until(lambda: ntptime.calls)

    lines = _drive(w, scenario)
    assert w.up.is_set()
    assert any("NTP" in x for x in lines)
    assert not w._ntp_due.expired()  # a retry is scheduled, not a tight loop


def test_progress_ticks_reach_the_watchdog():
    from firmware.watchdog import Watchdog

    w, wlan, steps = _fresh([network.STAT_GOT_IP])
    dog = Watchdog(None)
    dog.expect("wifi", 60000)
    w.alive = dog

    async def scenario():
        await _up(w)
        await _until(lambda: dog._watches["wifi"].ticks >= 3)

    _drive(w, scenario)
    assert dog._watches["wifi"].ticks >= 3
