"""The esp32 board: maps each config entry to `machine` objects and hands them to its driver.

This is the only board module that creates hardware objects, and only when the factory asks
(no pin, bus or ADC exists at import time). factory.DRIVERS names this module for every real
driver; `sensor`/`actuator`/`switch` dispatch on the entry's `driver` and import just that
driver's module. Entries that name the same chip share it: two DHT entries on one pin
(temperature and humidity) use one measurement, and BME280 entries on one bus and address
use one chip; I2C buses are shared by their (id, scl, sda).
"""
from firmware.board.base import BoardConfigError

_dht_chips: dict = {}  # pin -> dhtxx.Chip
_i2c_buses: dict = {}  # (id, scl, sda) -> machine.I2C
_bme_chips: dict = {}  # (bus key, address) -> bme280.BME280


def _pin_no(cfg, key="pin"):
    pin = cfg.get(key)
    if isinstance(pin, bool) or not isinstance(pin, int):
        raise BoardConfigError("entry %s: %s must be a GPIO number, got %r"
                               % (cfg.get("id", cfg.get("command")), key, pin))
    return pin


def _pull(cfg, default):
    import machine

    name = cfg.get("pull", default)
    if name in (None, "none"):
        return None
    if name == "up":
        return machine.Pin.PULL_UP
    if name == "down":
        return machine.Pin.PULL_DOWN
    raise BoardConfigError("entry %s: pull must be up, down or none, got %r"
                           % (cfg.get("id", cfg.get("command")), name))


def _input_pin(cfg, default_pull):
    import machine

    pull = _pull(cfg, default_pull)
    if pull is None:
        return machine.Pin(_pin_no(cfg), machine.Pin.IN)
    return machine.Pin(_pin_no(cfg), machine.Pin.IN, pull)


def _i2c(cfg):
    import machine

    bus = cfg.get("i2c")
    if not isinstance(bus, dict):
        raise BoardConfigError("sensor %s: i2c must be {\"scl\": GPIO, \"sda\": GPIO}"
                               % (cfg.get("id"),))
    key = (bus.get("id", 0), _pin_no(bus, "scl"), _pin_no(bus, "sda"))
    if key not in _i2c_buses:
        _i2c_buses[key] = machine.I2C(key[0], scl=machine.Pin(key[1]),
                                      sda=machine.Pin(key[2]), freq=int(bus.get("freq", 100000)))
    return key, _i2c_buses[key]


def sensor(cfg):
    import machine

    drv = cfg.get("driver")
    if drv in ("dht22", "dht11"):
        from firmware.board import dhtxx

        pin = _pin_no(cfg)
        chip = _dht_chips.get(pin)
        if chip is None:
            import dht

            cls = dht.DHT22 if drv == "dht22" else dht.DHT11
            chip = _dht_chips[pin] = dhtxx.Chip(cls(machine.Pin(pin)), drv)
        return dhtxx.DHTSensor(cfg, chip)
    if drv == "ds18b20":
        import ds18x20
        import onewire

        from firmware.board import ds18b20

        bus = ds18x20.DS18X20(onewire.OneWire(machine.Pin(_pin_no(cfg))))
        return ds18b20.DS18B20(cfg, bus)
    if drv == "adc":
        from firmware.board import analog

        atten = analog.atten_const(cfg, machine.ADC)
        return analog.AnalogSensor(cfg, machine.ADC(machine.Pin(_pin_no(cfg)), atten=atten))
    if drv == "digital":
        from firmware.board import digital

        return digital.DigitalSensor(cfg, _input_pin(cfg, "none"))
    if drv == "bme280":
        from firmware.board import bme280

        key, bus = _i2c(cfg)
        addr = cfg.get("address", bme280.ADDRESS)
        chip = _bme_chips.get((key, addr))
        if chip is None:
            chip = _bme_chips[(key, addr)] = bme280.BME280(bus, addr)
        return bme280.BME280Sensor(cfg, chip)
    raise BoardConfigError("sensor %s: driver %r is not a sensor driver" % (cfg.get("id"), drv))


def actuator(cfg):
    import machine

    from firmware.board import outputs

    drv = cfg.get("driver")
    if drv in ("relay", "gpio"):
        # the pin is made an output at its safe level in one step: no glitch at boot
        level = outputs.safe_level(cfg)
        return outputs.PinOutput(cfg, machine.Pin(_pin_no(cfg), machine.Pin.OUT, value=level))
    if drv == "pwm":
        cfg = outputs.pwm_cfg(cfg)
        duty = outputs.safe_duty(cfg)
        # until the timer takes over, the pin holds the level nearest the safe duty
        pin = machine.Pin(_pin_no(cfg), machine.Pin.OUT, value=1 if duty >= 32768 else 0)
        pwm = machine.PWM(pin, freq=int(cfg.get("freq", outputs.PWM_FREQ)), duty_u16=duty)
        return outputs.PwmOutput(cfg, pwm)
    raise BoardConfigError("command %s: driver %r is not a command driver" % (cfg.get("id"), drv))


def switch(cfg, board):
    from firmware.board import button

    drv = cfg.get("driver", "gpio")
    if drv not in ("gpio", "button"):
        raise BoardConfigError("switch %s: driver %r is not an input driver; use gpio"
                               % (cfg.get("command"), drv))
    return button.Button(cfg, board, _input_pin(cfg, "up"))


def forget():
    """Drop the shared chips and buses (a new board is built from scratch: tests, reconfig)."""
    _dht_chips.clear()
    _i2c_buses.clear()
    _bme_chips.clear()
