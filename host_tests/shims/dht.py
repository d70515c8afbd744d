"""Host stand-in for MicroPython's `dht`: tests script the 5 bytes each sensor sends.

`frames[pin id]` is a list consumed one per measure(): a 5-byte frame (humidity hi/lo,
temperature hi/lo, checksum) or an exception instance to raise. An empty list is a sensor
that does not answer (OSError ETIMEDOUT, as the port raises). The decoding mirrors the port's.
"""

frames = {}


class DHTBase:
    def __init__(self, pin):
        self.pin = pin
        self.buf = bytearray(5)
        self.measures = 0

    def measure(self):
        self.measures += 1
        queue = frames.get(self.pin.id)
        if not queue:
            raise OSError(110)  # ETIMEDOUT
        frame = queue.pop(0)
        if isinstance(frame, Exception):
            raise frame
        self.buf[:] = frame
        if (self.buf[0] + self.buf[1] + self.buf[2] + self.buf[3]) & 0xFF != self.buf[4]:
            raise Exception("checksum error")


class DHT11(DHTBase):
    def humidity(self):
        return self.buf[0]

    def temperature(self):
        t = self.buf[2] + (self.buf[3] & 0x7F) / 10
        return -t if self.buf[3] & 0x80 else t


class DHT22(DHTBase):
    def humidity(self):
        return (self.buf[0] << 8 | self.buf[1]) * 0.1

    def temperature(self):
        t = ((self.buf[2] & 0x7F) << 8 | self.buf[3]) * 0.1
        return -t if self.buf[2] & 0x80 else t


def frame(b0, b1, b2, b3):
    """Test side: a frame with its checksum."""
    return bytes((b0, b1, b2, b3, (b0 + b1 + b2 + b3) & 0xFF))
