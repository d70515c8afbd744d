"""DS18B20 1-Wire temperature through MicroPython's built-in `onewire` and `ds18x20`.

The factory passes a `ds18x20.DS18X20` on the entry's pin. Config: `rom` (the sensor's
64-bit ROM code as 16 hex digits, needed when several share the bus; without it the one
sensor found is used), `decimals` (default 2). A conversion takes up to 750 ms at 12 bits;
the driver yields to the loop meanwhile instead of blocking.
"""
import asyncio

from micropython import const

from firmware.board.base import BoardConfigError, Sensor, SensorError

_CONVERT_MS = const(750)
_POWER_ON = 85.0  # the scratchpad's reset value: a conversion that never happened


def parse_rom(text):
    """"28ff641e8c1603c1" -> 8 bytes; a bad code is a config error."""
    try:
        rom = bytes.fromhex(str(text))
    except ValueError:
        rom = b""
    if len(rom) != 8:
        raise BoardConfigError("ds18b20 rom %r: give the 16 hex digits of the ROM code"
                               % (text,))
    return rom


class DS18B20(Sensor):
    def __init__(self, cfg, bus):
        super().__init__(cfg)
        self.bus = bus
        self.rom = parse_rom(cfg["rom"]) if cfg.get("rom") is not None else None
        self.decimals = int(cfg.get("decimals", 2))
        self.convert_ms = _CONVERT_MS

    def _find(self):
        roms = [r for r in self.bus.scan() if r[0] == 0x28]  # family code of the DS18B20
        if len(roms) != 1:
            raise SensorError("ds18b20 sensor %s: %d on the bus; set `rom` to pick one"
                              % (self.id, len(roms)))
        return bytes(roms[0])

    async def read(self):
        try:
            rom = self.rom if self.rom is not None else self._find()
            self.bus.convert_temp()
            await asyncio.sleep_ms(self.convert_ms)
            t = self.bus.read_temp(rom)  # raises on a CRC error (wire noise, unplugged)
        except SensorError:
            raise
        except Exception as e:
            raise SensorError("ds18b20 sensor %s: %s" % (self.id, e))
        if t is None or t == _POWER_ON:
            raise SensorError("ds18b20 sensor %s: no conversion (read %s)" % (self.id, t))
        return round(t, self.decimals)
