"""Frozen copy of firmware/outbox.py as it was before the v2 layout (commit 947be03): the
migration test builds stores with it, so the firmware's own copy can never drift unnoticed.

The outbox: a persistent, crash-safe log of records waiting for delivery (flash, LittleFS).

It owns every file under its root directory:

    s<boot:08x><part:04x>.seg   segments: append-only framed records, oldest name first (~4 KB)
    k/k<gen:x>_<S><message_id>  ack markers: empty files, one per resolution since the checkpoint
    state.json                  checkpoint, always replaced by write-temp-then-rename

Segment frame: 0xA5, u16 LE payload length, payload, u32 LE CRC-32 of (magic + length +
payload). The payload is JSON [message_id, kind, source, value, t, desired_id, report_status]
(JSON keeps `source` an int or a str). A reader stops at a frame whose length or CRC is wrong
and resynchronises on the next valid frame, so a torn tail after power loss is dropped (and
logged) and never parsed as a record, and garbage in the middle never hides the intact records
after it. Each open starts a new segment, so nothing is ever appended after a torn tail.

message_id = "<boot hex>-<seq hex>" (at most 17 chars of [0-9a-f-]); a new (or wiped) outbox
starts its boot counter at a random value so an erased board never repeats old ids. The boot
counter is persisted once per open (state.json, before the first id is issued); seq counts in
RAM, so there is no write per id. Ids are ordered like the log, which lets an ack find its record by
streaming from the head. The newest segment is never deleted: its name carries the last boot
that handed out ids, so even a lost state.json cannot make ids repeat.

A resolution (S = D delivered, X dead letter, P dropped, E expired) is one empty marker file,
durable when delivered()/dead_letter() returns (on LittleFS a metadata commit, no data block
rewritten). state.json holds the boot counter, the head (first unresolved frame: segment,
offset), the resolved ids beyond the head (acks out of order; bounded by the uplink's
in-flight window), the stats counters and the marker generation. Every _CKPT_ACKS
resolutions, and on compact(), the head goes into a new state.json and that generation's
markers are deleted; compaction then deletes segments wholly before the head. RAM holds no
records: pending(), the acks and the open scan stream frames from flash through one
preallocated buffer, so RAM stays flat with thousands of records pending.

Overflow: at most max_records records are pending. Appending one more first drops the oldest
pending sensor reading (a record without desired_id and report_status); only when every pending
record is a command report is the oldest report dropped. Dropped records count in
stats()["dropped"] (persisted).

TTL: with ttl_s set and the wall clock set, pending() resolves records whose event time t is
older than now - ttl_s as expired (stats()["expired"]) instead of returning them. Records with
t <= 0 (clock was unset) never expire.

A corrupt or missing state.json is logged as an error and rebuilt from the files: the boot
counter continues after the newest segment, markers of every generation are replayed, and
every intact record they do not resolve is pending again (possible re-delivery, which the
cloud's idempotency absorbs; never silent loss).
"""
import json
import os
import struct
from binascii import crc32

from micropython import const

from firmware import clock, log

_TAG = "outbox"
_MAGIC = const(0xA5)
_HDR = const(3)
_MAX_PAYLOAD = const(1024)
_SEG_BYTES = const(4096)  # one LittleFS block: a segment is deleted as a whole
_CKPT_ACKS = const(64)
_STATE = "state.json"
_STATUS_NAMES = {"D": "delivered", "X": "dead", "P": "dropped", "E": "expired"}


class OutboxError(Exception):
    pass


class Record:
    __slots__ = ("message_id", "kind", "source", "value", "t", "desired_id", "report_status")

    def __init__(self, message_id, kind, source, value, t, desired_id=None, report_status=None):
        self.message_id = message_id
        self.kind = kind
        self.source = source
        self.value = value
        self.t = t
        self.desired_id = desired_id
        self.report_status = report_status

    def __repr__(self):
        return "Record(%s %s %r=%r t=%d)" % (self.message_id, self.kind, self.source,
                                             self.value, self.t)


def _key(mid):
    # message_id -> (boot, seq), or None for anything that is not one of ours
    if not isinstance(mid, str) or len(mid) > 40:
        return None
    parts = mid.split("-")
    if len(parts) != 2:
        return None
    try:
        return (int(parts[0], 16), int(parts[1], 16))
    except ValueError:
        return None


def _frame(payload):
    head = struct.pack("<BH", _MAGIC, len(payload))
    return head + payload + struct.pack("<I", crc32(payload, crc32(head)))


def _fresh_boot():
    """A random starting boot counter for a brand-new (or wiped) outbox. A board whose flash
    was erased must not hand out the ids it used before: the cloud would call them conflicts
    (Realer 409) and the readings would be dead-lettered. 31 random bits leave room for 2**31
    boots before the 8-hex-digit segment names would wrap."""
    return (int.from_bytes(os.urandom(4), "big") & 0x7FFFFFFF) | 0x100


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


class Outbox:
    def __init__(self, root: str, max_records: int = 2000, ttl_s=None):
        if max_records < 1:
            raise OutboxError("max_records must be >= 1")
        self.root = root.rstrip("/") or "/"
        self.max_records = max_records
        self.ttl_s = ttl_s
        self.now = clock.unix_time  # replaceable (tests); called only when clock.is_set()
        self._buf = bytearray(_HDR + _MAX_PAYLOAD + 4)
        self._mv = memoryview(self._buf)
        self._opening = True
        _mkdirs(self.root + "/k")  # ack markers: their own directory keeps listings short
        try:
            self._open()
        except OSError as e:  # unreadable directory, a file where a directory belongs, ...
            raise OutboxError("cannot open outbox %s: %s" % (self.root, log.describe(e)))

    # ---- paths and files
    def _p(self, name):
        return self.root + "/" + name

    def _segments(self):
        return sorted(n for n in os.listdir(self.root) if n.startswith("s") and
                      n.endswith(".seg") and len(n) == 17 and _is_hex(n[1:13]))

    def _write_state(self):
        st = {"v": 1, "boot": self.boot, "head": [self._hseg, self._hoff], "ackgen": self._gen,
              "acked": ["%x-%x" % k for k in self._acked], "stats": self._stats}
        tmp = self._p("state.tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps(st))
        os.rename(tmp, self._p(_STATE))

    def _markers(self):
        # (generation, status letter, message_id) of every ack marker file
        out = []
        for name in os.listdir(self._p("k")):
            if name.startswith("k") and "_" in name:
                gen, rest = name[1:].split("_", 1)
                try:
                    out.append((int(gen, 16), rest[:1], rest[1:]))
                except ValueError:
                    log.error(_TAG, "stray file %s ignored", name)
        return out

    def _remove_markers(self, keep_gen):
        # markers already merged into state.json, and a state.tmp left by a crash
        for name in os.listdir(self._p("k")):
            if not name.startswith("k%x_" % keep_gen):
                os.remove(self._p("k/" + name))
        if _size(self._p("state.tmp")) >= 0:
            os.remove(self._p("state.tmp"))

    # ---- open: state, ack replay, boot bump, pending scan
    def _open(self):
        segs = self._segments()
        st = self._read_state()
        seg_boot = int(segs[-1][1:9], 16) if segs else 0
        self._stats = {"delivered": 0, "dead": 0, "dropped": 0, "expired": 0}
        self._acked = {}
        if st is None:
            self.boot = seg_boot if segs else _fresh_boot()
            self._hseg, self._hoff = (segs[0] if segs else ""), 0
            self._gen = -1  # replay the markers of every generation
        else:
            self.boot = max(st["boot"], seg_boot)
            self._hseg, self._hoff = st["head"]
            for mid in st["acked"]:
                k = _key(mid)
                if k:
                    self._acked[k] = 0
            self._stats = st["stats"]
            self._gen = st["ackgen"]
        top = self._gen
        for gen, status, mid in self._markers():
            top = max(top, gen)
            k = _key(mid)
            status = _STATUS_NAMES.get(status)
            if (self._gen < 0 or gen == self._gen) and k and status and k not in self._acked:
                self._acked[k] = 0
                self._stats[status] += 1
        self._gen = max(top, 0)
        self.boot += 1
        self._seq = 0
        self._part = 0
        self._active = None  # current segment name; None until the first append of this boot
        self._gen += 1
        self._nacks = 0
        self._write_state()  # boot counter durable before any id of this boot is handed out
        self._remove_markers(self._gen)
        # count pending, find the newest id, move the head past resolved frames
        self._count = 0
        self._last = None
        self._head_key = None
        head: list = [self._hseg, self._hoff]

        def count(seg, off, rec):
            k = _key(rec[0])
            self._last = k
            if k not in self._acked:
                if self._head_key is None:
                    self._head_key = k
                    head[0], head[1] = seg, off
                self._count += 1

        self._records(self._hseg, self._hoff, count)
        self._opening = False
        if self._head_key is None:
            self._acked = {}
            self._hseg, self._hoff = self._empty_head()
        else:
            self._hseg, self._hoff = head
            self._drop_acked_before(self._head_key)

    def _read_state(self):
        try:
            with open(self._p(_STATE)) as f:
                st = json.loads(f.read())
            if (not isinstance(st, dict) or st.get("v") != 1 or not isinstance(st["boot"], int)
                    or not isinstance(st["head"], list) or not isinstance(st["ackgen"], int)
                    or not isinstance(st["acked"], list) or not isinstance(st["stats"], dict)):
                raise ValueError("bad fields")
            st["head"][0] + ""
            st["head"][1] + 0
            st["stats"] = {n: int(st["stats"].get(n, 0)) for n in _STATUS_NAMES.values()}
            return st
        except OSError:
            if self._segments() or os.listdir(self._p("k")):
                log.error(_TAG, "state.json missing in %s: rebuilding from segments", self.root)
            return None
        except Exception as e:  # any shape of garbage: rebuild, never crash, keep the records
            log.error(_TAG, "state.json corrupt in %s (%s): rebuilding from segments; "
                      "resolved records may be delivered again", self.root, log.describe(e))
            return None

    def _drop_acked_before(self, k):
        for a in [a for a in self._acked if a < k]:
            del self._acked[a]

    # ---- frame streaming (callbacks, not generators: every file is closed when a scan stops)
    def _frames_in(self, name, off, fn):
        # fn(offset, payload bytes) for every valid frame from off on; True from fn stops.
        path = self._p(name)
        size = _size(path)
        if size < 0:
            return False
        buf, mv = self._buf, self._mv
        with open(path, "rb") as f:
            bad = -1
            while off + _HDR + 4 <= size:
                f.seek(off)
                f.readinto(mv[:_HDR])
                n = buf[1] | (buf[2] << 8)
                ok = False
                if buf[0] == _MAGIC and n <= _MAX_PAYLOAD and off + _HDR + n + 4 <= size:
                    f.readinto(mv[_HDR:_HDR + n + 4])
                    crc = crc32(mv[_HDR:_HDR + n], crc32(mv[:_HDR]))
                    ok = crc == struct.unpack_from("<I", buf, _HDR + n)[0]
                if ok:
                    if bad >= 0 and self._opening:
                        log.error(_TAG, "%s: skipped %d corrupt bytes at %d", name, off - bad, bad)
                    bad = -1
                    if fn(off, bytes(mv[_HDR:_HDR + n])):
                        return True
                    off += _HDR + n + 4
                else:
                    if bad < 0:
                        bad = off
                    off += 1
            if (bad >= 0 or off < size) and self._opening:
                at = bad if bad >= 0 else off
                log.warn(_TAG, "%s: dropped torn tail at %d (%d bytes)", name, at, size - at)
        return False

    def _records(self, seg, off, fn):
        # fn(segment, offset, record list) from (seg, off) to the end of the log; True stops.
        def each(start, payload):
            try:
                rec = json.loads(payload)
                if not isinstance(rec, list) or len(rec) != 7 or _key(rec[0]) is None:
                    raise ValueError("shape")
            except ValueError:
                if self._opening:
                    log.error(_TAG, "%s@%d: frame with valid CRC but bad record, skipped",
                              name, start)
                return False
            return fn(name, start, rec)

        for name in self._segments():
            if name >= seg and self._frames_in(name, off if name == seg else 0, each):
                return True
        return False

    # ---- public API
    def append(self, kind: str, source, value: str, t: int, desired_id=None,
               report_status=None) -> str:
        if not isinstance(kind, str) or not isinstance(value, str) or not isinstance(t, int):
            raise OutboxError("kind and value must be str, t int")
        if not isinstance(source, (int, str)):
            raise OutboxError("source must be int or str")
        if self._count >= self.max_records:
            self._drop_one()
        mid = "%x-%x" % (self.boot, self._seq)
        payload = json.dumps([mid, kind, source, value, t, desired_id, report_status]).encode()
        if len(payload) > _MAX_PAYLOAD:
            raise OutboxError("record too large (%d bytes)" % len(payload))
        if self._active is None or _size(self._p(self._active)) >= _SEG_BYTES:
            self._active = "s%08x%04x.seg" % (self.boot, self._part)
            self._part += 1
            if self._head_key is None:
                self._hseg, self._hoff = self._active, 0
        self._seq += 1  # consumed even if the write fails: an id is never handed out twice
        try:
            with open(self._p(self._active), "ab") as f:
                f.write(_frame(payload))
        except OSError as e:
            self._active = None  # never append after a possibly torn frame
            raise OutboxError("append failed: %s" % log.describe(e))
        k = _key(mid)
        self._last = k
        self._count += 1
        if self._head_key is None:
            self._head_key = k
            self._hseg = self._active
            self._hoff = _size(self._p(self._active)) - len(payload) - _HDR - 4
        return mid

    def pending(self, limit: int = 10) -> list:
        out: list = []
        if self._head_key is None or limit <= 0:
            return out
        cutoff = None
        if self.ttl_s:
            try:
                cutoff = self.now() - self.ttl_s
            except clock.ClockUnset:  # no wall time, no expiry
                pass
        expired = []

        def take(_, __, rec):
            if _key(rec[0]) in self._acked:
                return False
            if cutoff is not None and isinstance(rec[4], int) and 0 < rec[4] < cutoff:
                expired.append(rec[0])
                return False
            out.append(Record(*rec))
            return len(out) >= limit

        self._records(self._hseg, self._hoff, take)
        for mid in expired:  # after the scan: resolving moves the head the scan stands on
            self._resolve(mid, "E")
        return out

    def delivered(self, message_id: str) -> None:
        self._resolve(message_id, "D")

    def dead_letter(self, message_id: str, reason: str = "") -> None:
        if self._resolve(message_id, "X"):
            log.warn(_TAG, "dead letter %s: %s", message_id, reason)

    def pending_count(self) -> int:
        return self._count

    def stats(self) -> dict:
        s = dict(self._stats)
        s["pending"] = self._count
        return s

    def compact(self) -> None:
        self._checkpoint()
        if self._head_key is None:
            self._active = None  # fully resolved: let the next append start a fresh segment
            self._hseg, self._hoff = self._empty_head()
            self._write_state()
        segs = self._segments()
        for name in segs[:-1]:  # the newest stays: its name carries the boot counter
            if name < self._hseg and name != self._active:
                os.remove(self._p(name))

    # ---- internals
    def _resolve(self, mid, status):
        k = _key(mid)
        if (k is None or self._head_key is None or k < self._head_key or k in self._acked
                or k > self._last):
            return False
        found = []

        def look(_, __, rec):
            rk = _key(rec[0])
            if rk == k:
                found.append(rk)
            return rk >= k

        self._records(self._hseg, self._hoff, look)
        if not found:
            return False
        self._write_ack(status, mid)
        self._mark(k, status)
        return True

    def _write_ack(self, status, mid):
        # an empty file: on LittleFS one metadata commit, no data block to copy and erase
        try:
            with open(self._p("k/k%x_%s%s" % (self._gen, status, mid)), "w"):
                pass
        except OSError as e:
            raise OutboxError("ack failed: %s" % log.describe(e))

    def _mark(self, k, status):
        self._acked[k] = 0
        self._stats[_STATUS_NAMES[status]] += 1
        self._count -= 1
        self._nacks += 1
        if k == self._head_key:
            self._advance()
        if self._nacks >= _CKPT_ACKS:
            self.compact()

    def _advance(self):
        # move the head to the first unresolved frame; forget acks it passes
        self._head_key = None
        head = list(self._empty_head())

        def step(seg, off, rec):
            k = _key(rec[0])
            if k in self._acked:
                del self._acked[k]
                return False
            self._head_key = k
            head[0], head[1] = seg, off
            return True

        self._records(self._hseg, self._hoff, step)
        if self._head_key is None:
            self._acked = {}
        self._hseg, self._hoff = head

    def _empty_head(self):
        # where the next record will go: nothing pending, and no record is ever before it
        if self._active is None:
            return "s%08x%04x.seg" % (self.boot, self._part), 0
        return self._active, _size(self._p(self._active))

    def _checkpoint(self):
        self._gen += 1
        self._write_state()
        self._nacks = 0
        self._remove_markers(self._gen)

    def _drop_one(self):
        victim: list = []

        def pick(_, __, rec):
            if _key(rec[0]) in self._acked:
                return False
            if rec[5] is None and rec[6] is None:  # a sensor reading: the first choice
                victim[:] = [rec[0]]
                return True
            if not victim:
                victim.append(rec[0])  # the oldest report, if no reading is pending
            return False

        self._records(self._hseg, self._hoff, pick)
        if victim:
            log.warn(_TAG, "full (%d): dropping %s", self.max_records, victim[0])
            self._resolve(victim[0], "P")


def _is_hex(text):
    try:
        int(text, 16)
        return True
    except ValueError:
        return False


def _mkdirs(path):
    parts = path.split("/")
    cur = ""
    for i, p in enumerate(parts):
        if not p:
            if i == 0:
                cur = ""
            continue
        cur = cur + "/" + p if (cur or path.startswith("/")) else p
        try:
            os.mkdir(cur)
        except OSError:
            pass
