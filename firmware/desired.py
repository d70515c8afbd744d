"""Desired-state bookkeeping shared by every cloud adapter: which desired values were already
handled, which are stale, and applying one so that exactly one report reaches the outbox.

Persisted in `desired.json` under the data root (replaced by write-temp-then-rename): per
command the last few handled desired ids, per route the highest handled sequence number, and
at most one *claim* per command: the desired value being applied right now.

Crash windows, in the order apply_desired() takes its steps:

1. decide            nothing written; a reboot decides again and applies once.
2. claim (persisted) a reboot finds the claim: it never applies again, `recover()` reports.
3. actuator.apply    same as 2.
4. outbox.append     the report is durable; a reboot still finds the claim and recover()
                     reports once more: a second report with the same desired_id (reports
                     are at-least-once, like every record; the cloud keeps the latest).
5. mark handled      claim replaced by the handled id; a redelivery is a "duplicate".

So a command is never applied twice and its report is never lost; the price is a possible
duplicate report after a crash in the tiny window between 4 and 5. recover() cannot know
whether step 3 ran before the crash, and the hardware was reset to safe at boot anyway, so it
reports what it observes: `applied` when the physical value equals the desired one, `stale`
otherwise (the restart overtook the command; the cloud sees the real value and may resend).
Outcomes that apply nothing (stale, rejected before any write) append first and mark after:
a crash between repeats the same report, never loses it.
"""
import json

from micropython import const

from firmware import clock, log, statefile
from firmware.board.base import BoardError, Rejected, value_text
from firmware.config_types import join

_TAG = "desired"
_FILE = "desired.json"
_KEEP_IDS = const(4)  # redeliveries older than this many handled ids are caught by seq/expiry

APPLY = "apply"
DUPLICATE = "duplicate"
STALE = "stale"
APPLIED = "applied"
REJECTED = "rejected"


class DesiredError(ValueError):
    """A desired-state message the adapter passed on is malformed (no id, bad expiry)."""


class DesiredState:
    """The persisted memory of handled desired values under `root`."""

    def __init__(self, root):
        self.path = join(root, _FILE)
        self._cmds: dict = {}
        self._routes: dict = {}
        self._load()

    def _load(self):
        try:
            with open(self.path) as f:
                data = json.load(f)
        except OSError:
            return  # first boot
        except ValueError as e:
            log.warn(_TAG, "%s unreadable (%s): starting empty", self.path, log.describe(e))
            return
        if not isinstance(data, dict):
            log.warn(_TAG, "%s is not an object: starting empty", self.path)
            return
        cmds = data.get("cmds")
        routes = data.get("routes")
        if isinstance(cmds, dict):
            for key, c in cmds.items():
                if isinstance(c, dict) and isinstance(c.get("ids", []), list):
                    self._cmds[key] = c
        if isinstance(routes, dict):
            for key, seq in routes.items():
                if isinstance(seq, int):
                    self._routes[key] = seq

    def _save(self):  # after a power cut the file is the old or the new one, whole
        statefile.write_json(self.path, {"cmds": self._cmds, "routes": self._routes})

    def _cmd(self, command_id):
        key = str(command_id)
        c = self._cmds.get(key)
        if c is None:
            c = {"ids": []}
            self._cmds[key] = c
        return c

    def last_seq(self, route):
        return self._routes.get(str(route))

    def handled(self, command_id):
        """The handled desired ids of a command, oldest first."""
        c = self._cmds.get(str(command_id))
        return list(c["ids"]) if c else []

    def claims(self):
        """[(command_id key, claim dict)] for values whose apply was started, not finished."""
        return [(k, c["claim"]) for k, c in self._cmds.items() if c.get("claim")]

    def decide(self, command_id, desired_id, value=None, seq=None, expires_at=None, now=None,
               route=None):
        """"apply", "duplicate" (already handled or being handled: neither apply nor report)
        or "stale" (expired at `now`, or `seq` below the route's last handled sequence).
        `expires_at` and `now` are Unix seconds; without `now` the clock is asked, and an
        unset clock cannot call anything expired."""
        if desired_id is None or desired_id == "":
            raise DesiredError("desired state for command %s has no desired_id" % (command_id,))
        did = str(desired_id)
        c = self._cmds.get(str(command_id))
        if c is not None:
            claim = c.get("claim")
            if did in c["ids"] or (claim and claim.get("id") == did):
                return DUPLICATE
        if expires_at is not None:
            if isinstance(expires_at, bool) or not isinstance(expires_at, (int, float)):
                raise DesiredError("expires_at %r is not Unix seconds" % (expires_at,))
            if now is None and clock.is_set():
                now = clock.unix_time()
            if now is not None and now >= expires_at:
                return STALE
        if seq is not None:
            if isinstance(seq, bool) or not isinstance(seq, int):
                raise DesiredError("seq %r is not an integer" % (seq,))
            last = self._routes.get(str(command_id if route is None else route))
            if last is not None and seq < last:
                return STALE
        return APPLY

    def claim(self, command_id, desired_id, value, seq=None, route=None):
        """Persist "about to apply desired_id" before touching the actuator."""
        c = self._cmd(command_id)
        c["claim"] = {"id": str(desired_id), "value": value, "seq": seq, "route": route}
        try:
            self._save()
        except Exception:
            del c["claim"]  # not on flash, so not claimed: the caller must not apply
            raise

    def mark_handled(self, command_id, desired_id, seq=None, route=None):
        """Persist that desired_id is done (reported); drops its claim."""
        c = self._cmd(command_id)
        did = str(desired_id)
        claim = c.get("claim")
        if claim and claim.get("id") == did:
            del c["claim"]
        ids = c["ids"]
        if did in ids:
            ids.remove(did)
        ids.append(did)
        while len(ids) > _KEEP_IDS:
            ids.pop(0)
        if seq is not None:
            key = str(command_id if route is None else route)
            last = self._routes.get(key)
            if last is None or seq > last:
                self._routes[key] = seq
        self._save()

    def recover(self, board, outbox, now=None):
        """Report every claim left by a crash or a failed append, without applying anything.
        Call at boot after the board went safe (apply_desired also calls it). Returns the
        number of reports appended."""
        n = 0
        for key, claim in self.claims():
            command_id = _command_key(board, key)
            t = _now(now)
            act = board.actuators.get(command_id)
            observed = _observed(act, claim.get("value"))
            status = APPLIED if _same(act, observed, claim.get("value")) else STALE
            outbox.append("command", command_id, value_text(observed), t,
                          desired_id=claim["id"], report_status=status)
            self.mark_handled(command_id, claim["id"], claim.get("seq"), claim.get("route"))
            log.warn(_TAG, "command %s desired %s was interrupted: reported %s", command_id,
                     claim["id"], status)
            n += 1
        return n


# claims are stored under str(command_id); give the board's own id back (int ids stay ints)
def _command_key(board, key):
    for cid in board.actuators:
        if str(cid) == key:
            return cid
    return key


# the outbox wants whole Unix seconds
def _now(now):
    return clock.unix_time() if now is None else int(now)


def _observed(act, fallback):
    if act is None:
        return fallback
    try:
        return act.value()
    except BoardError:
        return fallback


def _same(act, observed, requested):
    if act is None:
        return False
    try:
        return act.check(requested) == act.check(observed)
    except Rejected:
        return False


def apply_desired(board, outbox, state, command_id, desired_id, value, seq=None,
                  expires_at=None, now=None, route=None):
    """Apply one desired value through the board's actuator and append exactly one report
    record ("applied" with the observed physical value, "rejected", or "stale"). Returns that
    status, or "duplicate" when it was handled before (nothing applied, nothing reported).
    Raises ClockUnset before doing anything when no `now` is given and the clock is unset,
    DesiredError for a malformed message, and whatever outbox.append raises (the claim then
    stays, and the next call or boot reports it)."""
    t = _now(now)
    if state.claims():
        state.recover(board, outbox, t)
    act = board.actuators.get(command_id)
    try:
        verdict = state.decide(command_id, desired_id, value, seq, expires_at, t, route)
    except DesiredError as e:
        if desired_id is None or desired_id == "":
            raise
        log.warn(_TAG, "command %s desired %s: %s", command_id, desired_id, e)
        seq = None  # it is not a sequence number; do not let it move the route's
        verdict = REJECTED
    if verdict == DUPLICATE:
        log.debug(_TAG, "command %s desired %s already handled", command_id, desired_id)
        return DUPLICATE
    if verdict == APPLY and act is None:
        log.warn(_TAG, "desired %s names command %s, which this board does not have",
                 desired_id, command_id)
        verdict = REJECTED
    if verdict == APPLY:
        try:
            act.check(value)  # an invalid value is refused before any flash write
        except Rejected as e:
            log.warn(_TAG, "command %s rejected %s: %s", command_id, desired_id, e.reason)
            verdict = REJECTED
    if verdict != APPLY:
        status = verdict
        observed = _observed(act, value)
        outbox.append("command", command_id, value_text(observed), t, desired_id=desired_id,
                      report_status=status)
        state.mark_handled(command_id, desired_id, seq, route)
        return status
    state.claim(command_id, desired_id, value, seq, route)
    try:
        observed = act.apply(value)
        status = APPLIED
    except Rejected as e:
        log.warn(_TAG, "command %s rejected %s: %s", command_id, desired_id, e.reason)
        observed = _observed(act, value)
        status = REJECTED
    except BoardError as e:
        log.exc(_TAG, "command %s failed to apply %s" % (command_id, desired_id), e)
        observed = _observed(act, value)
        status = REJECTED
    outbox.append("command", command_id, value_text(observed), t, desired_id=desired_id,
                  report_status=status)
    state.mark_handled(command_id, desired_id, seq, route)
    return status
