"""What the local clouds' operator commands print: a sentence saying what was done, human
times ("04:05:12, 12 s ago") and statuses, and with `--wait` the device's answer when it
arrives. The clouds' own functions stay the data layer (tests use them); only the CLI print
paths come through here.
"""
import calendar
import json
import time

NO_STATUS = "applied"  # a report without report_status is an applied value (Realer)


def duration(seconds):
    s = int(round(abs(seconds)))
    if s < 60:
        return "%d s" % s
    if s < 3600:
        return "%d min %d s" % (s // 60, s % 60) if s % 60 else "%d min" % (s // 60)
    return "%d h %d min" % (s // 3600, s % 3600 // 60)


def epoch(value):
    """Seconds since the epoch from a number or an ISO 8601 UTC string; None if neither."""
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.rstrip("Z").split(".")[0].replace(" ", "T")
        try:
            return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%S")))
        except ValueError:
            return None
    return None


def when(value, now=None):
    """`2026-12-06 04:05:12 UTC (12 s ago)` / `(in 3 min)`; `-` for no time."""
    t = epoch(value)
    if t is None:
        return "-"
    now = time.time() if now is None else now
    rel = "%s ago" % duration(now - t) if t <= now else "in %s" % duration(t - now)
    return "%s UTC (%s)" % (time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)), rel)


def wait_for(fetch, timeout, interval=0.5, clock=time.monotonic, sleep=time.sleep):
    """Poll fetch() until it returns something truthy (returned) or timeout s pass (None)."""
    end = clock() + timeout
    while True:
        got = fetch()
        if got:
            return got
        if clock() >= end:
            return None
        sleep(interval)


def no_answer(timeout, hint):
    print("no answer from the device within %s; %s" % (duration(timeout), hint))
    return 1


# -- Realer --------------------------------------------------------------------------------

def realer_set_desired(cloud, data, command, value, ttl, wait):
    desired_id = cloud.admin_call(data, "desired", {"command": command, "value": value,
                                                    "ttl": ttl})["desired_id"]
    print("command %d: desired value %s set (desired_id %s, %s); the device picks it up at "
          "its next catalog poll or MQTT delivery" % (
              command, value, desired_id,
              "expires in %s" % duration(ttl) if ttl is not None else "no expiry"))
    if wait is None:
        return 0

    def reported():
        for c in cloud.device_state(data)["commands"]:
            r = c["reported"]
            if c["id"] == command and r and r["desired_id"] == desired_id:
                return r
        return None

    r = wait_for(reported, wait)
    if r is None:
        return no_answer(wait, "is it running (`make run`) and is command %d in its config?"
                         % command)
    print("device reported command %d = %s: %s, %s" % (
        command, r["value"], r["report_status"] or NO_STATUS, when(r["at"])))
    return 0


def realer_show(state, now=None):
    lines = ["device %s: %d live token%s, feed data %s" % (
        state["device_id"], state["live_tokens"], "" if state["live_tokens"] == 1 else "s",
        ", ".join("%s=%d" % kv for kv in sorted(state["feed_data"].items())) or "none")]
    for c in state["commands"]:
        r = c["reported"]
        desired = "desired %s (%s%s)" % (
            c["desired_value"], c["desired_id"],
            ", expires %s" % when(c["expires_at"], now) if c["expires_at"] else "") \
            if c["desired_id"] else "no desired value"
        if r is None:
            got = "nothing reported yet"
        else:
            status = r["report_status"] or (NO_STATUS if r["desired_id"] else "its own state")
            got = "reported %s: %s%s, %s" % (
                r["value"], status,
                " for " + r["desired_id"] if r["desired_id"] else "", when(r["at"], now))
        lines.append("  command %s (%s): %s; %s" % (c["id"], c["name"], desired, got))
    for s in state["sensors"]:
        r = s["latest"]
        lines.append("  sensor %s (%s): %s" % (
            s["id"], s["name"], "%s, %s" % (r["value"], when(r["at"], now)) if r
            else "nothing yet"))
    for cred in state["mqtt_credentials"]:
        lines.append("  MQTT credential %s v%s, expires in %s" % (
            cred["username"], cred["version"], duration(cred["expires_in_s"])))
    return "\n".join(lines)


# -- DeviceHive ----------------------------------------------------------------------------

def devicehive_send(cloud, data, name, value, lifetime, age, wait):
    cid = cloud.send_command(data, name, value, lifetime, age)
    print("command %s queued: %s = %s (id %d%s); the device gets it over its WebSocket "
          "subscription" % (name, name, json.dumps(value), cid,
                            ", lifetime %s" % duration(lifetime) if lifetime else ""))
    if wait is None:
        return 0

    def answered():
        for c in cloud.commands(data):
            if c["id"] == cid and c["status"]:
                return c
        return None

    c = wait_for(answered, wait)
    if c is None:
        return no_answer(wait, "is it running and subscribed (`make run PLATFORM=devicehive`)?")
    print("device answered command %d: %s%s, %s" % (
        cid, c["status"], " %s" % json.dumps(c["result"]) if c["result"] is not None else "",
        when(c["lastUpdated"])))
    return 0


def devicehive_show(state, now=None):
    d = state["device"]
    lines = ["device %s (%s): %d notifications; requests %s" % (
        d["id"], d["name"], state["notifications"],
        ", ".join("%s=%d" % kv for kv in sorted(state["device_requests"].items())))
             if d else "device not registered yet"]
    for c in state["commands"]:
        lines.append("  command %d %s %s: %s%s, sent %s" % (
            c["id"], c["command"], json.dumps(c["parameters"]), c["status"] or "no answer yet",
            " " + json.dumps(c["result"]) if c["result"] is not None else "",
            when(c["timestamp"], now)))
    return "\n".join(lines)


# -- Xyte ----------------------------------------------------------------------------------

def xyte_send(cloud, data, name, params, wait):
    cid = cloud.send_command(data, name, params)
    print("command %s %s queued (id %s); the device is told over MQTT and fetches it" % (
        name, json.dumps(params), cid))
    if wait is None:
        return 0

    def answered():
        for c in cloud.commands(data):
            if c["id"] == cid and c["status"] not in ("pending", "in_progress"):
                return c
        return None

    c = wait_for(answered, wait)
    if c is None:
        return no_answer(wait, "is it running (`make run PLATFORM=xyte`)?")
    print("device answered command %s: %s%s" % (
        name, c["status"], " (%s)" % c["message"] if c["message"] else ""))
    return 0


def xyte_set_config(cloud, data, fields, wait):
    version = cloud.set_config(data, fields)
    print("config %s set (version %s); the device is told over MQTT" % (
        json.dumps(fields), version))
    if wait is None:
        return 0

    def reported():
        r = cloud.kv_get(data, "reported_config")
        return r if isinstance(r, dict) and r.get("version") == version else None

    r = wait_for(reported, wait)
    if r is None:
        return no_answer(wait, "is it running (`make run PLATFORM=xyte`)?")
    print("device reported config version %s: %s" % (version, json.dumps(r)))
    return 0


def xyte_show(state):
    lines = ["%d device%s, %d telemetry messages (%d duplicates), %d violations" % (
        len(state["devices"]), "" if len(state["devices"]) == 1 else "s", state["telemetry"],
        state["duplicates"], state["violations"])]
    for d in state["devices"]:
        lines.append("  device %s sn %s firmware %s%s" % (
            d["name"], d["sn"], d["firmware_version"], " (deleted)" if d["deleted"] else ""))
    for c in state["commands"]:
        lines.append("  command %s %s: %s%s" % (c["name"], json.dumps(c["parameters"]),
                                                c["status"],
                                                " (%s)" % c["message"] if c["message"] else ""))
    if state["config"]:
        lines.append("  config %s; device reported %s" % (
            json.dumps(state["config"]), json.dumps(state["reported_config"])))
    return "\n".join(lines)


# -- NUBISON -------------------------------------------------------------------------------

def nubison_show(state, now=None):
    lines = ["%d readings stored (%d replays), %d live tokens; calls %s" % (
        state["stored"], state["replays"], state["live_tokens"],
        ", ".join("%s=%d" % kv for kv in sorted(state["events"].items())) or "none")]
    for r in state["registrations"]:
        lines.append("  device %s (%s, model %s): registered %s, %d registration%s" % (
            r["device_key"], r["name"], r["model"], when(r["registered"], now),
            r["registrations"], "" if r["registrations"] == 1 else "s"))
    return "\n".join(lines)
