"""Digital input read at the sensor's interval (a door contact, a float switch, a PIR).

The factory passes the input `machine.Pin` (config `pull`: up, down or none, default none);
`invert: true` reports 1 when the pin is low (a contact to ground with a pull-up).
"""
from firmware.board.base import Sensor


class DigitalSensor(Sensor):
    def __init__(self, cfg, pin):
        super().__init__(cfg)
        self.pin = pin
        self.invert = 1 if cfg.get("invert") else 0

    async def read(self):
        return self.pin.value() ^ self.invert
