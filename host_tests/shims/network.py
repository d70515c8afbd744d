"""Host stand-in for MicroPython's `network`: a WLAN that tests can make fail or connect."""

STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_WRONG_PASSWORD = 202
STAT_NO_AP_FOUND = 201
STAT_CONNECT_FAIL = 203


class WLAN:
    # test knobs, shared by all instances like the one radio of a board
    next_status = [STAT_GOT_IP]
    connect_calls = []
    # per-connect outcomes, consumed in order before next_status applies: a STAT_* value,
    # or an exception instance that connect() raises (ESP32's "Wifi Internal Error")
    script = []

    def __init__(self, interface=STA_IF):
        self.interface = interface
        self._active = False
        self._status = STAT_IDLE

    def active(self, a=None):
        if a is None:
            return self._active
        self._active = bool(a)

    def connect(self, ssid=None, key=None, **kw):
        WLAN.connect_calls.append(ssid)
        outcome = WLAN.script.pop(0) if WLAN.script else WLAN.next_status[0]
        if isinstance(outcome, Exception):
            raise outcome
        self._status = outcome

    def disconnect(self):
        self._status = STAT_IDLE

    def status(self, param=None):
        if param == "rssi":
            return -60
        return self._status

    # test side: the radio's state changes (the AP vanished, DHCP finished)
    def set_status(self, status):
        self._status = status

    def isconnected(self):
        return self._status == STAT_GOT_IP

    def ifconfig(self, cfg=None):
        return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")

    def config(self, *args, **kw):
        if args == ("mac",):
            return b"\x24\x0a\xc4\x00\x11\x22"
        return None


def hostname(name=None):
    return "esp32-host"
