"""Host stand-in for MicroPython's `machine`: enough behaviour for drivers and tests.

Tests drive inputs through the objects (Pin.set_input, ADC.set_raw, I2C devices dict) and read
what the firmware did (Pin.value(), PWM.duty_u16(), WDT.feeds, deepsleep_calls).
"""

_reset_requests = []
deepsleep_calls = []
DEEPSLEEP_RESET = 4
PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
SOFT_RESET = 5
_reset_cause = [PWRON_RESET]


class ResetRequested(Exception):
    """Raised by reset()/deepsleep() so a host test sees the board restart instead of exiting."""


def reset():
    _reset_requests.append("reset")
    raise ResetRequested("reset")


def soft_reset():
    _reset_requests.append("soft_reset")
    raise ResetRequested("soft_reset")


def deepsleep(ms=0):
    deepsleep_calls.append(ms)
    raise ResetRequested("deepsleep")


def lightsleep(ms=0):
    pass


def reset_cause():
    return _reset_cause[0]


def unique_id():
    return b"\x24\x0a\xc4\x00\x11\x22"


def freq(hz=None):
    return 240000000


def idle():
    pass


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_RISING = 1
    IRQ_FALLING = 2

    levels = {}  # test side: pin id -> level an external circuit holds it at (a button)

    def __init__(self, id, mode=-1, pull=-1, value=None):
        self.id = id
        self.mode = mode
        self.pull = pull
        self._value = Pin.levels.get(id, 1 if pull == Pin.PULL_UP else 0)
        self._irq = None
        self._trigger = 0
        if value is not None:
            self._value = 1 if value else 0

    def init(self, mode=-1, pull=-1, value=None):
        self.mode = mode
        self.pull = pull
        if value is not None:
            self._value = 1 if value else 0

    def value(self, v=None):
        if v is None:
            return self._value
        self._value = 1 if v else 0

    def on(self):
        self._value = 1

    def off(self):
        self._value = 0

    def __call__(self, v=None):
        return self.value(v)

    def irq(self, handler=None, trigger=3):
        self._irq = handler
        self._trigger = trigger

    # test side: an external signal on an input pin, firing the IRQ like hardware would
    def set_input(self, v):
        old, self._value = self._value, 1 if v else 0
        if self._irq and old != self._value:
            edge = Pin.IRQ_RISING if self._value else Pin.IRQ_FALLING
            if self._trigger & edge:
                self._irq(self)


class Signal:
    def __init__(self, pin, invert=False):
        self.pin = pin
        self.invert = invert

    def value(self, v=None):
        if v is None:
            return self.pin.value() ^ self.invert
        self.pin.value((1 if v else 0) ^ self.invert)


class ADC:
    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3
    WIDTH_12BIT = 3

    def __init__(self, pin, atten=None):
        self.pin = pin
        self.atten_value = atten
        self._raw = 0

    def atten(self, a):
        self.atten_value = a

    def width(self, w):
        pass

    def read(self):
        return self._raw >> 4

    def read_u16(self):
        return self._raw

    def read_uv(self):
        return self._raw * 3300000 // 65535

    def set_raw(self, u16):
        self._raw = u16


class PWM:
    def __init__(self, pin, freq=1000, duty_u16=0):
        self.pin = pin
        self._freq = freq
        self._duty = duty_u16

    def freq(self, f=None):
        if f is None:
            return self._freq
        self._freq = f

    def duty_u16(self, d=None):
        if d is None:
            return self._duty
        self._duty = d

    def deinit(self):
        self._duty = 0


class I2C:
    """Bus with pluggable fake devices: devices[addr] = object with read(reg, n)/write(reg, buf)."""

    devices = {}

    def __init__(self, id=0, scl=None, sda=None, freq=400000):
        self.id = id

    def scan(self):
        return sorted(self.devices)

    def _dev(self, addr):
        if addr not in self.devices:
            raise OSError(19)  # ENODEV, like a missing chip on a real bus
        return self.devices[addr]

    def readfrom_mem(self, addr, reg, n):
        return bytes(self._dev(addr).read(reg, n))

    def readfrom_mem_into(self, addr, reg, buf):
        buf[:] = self._dev(addr).read(reg, len(buf))

    def writeto_mem(self, addr, reg, buf):
        self._dev(addr).write(reg, bytes(buf))


SoftI2C = I2C


class WDT:
    instances = []

    def __init__(self, id=0, timeout=5000):
        self.timeout = timeout
        self.feeds = 0
        WDT.instances.append(self)

    def feed(self):
        self.feeds += 1


class RTC:
    _memory = [b""]

    def __init__(self, id=0):
        pass

    def datetime(self, dt=None):
        if dt is None:
            import time

            t = time.gmtime()
            return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0)

    def memory(self, data=None):
        if data is None:
            return RTC._memory[0]
        if len(data) > 2048:
            raise ValueError("RTC memory is 2 KB")
        RTC._memory[0] = bytes(data)
