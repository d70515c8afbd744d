"""Host stand-in for `ntptime`: the host clock is already right, so settime only counts calls."""

host = "pool.ntp.org"
calls = []
fail = [False]


def settime():
    calls.append(host)
    if fail[0]:
        raise OSError(110)  # ETIMEDOUT, as a blocked NTP query gives on the board


def time():
    import time as _t

    return int(_t.time())
