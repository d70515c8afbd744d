"""Sensors and actuators behind one small interface (base), the sim board (sim), and later
the ESP32 drivers; `factory.make_board` builds the board the config names."""
from firmware.board.base import (  # noqa: F401  (the package's public names)
    Actuator,
    ActuatorError,
    Board,
    BoardConfigError,
    BoardError,
    LocalChanges,
    Rejected,
    Sensor,
    SensorError,
    Switch,
    value_text,
)
