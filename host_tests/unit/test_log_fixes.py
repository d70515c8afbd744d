"""firmware/log.py's user-facing helpers: errors that name the fix, durations people read,
a repeating failure logged once then counted, the status line's online/offline, and the
wall-clock time on every line once the clock is set."""
import re

from firmware import log


class Capture:
    def __init__(self):
        self.lines = []
        log.set_sink(self.lines.append)

    def close(self):
        log.set_sink(None)


def test_durations_read_as_people_write_them():
    assert log.duration(850) == "850 ms"
    assert log.duration(12000) == "12 s"
    assert log.duration(300000) == "5 min"
    assert log.duration(330000) == "5 min 30 s"
    assert log.duration(7500000) == "2 h 5 min"


def test_errors_users_can_fix_name_the_key_or_action():
    log.set_cloud("realer")
    try:
        assert "check cloud.client_id and cloud.client_secret in secrets.json" in \
            log.hint("auth: RealerError(token request refused: 401 unauthorized)")
        assert "check cloud.api_url and the network's DNS" in \
            log.hint("ConnectError(connect no.such.host:443: [addrinfo error -2])")
        assert "check cloud.device_id" in \
            log.hint("cloud refuses the device (404 resource_not_found); holding data")
        assert "cloud.ca_file" in log.hint("TLSError(certificate verify failed)")
        assert "clock is not set" in log.hint(
            "ClockUnset(wall clock needs the clock, which is not set (NTP has not run yet))")
        assert "host and port" in log.hint("OSError([Errno 111] ECONNREFUSED)")
        assert "no answer" in log.hint("OSError(ETIMEDOUT)")
        assert log.hint("uplink: fine; 404 pending") is None  # only the cause counts
        assert log.hint("sensor 7: recovered") is None
        log.set_cloud("devicehive")
        assert "cloud.access_token and cloud.refresh_token" in log.hint("401 Unauthorized")
    finally:
        log.set_cloud(None)


def test_warnings_carry_the_fix_info_lines_do_not():
    cap = Capture()
    try:
        log.set_cloud("xyte")
        log.warn("xyte", "register: 401 unauthorized")
        log.info("xyte", "401 is an info here")
    finally:
        cap.close()
        log.set_cloud(None)
    assert cap.lines[0].endswith("W xyte: register: 401 unauthorized; fix: the cloud refused "
                                 "the device's credentials: check cloud.hardware_key in "
                                 "secrets.json"), cap.lines[0]
    assert "fix:" not in cap.lines[1]


def test_a_repeating_failure_is_logged_once_then_counted_and_recovery_said_once():
    cap = Capture()
    try:
        log._failing.clear()  # failures an earlier test in this process left counting
        assert log.link() in ("link=connecting", "link=online")
        cause = "ConnectError(connect h:1: [addrinfo error -2])"
        assert log.failing("t-cloud", "app", "auth", cause)
        assert not log.failing("t-cloud", "app", "catalog poll", cause)
        assert not log.failing("t-cloud", "app", "uplink", cause, "; 3 pending")
        assert re.match(r"^link=offline\(\d+ms\) error=ConnectError\(connect_h:1:_"
                        r"\[addrinfo_error_-2\]\)$", log.link()), log.link()
        other = "OSError(ETIMEDOUT)"
        assert log.failing("t-cloud", "app", "uplink", other, "; 4 pending")  # a new cause
        log.recovered("t-cloud", "app", "cloud reachable again")
        log.recovered("t-cloud", "app", "cloud reachable again")  # nothing failing: silent
        assert log.link() == "link=online"
    finally:
        cap.close()
    assert len(cap.lines) == 3, cap.lines
    assert " W app: auth: %s; fix: the host name does not resolve" % cause in cap.lines[0]
    assert " W app: uplink: OSError(ETIMEDOUT); 4 pending; fix: no answer" in cap.lines[1]
    assert re.search(r" I app: cloud reachable again after 1 failure over \d+ ms "
                     r"\(OSError\(ETIMEDOUT\)\)$", cap.lines[2]), cap.lines[2]


def test_lines_carry_wall_clock_time_once_the_clock_is_set():
    cap = Capture()
    try:
        log.info("t", "hello")
    finally:
        cap.close()
    # the host's clock is set (test_clock_log: is_set on host)
    assert re.match(r"^\d\d\d\d-\d\d-\d\dT\d\d:\d\d:\d\dZ I t: hello$", cap.lines[0]), cap.lines


def test_an_unset_clock_is_named_once_with_the_fix():
    import support
    from firmware import clock, sensing

    state = {"set": False, "sleeps": 0}

    def is_set():
        return state["set"]

    async def sleep_ms(ms):
        state["sleeps"] += 1
        if state["sleeps"] >= 15:  # NTP answers after 15 s
            state["set"] = True

    real = clock.is_set, sensing.asyncio.sleep_ms
    clock.is_set, sensing.asyncio.sleep_ms = is_set, sleep_ms
    cap = Capture()
    try:
        support.run(sensing.clock_ready())  # the sampler waiting
        support.run(sensing.clock_ready())  # the uplink, once the clock is set
    finally:
        cap.close()
        clock.is_set, sensing.asyncio.sleep_ms = real
    assert len(cap.lines) == 2, cap.lines
    assert " W app: clock: not set after 10 s; nothing is sampled or sent until it is; fix: " \
        "it comes from NTP once Wi-Fi is up: check wifi.ssid, wifi.password" in cap.lines[0]
    assert " I app: clock: set after 1 failure" in cap.lines[1], cap.lines


def test_a_fix_table_that_fails_never_fails_the_line_or_its_caller():
    # the table loads at the first warning (no room, a bundle without it): the warning and an
    # OTA progress line still go out, and the caller (an HTTP request, the updater) goes on
    from firmware import logfix

    def broken(*args):
        raise MemoryError("no room for the table")

    saved = (logfix.hint, logfix.progress)
    logfix.hint = logfix.progress = broken
    cap = Capture()
    try:
        log.warn("realer", "token: 401 unauthorized")
        log.progress("ota", "download", "1024 B")
    finally:
        cap.close()
        logfix.hint, logfix.progress = saved
    assert len(cap.lines) == 1 and cap.lines[0].endswith("W realer: token: 401 unauthorized")
