# The app in the OTA system test (host_tests/system/test_ota_update.py): installed as
# firmware/app.py of the factory image and of each bundle, with VERSION set by the test. It
# reports what it runs as one JSON line per event, confirms a trial, and runs the update the
# spec file (env OTA_SPEC) asks for. At the stage named by spec "kill_at" it says so and waits
# on stdin, and the test cuts the power there (SIGKILL).
import asyncio
import json
import os
import sys

VERSION = "?"


def emit(**kw):
    print(json.dumps(kw))


def _wait_for_kill(stage):
    emit(event="stage", stage=stage)
    sys.stdin.readline()  # the test kills the process while it waits here


def main():
    from firmware.ota import slots, updater

    root = os.getenv("FIRMWARE_ROOT")
    with open(os.getenv("OTA_SPEC")) as f:
        spec = json.load(f)
    kill = spec.get("kill_at")
    trial = slots.on_trial(root)
    emit(event="running", version=VERSION, trial=trial, failure=slots.failure(root))
    if trial and kill == "first_boot":
        _wait_for_kill(kill)
    if spec.get("confirm", True):  # "the cloud accepted data": what the real health task sees
        if trial:
            emit(event="confirmed", version=slots.confirm(root))
        try:
            from firmware import safemode
        except ImportError:
            safemode = None
        if safemode is not None:
            safemode.healthy(root)

    def hook(stage, detail):
        if stage == kill and (stage != "download" or detail >= 2048):
            _wait_for_kill(stage)

    def reset():
        emit(event="reset")
        raise SystemExit(0)

    with open(root + "/ota_public_key.bin", "rb") as f:
        key = f.read()
    u = updater.Updater(root, key, ca_file=root + "/ca.pem", manifest_url=spec.get("manifest"),
                        reset=reset, hook=hook)
    action = spec.get("action")
    try:
        if action == "update":
            asyncio.run(u.run(spec["url"], spec.get("version"), spec.get("sha256")))
        elif action == "start":  # the entry point a cloud adapter calls
            async def started():
                if u.start(spec["url"], spec.get("version"), spec.get("sha256")):
                    await u.task
                    if u.last_error is not None:
                        raise u.last_error
                else:
                    emit(event="not_started")

            asyncio.run(started())
        elif action == "command":  # the command named by config ota.command
            async def commanded():
                if not u.command(spec["value"]):
                    emit(event="not_started")
                    return
                await u.task
                if u.last_error is not None:
                    raise u.last_error

            asyncio.run(commanded())
        elif action == "check":
            emit(event="checked", started=asyncio.run(u.check()))
    except (updater.UpdateError, Exception) as e:
        if spec.get("trace"):
            sys.print_exception(e)
        emit(event="update_failed", error=type(e).__name__, msg=str(e)[:200])
    emit(event="idle", version=VERSION)
    return 0
