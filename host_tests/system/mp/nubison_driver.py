# Drives firmware.clouds.nubison under MicroPython against a real cloud: authenticate, send
# the records, close (logout); prints one JSON line per step. argv[1]: a file holding JSON
# {"root": data root, "ca": CA PEM path, "cloud": the config's cloud section,
#  "records": [[message_id, kind, source, value, t], ...]}.
import asyncio
import json
import sys

from firmware.clouds.nubison import Nubison
from firmware.outbox import Record


class Cfg:
    def __init__(self, spec):
        self.root = spec["root"]
        self.ca_path = spec["ca"]
        self.raw = {"cloud": spec["cloud"]}

    def get(self, key, default=None):
        return self.raw.get(key, default)


async def main(spec):
    cloud = Nubison(Cfg(spec))
    wait = await cloud.authenticate()
    print(json.dumps({"step": "auth", "wait": wait, "registered": cloud.registered,
                      "due": cloud.token_due()}))
    res = await cloud.send([Record(*r) for r in spec["records"]])
    print(json.dumps({"step": "send", "ok": res.ok, "dead": res.dead, "failed": res.failed}))
    await cloud.close()
    print(json.dumps({"step": "close", "due": cloud.token_due(),
                      "handshakes": cloud.http.handshakes}))


with open(sys.argv[1]) as f:
    asyncio.run(main(json.load(f)))
