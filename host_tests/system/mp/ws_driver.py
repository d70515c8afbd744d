# Runs WebSocket actions with firmware.net.ws under MicroPython; one JSON line per action.
# argv[1]: a file holding JSON {"url", "ca"?, "max_message"?, "actions": [[name, arg?], ...]}
# with names: text (send str), binary (send N bytes of a pattern), recv, ping, close.
import asyncio
import json
import sys

from firmware.net import ws


def pattern(n):
    return bytes(i & 0xFF for i in range(n))


async def main(spec):
    try:
        sock = await ws.connect(spec["url"], ca_file=spec.get("ca"),
                                max_message=spec.get("max_message", 16384), timeout_ms=5000)
    except Exception as e:
        print(json.dumps({"connect": type(e).__name__, "msg": str(e)[:120]}))
        return
    for action in spec["actions"]:
        name, arg = action[0], (action[1] if len(action) > 1 else None)
        out = {"action": name}
        try:
            if name == "text":
                await sock.send_text(arg)
            elif name == "binary":
                await sock.send_binary(pattern(arg))
            elif name == "ping":
                await sock.ping(b"hi")
            elif name == "close":
                await sock.close(1000, "bye")
            elif name == "recv":
                msg = await sock.recv()
                if isinstance(msg, str):
                    out["text"] = msg[:200]
                else:
                    out["binary_len"] = len(msg)
                    out["pattern_ok"] = msg == pattern(len(msg))
        except ws.WsClosed as e:
            out["closed"] = e.code
            out["reason"] = e.reason
        except Exception as e:
            out["error"] = type(e).__name__
            out["msg"] = str(e)[:120]
        print(json.dumps(out))


with open(sys.argv[1]) as f:
    asyncio.run(main(json.load(f)))
