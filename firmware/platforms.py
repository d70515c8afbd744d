"""The platform registry: the one table every list of clouds reads (the config check, the
adapter factory firmware/app.py's make_cloud, the JSON schema, the host tools' --platform
choices). Adding a platform is one row here plus its adapter module (README "Adding a
platform").

A row is (platform, transport, adapter module, adapter class, cloud keys the config must
set, defaults for other cloud keys, the config key holding the cloud's URL, what to check
when the cloud refuses the credentials, the cloud keys that are secrets: registered with
log.secret() before anything can log them, and expected in the secrets file). `transport`
is None for a platform with one transport; a platform with several lists one row per
transport, the first is the default.
Only strings and tuples of them: frozen, the table is a constant in the image (no heap);
the adapter module is named, not imported, so a board loads only the one its config picks.
Start-up code reads it; firmware/config.py's unload() can drop it after.
"""
# a row's fields, by index (plain ints, not const(): other modules and the host tools read
# them, and the module then imports nothing, so the tools need no MicroPython shims)
PLATFORM = 0
TRANSPORT = 1
MODULE = 2
CLASS = 3
REQUIRED = 4
DEFAULTS = 5
URL_KEY = 6
CREDENTIALS = 7
SECRETS = 8

# written out in full (no names inside): a literal of literals compiles to one constant
ROWS: tuple = (
    ("realer", "https", "firmware.clouds.realer_https", "RealerHttps",
     ("api_url", "device_id", "client_id", "client_secret"), (), "api_url",
     "cloud.client_id and cloud.client_secret", ("client_secret",)),
    ("realer", "mqtt", "firmware.clouds.realer_mqtt", "RealerMqtt",
     ("api_url", "device_id", "client_id", "client_secret"), (), "api_url",
     "cloud.client_id and cloud.client_secret", ("client_secret",)),
    ("nubison", None, "firmware.clouds.nubison", "Nubison",
     ("api_url", "client_id", "client_secret", "product_code", "device_id", "model_name",
      "device_name"), (), "api_url", "cloud.client_id and cloud.client_secret",
     ("client_secret",)),
    ("devicehive", None, "firmware.clouds.devicehive", "DeviceHive",
     ("api_url", "device_id", "access_token", "refresh_token"),
     (("ws_path", "/api/websocket"),), "api_url",
     "cloud.access_token and cloud.refresh_token (provision new ones)",
     ("access_token", "refresh_token")),
    ("xyte", None, "firmware.clouds.xyte", "Xyte",
     ("hardware_key", "serial_number", "firmware_version"),
     (("registration_url", "https://entry.xyte.io"), ("command_topic", "commands")),
     "registration_url", "cloud.hardware_key", ("hardware_key",)),
)


def names():
    """The platforms, each once, in table order."""
    out = []
    for row in ROWS:
        if row[PLATFORM] not in out:
            out.append(row[PLATFORM])
    return out


def transports(platform):
    """The transports a platform offers (the first is its default); () for a platform with
    one transport, which takes no `cloud.transport`."""
    return tuple(r[TRANSPORT] for r in ROWS if r[PLATFORM] == platform and r[TRANSPORT])


def row(platform, transport=None):
    """The platform's row (for its transport, default: the first), or None."""
    for r in ROWS:
        if r[PLATFORM] == platform and (r[TRANSPORT] is None or transport is None or
                                        r[TRANSPORT] == transport):
            return r
    return None


def secrets():
    """Every platform's secret cloud keys."""
    out = []
    for r in ROWS:
        out += [k for k in r[SECRETS] if k not in out]
    return out


def runs():
    """(name, platform, transport) for every row: one local run each (realer-https,
    realer-mqtt, nubison...); a single-transport platform runs over "https"."""
    return tuple(("%s-%s" % (r[PLATFORM], r[TRANSPORT]) if r[TRANSPORT] else r[PLATFORM],
                  r[PLATFORM], r[TRANSPORT] or "https") for r in ROWS)
