# Runs a list of HTTP requests with firmware.net.http under MicroPython and prints one JSON
# line per request. argv[1]: a file holding JSON {"ca": path|null, "timeout_ms": n,
# "requests": [...]} where each request is {"method", "url", "body"?, "json"?, "form"?,
# "idempotent"?, "max_body"?, "download"?: path, "sleep_ms"?: pause before it}; optional
# "deadline_ms" (the client's overall deadline per request). Each line carries "elapsed_ms".

import asyncio
import json
import sys
import time

from firmware.net import http


async def main(spec):
    kw = {"deadline_ms": spec["deadline_ms"]} if spec.get("deadline_ms") else {}
    client = http.Client(ca_file=spec.get("ca"), timeout_ms=spec.get("timeout_ms", 5000), **kw)
    if spec.get("concurrent"):  # every request in its own task, all sharing the client
        async def one(r):
            resp = await client.request("GET", r["url"])
            return {"url": r["url"], "body": resp.body.decode()}

        out = await asyncio.gather(*[one(r) for r in spec["requests"]])
        for o in out:
            print(json.dumps(o))
        print(json.dumps({"handshakes": client.handshakes}))
        return
    for r in spec["requests"]:
        if r.get("sleep_ms"):
            await asyncio.sleep_ms(r["sleep_ms"])
        out = {}
        t0 = time.ticks_ms()
        try:
            if r.get("download"):
                resp, n = await client.download(r["url"], r["download"])
                out["written"] = n
            else:
                resp = await client.request(r.get("method", "GET"), r["url"], body=r.get("body"),
                                            json=r.get("json"), form=r.get("form"),
                                            idempotent=r.get("idempotent"),
                                            max_body=r.get("max_body"))
            out["status"] = resp.status
            out["body"] = resp.body.decode()[:300]
            out["len"] = len(resp.body)
        except Exception as e:
            out["error"] = type(e).__name__
            out["msg"] = str(e)[:200]
        out["handshakes"] = client.handshakes
        out["elapsed_ms"] = time.ticks_diff(time.ticks_ms(), t0)
        print(json.dumps(out))
    await client.close()


with open(sys.argv[1]) as f:
    asyncio.run(main(json.load(f)))
