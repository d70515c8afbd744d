# The firmware as main.py runs it (config from FIRMWARE_ROOT, the same App and supervised
# tasks), plus one extra task that crashes with the client secret, its Basic form and a
# token in the exception message, so the supervisor logs the crash and its traceback
# through log.exc. Stops itself after argv[1] milliseconds and prints "driver: done".
import asyncio
import sys

from firmware import app, log


def main():
    run_ms = int(sys.argv[1])
    a = app.build()
    cloud = a.cloud
    token = "eyJ-driver-token-Ocelot-9"  # as if issued at run time: registered then
    log.secret(token)
    sup = a.supervisor()

    async def leaky():
        await asyncio.sleep_ms(200)
        raise RuntimeError("request failed: Authorization: %s; secret %r; token %s" %
                           (cloud._basic, cloud.client_secret, token))

    async def stopper():
        await asyncio.sleep_ms(run_ms)
        sup.stop()

    sup.add("leaky", leaky)
    sup.add("stopper", stopper)
    log.info("driver", "running %d ms with a leaky task", run_ms)
    asyncio.run(sup.run_forever())
    print("driver: done")


main()
