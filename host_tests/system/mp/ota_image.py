# Image update in the OTA system test: firmware.ota.image.ImageUpdater over real HTTPS into
# the file-backed esp32.Partition shim. argv[1]: JSON spec file {"url", "version", "ca",
# "pub" (hex), "parts" (partition directory), "root"}. Prints one JSON line with the outcome.
import asyncio
import json
import sys

import esp32

from firmware.net import http
from firmware.ota import image

with open(sys.argv[1]) as f:
    spec = json.load(f)
esp32.PARTITION_DIR[0] = spec["parts"]
resets = []
u = image.ImageUpdater(spec["root"], bytes.fromhex(spec["pub"]),
                       client=http.Client(ca_file=spec["ca"]), partition_class=esp32.Partition,
                       reset=lambda: resets.append(1))
out = {}
try:
    asyncio.run(u.run(spec["url"], spec.get("version")))
except Exception as e:
    out["error"] = type(e).__name__
out["boot"] = esp32.Partition._boot[0]
out["reset"] = len(resets)
esp32.Partition._running[0] = out["boot"]  # what the bootloader starts next
out["status"] = u.status()
out["confirmed"] = u.confirm()
out["valid_calls"] = len(esp32.Partition._valid_calls)
print(json.dumps(out))
