"""Host stand-in for MicroPython's `onewire`: a bus on a pin, and Dallas CRC-8."""


class OneWireError(Exception):
    pass


def crc8(data):
    """Dallas/Maxim CRC-8 (x^8 + x^5 + x^4 + 1, reflected), as the port's _onewire.crc8."""
    crc = 0
    for b in data:
        for _ in range(8):
            mix = (crc ^ b) & 1
            crc >>= 1
            if mix:
                crc ^= 0x8C
            b >>= 1
    return crc


class OneWire:
    def __init__(self, pin):
        self.pin = pin

    def crc8(self, data):
        return crc8(data)
