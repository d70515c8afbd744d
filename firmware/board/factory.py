"""The board factory and the driver registry: turns the sensors/commands/switches config into
a `Board`.

The registry maps a config `driver` name to an object with `sensor(cfg)`, `actuator(cfg)` and
`switch(cfg, board)`, so the factory never has to know the drivers. An entry may be the driver
object itself or a module name imported on first use (unused drivers cost no RAM); the esp32
module dispatches on the entry's `driver` and imports only the driver modules the config uses.

Start-up only: the app imports it to build the board (register custom drivers before the app
builds). Dropping it from `sys.modules` afterwards freed 128 bytes on the frozen image
(bench/memory.md): not done.
"""
from firmware.board.base import Board, BoardConfigError

_ESP32 = "firmware.board.esp32"
DRIVERS: dict = {"sim": "firmware.board.sim"}
for _name in ("dht22", "dht11", "ds18b20", "adc", "digital", "bme280", "relay", "pwm", "gpio",
              "button"):
    DRIVERS[_name] = _ESP32


def register(name, driver):
    DRIVERS[name] = driver

_SWITCH_DRIVER = "gpio"  # the registry name the esp32 input driver registers under


def _driver(name, entry, drivers):
    d = drivers.get(name)
    if d is None:
        raise BoardConfigError("entry %r names driver %r; known drivers: %s"
                               % (entry, name, ", ".join(sorted(drivers))))
    if isinstance(d, str):
        mod = __import__(d, None, None, ["x"])
        d = getattr(mod, "DRIVER", mod)
        drivers[name] = d
    return d


def make_board(kind, sensors_cfg, commands_cfg, switches_cfg=(), drivers=None):
    """Build the board named by config `board`. With "sim" every entry uses the sim driver
    (the same config runs on the host); otherwise each entry's `driver` picks its driver from
    `drivers` (default: the registry, DRIVERS)."""
    if drivers is None:
        drivers = DRIVERS
    if kind not in ("sim", "esp32") and kind not in drivers:
        raise BoardConfigError("board %r is unknown: use sim or esp32" % (kind,))
    board = Board(kind)

    # config.py's defaults: sensors and commands without `driver` are sim; a switch on a
    # real board is a GPIO input
    def pick(entry, default):
        if not isinstance(entry, dict):
            raise BoardConfigError("entry %r must be an object {...}" % (entry,))
        name = "sim" if kind == "sim" else entry.get("driver", default)
        return _driver(name, entry, drivers)

    for cfg in sensors_cfg or ():
        s = pick(cfg, "sim").sensor(cfg)
        if s.id in board.sensors:
            raise BoardConfigError("sensor id %r appears twice" % (s.id,))
        board.sensors[s.id] = s
    for cfg in commands_cfg or ():
        a = pick(cfg, "sim").actuator(cfg)
        if a.id in board.actuators:
            raise BoardConfigError("command id %r appears twice" % (a.id,))
        board.actuators[a.id] = a
    for cfg in switches_cfg or ():
        board.switches.append(pick(cfg, _SWITCH_DRIVER).switch(cfg, board))
    return board
