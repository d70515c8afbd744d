"""The uplink task: drains the outbox through the cloud adapter (app.py runs it as `uplink`).

Up to the adapter's `send_depth` batches are in flight at once (Realer MQTT: 2); a record
leaves the outbox only on its attempt's result; the backoff after a failure ends when any
task reaches the cloud (the app's `link`, set by the adapter's `on_reached`). The state it
shares with the health task (the running attempts) lives on the app: `check()` cancels an
attempt that never returns.
"""
import asyncio

from micropython import const

from firmware import clock, log
from firmware.backoff import Backoff

# Its lines carry the app's tag, "app", spelled out: a `_TAG` name would take this module's
# globals table one size up (17 -> 23 slots) on the frozen image.
_UPLINK_BASE_MS = const(1000)
_UPLINK_CAP_MS = const(120000)
_IDLE_WAKE_MS = const(30000)
_LINK_CHECK_MS = const(1000)  # how often a backing-off uplink looks at the Wi-Fi station


class SendStuck(Exception):
    """The health task cancelled a send attempt that never returned (a stalled peer, not a
    cloud that said no); the uplink keeps the records and backs off as for a network fault."""


class _Attempt:
    """One send attempt: its task, its records, and what came back."""
    __slots__ = ("task", "records", "deadline", "number", "cancelled", "result", "error")

    def __init__(self, records, deadline, number):
        self.task = None
        self.records = records
        self.deadline = deadline
        self.number = number  # app.sends when it started (the watchdog's uplink progress)
        self.cancelled = False
        self.result = None
        self.error = None


# The uplink runs up to the adapter's `send_depth` send attempts at once (1 unless the
# adapter says its sends may overlap: Realer MQTT's next batch goes out while the
# previous one waits for its acks). A record is in at most one running attempt (`flying`)
# and leaves the outbox only on its attempt's result; the records of an attempt that
# failed are pending again for the next one (same message_id). After a failure no new
# attempt starts until the running ones ended, then the uplink backs off.
async def run(app):
    backoff = Backoff(_UPLINK_BASE_MS, _UPLINK_CAP_MS)
    flying: set = set()  # message_ids in a running attempt: never handed out twice
    # batch size while the heap is short (0: the adapter's batch_max): halved when a send
    # raised MemoryError (building a batch's body), one more per clean success. Inline and
    # only for a bare MemoryError (the network layer's arrive as NetError): two helpers and
    # a NetError class for it held 192 bytes more RAM and Realer MQTT failed 1 of 2 trials
    # at 56K, its heap's edge.
    limit = 0
    app.attempts = []
    app.ended = []
    try:
        while True:
            fault = None  # the exception of the first failed attempt
            delay = None  # (ms, floor) after a partly refused batch
            while app.ended or (app.attempts and (fault or delay)):
                if not app.ended:  # a failure waits for the others to come back
                    await app.end.wait()
                    continue
                h = app.ended.pop(0)
                for r in h.records:
                    flying.discard(r.message_id)
                if h.error is not None:
                    if fault is None and isinstance(h.error, MemoryError):
                        n = max(1, len(h.records) // 2)  # said once per size
                        if n != limit:
                            log.warn("app", "uplink: out of heap sending %d records; batches "
                                     "of %d until sends succeed again", len(h.records), n)
                        limit = n
                    fault = fault or h.error
                else:
                    wait = _settle(app, h.records, h.result, backoff)
                    if wait is not None and delay is None:
                        delay = wait
                    elif limit and not h.result.failed:
                        limit = 0 if limit + 1 >= app.cloud.batch_max else limit + 1
                h = None  # its records are on flash: not held in RAM during a pause
            if fault is not None:
                log.failing("uplink", "app", "uplink", log.describe(fault),  # once, counted
                            "; %d pending" % app.outbox.pending_count())
                app.board.link_failed(log.describe(fault))  # actuators with a limit go safe
                # what a server asked for (a host closed by a 429: http.RateLimited's
                # wait_ms) is slept in full, the rest of the backoff ends with any success
                wait_ms = getattr(fault, "wait_ms", 0)
                await _pause(app, backoff, backoff.next_ms(wait_ms), wait_ms)
                continue
            if delay is not None:
                await _pause(app, backoff, delay[0], delay[1])
                continue
            if len(app.attempts) < max(1, getattr(app.cloud, "send_depth", 1)):
                records = _next_batch(app, flying, limit)
                if records:
                    if app.wifi is not None and not app.wifi.up.is_set():
                        await app.wifi.up.wait()  # senders wait for the station
                    # a success before this attempt says nothing about its failure
                    app.link.clear()
                    for r in records:
                        flying.add(r.message_id)
                    _start(app, records)
                    records = None  # the attempt holds them while it runs
                    continue
            if app.attempts:
                await app.end.wait()
            else:
                await app.wake.wait(_IDLE_WAKE_MS)
    finally:  # the uplink itself ends (shutdown, a crash): its attempts end with it
        for h in app.attempts:
            h.task.cancel()  # its connection closes as it unwinds; the records stay
        app.attempts = []

def _next_batch(app, flying, limit):
    """The oldest pending records not in a running attempt, at most batch_max (or limit)."""
    # the outbox passes the records in flight without reading them, and never expires one
    return app.outbox.pending(limit or app.cloud.batch_max, flying)


def _settle(app, records, result, backoff):
    """Applies one attempt's result to the outbox; (delay_ms, floor_ms) when the cloud
    kept some of the records (the uplink backs off), else None."""
    app.board.link_ok()
    log.recovered("uplink", "app", "uplink: delivering again")
    # one ack-index write for the whole result, not one per record (bench/mqtt-throughput.md)
    app.outbox.resolve(result.ok, result.dead)
    app.delivered += len(result.ok)
    if not result.failed:
        backoff.reset()
        return None
    delay = backoff.next_ms(result.wait_ms)
    log.info("app", "uplink: the cloud kept %d of %d records sent (%d pending); "
             "retry in %s (server asked %s)",
             len(records) - len(result.ok) - len(result.dead), len(records),
             app.outbox.pending_count(), log.duration(delay),
             log.duration(result.wait_ms))
    return delay, result.wait_ms

# The uplink's wait after a failed attempt. What the server asked for (Retry-After, a
# refused device) is slept in full; the rest, backoff, ends as soon as any task has a
# successful exchange with the cloud (a token, a catalog, a broker session), or when the
# Wi-Fi station is found down (the loop then sends the moment it is back): after an
# outage the drain starts with the link, not up to _UPLINK_CAP_MS later.
async def _pause(app, backoff, delay_ms, floor_ms):
    if floor_ms > 0:
        await asyncio.sleep_ms(floor_ms)
    left = clock.Deadline(max(0, delay_ms - floor_ms))
    wifi = app.wifi
    while not left.expired():
        if wifi is not None and wifi.station and not wifi.up.is_set():
            return  # the loop waits for the station and sends once it is back
        if await app.link.wait(min(left.remaining_ms(), _LINK_CHECK_MS)):
            backoff.reset()
            return
    if app.link.is_set():  # reached during the server's wait: go on, from scratch
        app.link.clear()
        backoff.reset()

# Each send attempt is its own task, so the health task can cancel one that never returns
# (check()); the uplink learns of its end from app.ended/app.end, never by awaiting the
# task, so a cancel of the one is never taken for a cancel of the other. A cancelled
# attempt reaches the uplink as SendStuck, an ordinary failure: the records stay.
def _start(app, records):
    app.sends += 1
    h = _Attempt(records, clock.Deadline(app.send_limit_ms), app.sends)
    app.attempts.append(h)
    h.task = asyncio.create_task(_run_attempt(app, h))

async def _run_attempt(app, h):
    try:
        h.result = await app.cloud.send(h.records)
    except asyncio.CancelledError:  # by check() (or the uplink's own end)
        h.error = SendStuck("send attempt stuck for %d s; cancelled, records kept" %
                            (app.send_limit_ms // 1000))
    except Exception as e:  # handed to the uplink
        h.error = e
    if h not in app.attempts:
        return  # its uplink ended (and cancelled it): nobody settles it, records stay
    app.attempts.remove(h)
    app.ended.append(h)
    app.end.set()

def check(app):
    """For the health task: a send attempt past its limit is cancelled (its HTTP request
    or session drops its connection as it unwinds) and logged once. Returns True then."""
    hit = False
    for h in app.attempts:
        if h.cancelled or not h.deadline.expired():
            continue
        h.cancelled = hit = True
        app.stuck_sends += 1
        log.warn("app", "uplink: a send attempt has not returned in %d s (a stalled peer, "
                 "not a refusal); cancelling it, %d records pending",
                 app.send_limit_ms // 1000, app.outbox.pending_count())
        h.task.cancel()
    return hit
