"""Host stand-in for MicroPython's `ds18x20`: tests put sensors on a pin's bus.

`buses[pin id][rom bytes]` is the 9-byte scratchpad that sensor returns (build it with
`scratchpad(celsius)`), or an exception instance to raise. CRC check and conversion mirror
the port's driver (DS18B20: signed 16-bit in 1/16 degC).
"""
import onewire

buses = {}


def scratchpad(celsius, corrupt=False):
    raw = int(round(celsius * 16)) & 0xFFFF
    body = bytes((raw & 0xFF, raw >> 8, 0x4B, 0x46, 0x7F, 0xFF, 0x0C, 0x10))
    crc = onewire.crc8(body)
    return body + bytes(((crc ^ 1) if corrupt else crc,))


class DS18X20:
    def __init__(self, ow):
        self.ow = ow
        self.conversions = 0

    def _bus(self):
        return buses.get(self.ow.pin.id, {})

    def scan(self):
        return [bytearray(rom) for rom in self._bus()]

    def convert_temp(self):
        self.conversions += 1

    def read_scratch(self, rom):
        pad = self._bus().get(bytes(rom))
        if pad is None:
            raise onewire.OneWireError()
        if isinstance(pad, Exception):
            raise pad
        if self.ow.crc8(pad):
            raise Exception("CRC error")
        return bytearray(pad)

    def read_temp(self, rom):
        buf = self.read_scratch(rom)
        t = buf[1] << 8 | buf[0]
        if t & 0x8000:
            t -= 0x10000
        return t / 16
