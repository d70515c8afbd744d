"""The outbox: a persistent, crash-safe queue of records waiting for delivery (flash, LittleFS).

Layout v3 (bench/outbox-wear.md has the measurements behind it). Every durable operation is
one small LittleFS metadata commit, never a data-block copy. The sizes below are for the
board's mount (boot.py: mtime off, program size 32: a commit carries 24 bytes of its own, so
up to 8 bytes of file make a 32-byte commit, up to 40 a 64-byte one):

    b<E:08x>_<B:06x>/<s:x>  record slots: record number n = B * 28 + s is slot s of bucket B
    a0, a1                  ack index, written alternately: head; only when some exist, how
                            many slots are marked resolved and the records resolved out of order
    m0, m1                  meta, written alternately: version, dead/dropped/expired/damaged
                            counts, delivered base, epoch E, lowest and top bucket, boot counter,
                            fill (slots of the top bucket below the queue's end)

- A record is a small file (typically 20-28 bytes: one 64-byte commit) OVERWRITTEN into an
  existing slot. Creating a file costs two commits and mkdir an erase, so slots are reused: a
  bucket whose 28 records are all resolved is renamed to the next bucket number (one commit
  per 28 records) instead of being deleted and made anew. 28 slots: a new bucket's first lap
  (28 creates of 128 bytes) fits in one block, so it costs one erase, not two. Buckets form
  one contiguous range low..top; the space a drained backlog used stays for the next one
  (compact() gives it back). One bucket is one metadata pair (two blocks); capacity() caps
  max_records to what the filesystem holds.
- Record numbers n are dense: the next append takes the next slot; a failed append retries the
  same slot (its id was never handed out). message_id = "<boot hex>-<n hex>": n makes it
  unique, the boot counter (persisted in the meta file by the first append of each boot,
  before any id of that boot is handed out) tells the boots apart. The epoch E, the first
  boot counter, is random at creation (a wiped board never repeats its ids) and kept in the
  bucket names; an id whose boot is below E is a v1 id. A slot keeps the low 16 bits of its
  boot. Ids are ordered like the queue.
- A resolution (delivered / dead / dropped / expired) rewrites the ack index: 7 bytes, one
  32-byte commit, no file created or deleted, no record read for an id of this store. The
  delivered count is not written: stats() derives it from head, the out-of-order
  resolutions and the other counts (a lost meta file makes it count every resolution). A record
  resolved further out of order than the index holds (overflow drops behind a stuck report)
  gets a resolution marker written over its slot first. Dead/dropped/expired counts go to the
  meta file right after (a power cut in between undercounts by one, never loses a record).
  resolve() applies a whole send result with one index write (and one meta write when any is
  dead): before it all of them are pending, after it all are resolved. A result with more
  gaps than the index holds is resolved record by record, as are ids carried over from v1.
- One delivery that leaves nothing pending (one reading per request) writes nothing: the next
  append's slot carries it (flag _F_AFTER: every record before this one is resolved), so a
  record costs one commit, not two. Until then it is in RAM only: a power cut or reset sends
  that one record again (at-least-once; never a loss). Opening reads the last slot for the
  flag (the one before it when the last one rotted); an append that would bury a flagged slot
  under an unflagged one writes the index first. flush() writes it (before a deep sleep); a
  bucket rename and compact() flush first.
- a0/a1 and m0/m1 each end in a CRC and carry a generation byte: the newer valid one wins, so
  a write torn on a filesystem without atomic commits (host tests) falls back to the state
  before the torn call, which had returned.

Slot file: flags u8 (_F_BIGT, _F_AFTER, _F_DONE), n u32 LE, t u32 LE, boot u16 LE, JSON
[kind, source, value, desired_id, report_status, message_id] (kind as a small int for the
usual kinds; trailing nulls and message_id left out unless the record came from v1), CRC-32
low 16 bits LE. Its size has the parity of its bucket number (trailing JSON spaces pad it), and
a bucket is renamed only to a number of the other parity, so the slots of its previous lap never
look fresh. Size & 2 is set when the slot carries _F_AFTER (and may be in slots written before
that flag existed). A slot whose n is not its position is stale; one whose CRC or shape is
wrong is reported, skipped and resolved, and the records around it stay.

Open (boot) writes nothing (bench/outbox-wear.md: at most 2x the live log read at 1k pending):
it reads m0/m1 and a0/a1 and finds where the queue ends with at most four slot opens (a binary
search in the top bucket; a listing of it walked LittleFS's log twice per slot, 60 KB at 1k
pending) and, from fill _HALF on, one lookup of the bucket above: an append writes the meta
file before slot _HALF of every bucket (not at the bucket's mkdir or rename: as many writes),
so its fill leaves at most 15 places. A meta file of the previous code (written after each
mkdir / rename, no fill) is searched over the whole top bucket, and one found full looks one
bucket up. The low bucket is looked up only when the top one moved or the index is lost; a
rename or compact() finds it gone after a cut. The last slot is read when the index has records
pending and its size says it may carry a delivery. The root is listed only when the meta file
is lost or says a v1 conversion left files behind. pending() reads slots from head on. RAM
holds the counters, one buffer and the out-of-order list.

A store in the v1 layout (segments, state.json, k/ markers; firmware/outbox_v1.py) is
converted on the first open: every pending record keeps its message_id and the stats carry
over; the meta file is the commit point, so a conversion cut short is done again (the v1
files go after it; a meta flag says so until this boot's meta write).

Overflow: at most max_records records are pending. Appending one more first drops the oldest
pending sensor reading (a record without desired_id and report_status); only when every pending
record is a command report is the oldest report dropped (stats()["dropped"]).

TTL: with ttl_s set and the wall clock set, pending() resolves records whose event time t is
older than now - ttl_s as expired (stats()["expired"]) instead of returning them. Records with
t <= 0 (clock was unset) never expire, nor do those pending() is told to skip (in flight).

A corrupt or missing ack index is logged as an error: every intact record from the lowest
bucket on is pending again (possible re-delivery, which the cloud's idempotency absorbs; never
silent loss). A corrupt or missing meta file loses the dead/dropped/expired counts (logged);
the buckets are then found by listing the outbox directory.
"""
import json
import os
import struct
from binascii import crc32

from micropython import const

from firmware import clock, log

_TAG = "outbox"
_G = const(28)  # slots per bucket: their first lap (28 creates, 128 bytes each) fits one block
SLOTS_PER_BUCKET = _G
_MAX_PAYLOAD = const(1024)
# a file read takes this much first: a record is usually 20-40 bytes (f.read(256) made a
# 256-byte piece per record read: bench/mqtt-throughput.md)
_FIRST_READ = const(64)
_CAP_CHECK = const(64)  # pending records from which max_records is checked against the space
_VERSION = const(3)
_F_BIGT = const(1)  # t did not fit u32: it is the JSON list's 7th item
_F_DONE = const(0x80)  # a resolution marker written over a record resolved far out of order
_F_AFTER = const(2)  # written when every record before it was resolved: carries a deferred ack
_LIST_SPAN = const(64)  # buckets from which _fresh lists the top one (bench/outbox-wear.md)
_OO_MAX = const(12)  # out-of-order resolutions kept in the index (one 64-byte commit)
# generation, version (+ _M_V1LEFT), dead, dropped, expired, damaged, delivered base, epoch,
# top bucket, top - low, boot, fill (slots of the top bucket below the end when written; the
# previous code's 36 bytes have none): 37 bytes, so with its CRC one 64-byte commit (mtime off)
_META = "<BBIIIIiIiHIB"
_META_LEN = const(37)
_HALF = const(14)  # an append writes the meta file before slot _HALF of each bucket
_M_V1LEFT = const(0x80)  # converted from v1; its files may still be there
_IDX = "<BI"  # generation, head (+ marks u16, out-of-order u16 each when there are any)
_KINDS = ("sensor", "command", "reading", "report", "state")
_NONES = ((None, None, None), (None, None), (None,))  # fills a short record's list to 6
_STATUS_NAMES = {"D": "delivered", "X": "dead", "P": "dropped", "E": "expired"}


def _read_file(path):
    # bytes of a small file (at most _MAX_PAYLOAD + 16), or None when it does not exist or
    # is not a file. Read in a small first piece, not into a resident 1K buffer: that
    # cost every configuration 1K of heap for good (bench/memory.md, the merged tree)
    try:
        with open(path, "rb") as f:
            data = f.read(_FIRST_READ)
            if len(data) == _FIRST_READ:  # a large one: the rest, up to the bound
                data += f.read(_MAX_PAYLOAD + 16 - _FIRST_READ)
    except OSError:
        return None
    return data


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


def id_key(mid):
    """message_id -> (epoch or v1 boot, n or v1 seq), or None for anything that is not one of
    ours (firmware/outbox_nor.py reads its ids with it too)."""
    if not isinstance(mid, str) or len(mid) > 40:
        return None
    parts = mid.split("-")
    if len(parts) != 2:
        return None
    try:
        return (int(parts[0], 16), int(parts[1], 16))
    except ValueError:
        return None


def _number(mid, epoch, boot):
    # the record number of an id of this store ("<boot hex>-<n hex>", boot from epoch on), or
    # -1; like _key without its list and tuple (pending() parses every id in flight per call)
    i = mid.find("-") if isinstance(mid, str) and len(mid) <= 40 else -1
    if i <= 0:
        return -1
    try:
        return int(mid[i + 1:], 16) if epoch <= int(mid[:i], 16) <= boot else -1
    except ValueError:
        return -1


def _fresh_epoch():
    """A random epoch for a brand-new (or wiped) outbox. A board whose flash was erased must not
    hand out the ids it used before: the cloud would call them conflicts (Realer 409) and the
    readings would be dead-lettered."""
    return (int.from_bytes(os.urandom(4), "big") & 0x7FFFFFFF) | 0x100


def _crc16(data):
    return crc32(data) & 0xFFFF


def _seal(body):
    return body + struct.pack("<H", _crc16(body))


def _unseal(data):
    # the body of a sealed file, or None when it is short or its CRC is wrong
    if len(data) < 3:
        return None
    body = data[:-2]  # one copy, not two
    return body if data[-2] | data[-1] << 8 == _crc16(body) else None


def _parity(body, n, m=4):
    # pad (JSON allows trailing spaces) so the sealed size has the parity of n's bucket, and
    # (m=4, records) size & 2 set only when the slot may carry _F_AFTER: opening reads the last
    # slot only then (slots of the v3 code before _F_AFTER have either, so a set bit is checked
    # in the file). A marker (m=2) stays at most 8 bytes: one 32-byte commit
    return body + b"   "[:(n // _G % 2 + (body[0] & _F_AFTER) - len(body) - 2) % m]


def _newer(a, b):
    return ((a - b) & 0xFF) < 128


class Outbox:
    def __init__(self, root: str, max_records: int = 2000, ttl_s=None):
        if max_records < 1:
            raise OutboxError("max_records must be >= 1")
        self.root = root.rstrip("/") or "/"
        self.max_records = max_records
        self.ttl_s = ttl_s
        self.now = clock.unix_time  # replaceable (tests); called only when clock.is_set()
        self.epoch = self.boot = 0
        self._igen = self._mgen = 0  # generation of the newer a/m file
        self._capped = False  # max_records checked against the filesystem's size
        self._bpath: tuple = (-1, 0, "")  # (bucket, epoch, its path + "/") of the last slot
        self._low = self._top = -1  # lowest and top bucket numbers (-1: none)
        self._end = 0  # the next record number
        try:
            _mkdirs(self.root)
            self._open()
        except OSError as e:  # unreadable directory, a file where a directory belongs, ...
            raise OutboxError("cannot open outbox %s: %s" % (self.root, log.describe(e)))

    # ---- paths and small files
    def _p(self, name):
        return self.root + "/" + name

    def _bucket(self, b):
        return self._p("b%08x_%06x" % (self.epoch, b))  # sorted like the queue

    def _slot(self, n):
        b = n // _G
        c = self._bpath
        if c[0] != b or c[1] != self.epoch:
            c = self._bpath = (b, self.epoch, self._bucket(b) + "/")
        return c[2] + "%x" % (n % _G)

    def _read_pair(self, name):
        # (generation, body) of the newer valid one of name0/name1, or None; and whether any
        # of the two exists
        best = None
        seen = False
        for i in (0, 1):
            data = _read_file(self._p("%s%d" % (name, i)))
            if data is None:
                continue
            seen = True
            body = _unseal(data)
            if body is None:
                continue
            if best is None or _newer(body[0], best[0]):
                best = (body[0], body)
        return best, seen

    def _write_pair(self, name, gen, body):
        # body[0] is the generation; generation g goes to file g % 2, the other one stays
        with open(self._p("%s%d" % (name, gen & 1)), "wb") as f:
            f.write(_seal(body))

    def _write_index(self, head, marks, oo):
        # 5 bytes + CRC in the usual case (nothing resolved out of order): with mtime off,
        # one 32-byte commit
        gen = (self._igen + 1) & 0xFF
        body = struct.pack(_IDX, gen, head)
        if marks or oo:
            body += struct.pack("<H", marks)
            for n in oo:
                body += struct.pack("<H", n - head)
        self._write_pair("a", gen, body)
        self._igen = gen
        self._soft = False

    def _write_meta(self):
        if self._converting:  # the meta file is the conversion's commit point
            return
        gen = (self._mgen + 1) & 0xFF
        s = self._stats
        span = self._top - self._low if self._low >= 0 else 0xFFFF
        self._write_pair("m", gen, struct.pack(
            _META, gen, _VERSION | (_M_V1LEFT if self._v1left else 0), s["dead"], s["dropped"],
            s["expired"], self._bad, self._base, self.epoch, self._top, span, self.boot,
            min(max(self._end - self._top * _G, 0), _G) if self._top >= 0 else 0))
        self._mgen = gen
        self._mdirty = False

    # ---- open
    def _open(self):
        self._stats = {"dead": 0, "dropped": 0, "expired": 0}
        self._bad = 0  # damaged records skipped
        self._base = 0  # delivered = resolved record numbers - base - the other resolutions
        self._igen = self._mgen = 0
        self._converting = self._v1left = False
        self._mdirty = False  # the meta file lacks this boot's counter (or a v1 flag to clear)
        self._oo: list = []  # record numbers resolved beyond head, ascending
        self._marks = 0  # slots marked resolved beyond head (0: acks need no read)
        self._soft = False  # head is ahead of the index: the last slot's flag or RAM has it
        meta, meta_seen = self._read_pair("m")
        if meta is None and _v1_present(self.root):
            _migrate_v1(self)
            meta, meta_seen = self._read_pair("m")
        fill = None  # unknown: a meta file of the previous code, written at each rotation
        clear = False
        if meta is not None and len(meta[1]) in (_META_LEN, _META_LEN - 1) and (
                meta[1][1] & 0x7F == _VERSION):
            self._mgen = meta[0]
            if len(meta[1]) == _META_LEN:
                fill = meta[1][-1]
            (_, version, dead, dropped, expired, self._bad, self._base, self.epoch, self._top,
             span, boot) = struct.unpack_from(_META[:-1], meta[1])
            if version & _M_V1LEFT:  # a conversion cut short after its commit
                _v1_remove(self.root)
                clear = True  # the flag: else every open would look for v1 files again
            self._low = self._top - span if span != 0xFFFF and self._top >= 0 else -1
            self._stats.update(dead=dead, dropped=dropped, expired=expired)
            # the meta file may lag one bucket behind a cut (written after mkdir / rename /
            # rmdir): _find_end looks one bucket up when the top one is full, a rename finds
            # a low bucket gone, and only an open without index looks the low one up
            self.boot = boot + 1
        else:
            self._scan_buckets()  # lists the root: only when the meta file is lost
            if meta_seen or self._top >= 0:
                log.error(_TAG, "meta missing or corrupt in %s: dead/dropped/expired counts "
                          "restart at 0", self.root)
            # above every earlier boot, and pending records keep their ids (records carry
            # their boot's low 16 bits) unless the store saw 65535 boots
            self.boot = self.epoch + 0xFFFF if self._top >= 0 else self.epoch
        last = self._find_end(fill)
        idx, idx_seen = self._read_pair("a")
        ln = len(idx[1]) if idx is not None else 0
        indexed = ln == 5 or (ln >= 7 and ln % 2)
        if not indexed:  # every record from the low bucket
            while 0 <= self._low < self._top and not _is_dir(self._bucket(self._low)):
                self._low += 1
        self.head = self._low * _G if self._top >= 0 else self._end
        if indexed:
            self._igen = idx[0]
            head = struct.unpack_from(_IDX, idx[1])[1]
            if ln > 5:
                self._marks = struct.unpack_from("<H", idx[1], 5)[0]
            if head > self.head:
                self.head = min(head, self._end)
            for i in range(7, ln, 2):
                n = head + struct.unpack_from("<H", idx[1], i)[0]
                if self.head < n < self._end:
                    self._oo.append(n)
        elif self._top < 0 and not idx_seen:
            self._write_index(self.head, 0, [])  # a new store
        else:
            if self._top >= 0:
                self._marks = 0xFFFF  # unknown: check slots while advancing
            if idx_seen or self._top >= 0:
                log.error(_TAG, "ack index missing or corrupt in %s: every intact record is "
                          "pending again; resolved records may be delivered again", self.root)
        n = self._end - 1
        if self.head < n and last & 2:
            flag = self._after(n)
            if flag is None and self.head < n - 1:  # the last slot rotted: the one before it
                n -= 1
                flag = self._after(n)
            if flag:  # an append carried a delivery the index does not have
                self.head = n  # every record before it is resolved
                self._oo, self._marks, self._soft = [], 0, True
        self._count = max(0, self._end - self.head - len(self._oo) - (
            self._marks if self._marks < 0xFFFF else 0))
        # the boot counter is durable before this boot hands out an id: the first append
        # writes it (a boot that appends nothing writes nothing: a boot loop wears no flash)
        if clear:
            self._write_meta()
        else:
            self._mdirty = True

    def _scan_buckets(self):
        # low..top bucket numbers and the epoch, from the bucket names (no file is opened)
        epoch = -1
        low = top = -1
        for name in _names(self.root):
            if not (name.startswith("b") and len(name) > 10 and name[9] == "_"):
                continue
            try:
                e, b = int(name[1:9], 16), int(name[10:], 16)
            except ValueError:
                continue
            if epoch >= 0 and e != epoch:
                log.error(_TAG, "bucket %s of another epoch ignored", name)
                if e < epoch:
                    continue
                low = top = -1
            epoch = e
            low = b if low < 0 else min(low, b)
            top = max(top, b)
        self.epoch = epoch if epoch >= 0 else _fresh_epoch()
        self._low, self._top = low, top

    def _find_end(self, fill=None):
        # the queue ends after the last slot of the top bucket written in this lap. Every slot
        # file written under bucket number B has a size of B's parity, and a bucket is renamed
        # only to a number of the other parity, so the slots left from its previous lap never
        # look fresh. The meta file says how many slots of the top bucket were below the end
        # (fill) and is written again before slot _HALF of a bucket is: so the end is within
        # 15 slots, found in four slot opens (and one directory lookup from _HALF on). A meta
        # file of the previous code (written at each rotation, after mkdir / rename) leaves 29
        # places, and a top bucket found full makes it look one bucket up.
        # Returns the last slot's size (2 when it is unknown: read it then).
        b = self._top
        self._end = max(b, 0) * _G
        last = 2
        lo, hi = 0, _G
        if fill is not None:
            if b < 0 or fill >= _HALF:
                if _is_dir(self._bucket(b + 1)):
                    b = _moved(self, b + 1)
                    fill, hi = 0, _HALF
                elif b < 0:
                    return last
            else:
                hi = _HALF
            lo = max(fill - 1, 0)  # the search opens the last slot: its size is needed
        while True:
            if b >= 0:
                lo, size = _fresh(self._bucket(b) + "/", b % 2, lo, hi,
                                  self._top - self._low >= _LIST_SPAN)
                self._end = b * _G + lo
                last = size or last
                if lo == hi < _G:  # at the fill's bound: the meta file read may be the older
                    hi = _G  # one (the newer rotted), so the search goes on
                    continue
            if lo < _G or not _is_dir(self._bucket(b + 1)):
                return last
            b = _moved(self, b + 1)
            lo, hi = 0, _G

    # ---- records
    def _encode(self, n, mid, kind, source, value, t, desired_id, report_status):
        k = _KINDS.index(kind) if kind in _KINDS else kind
        fields = [k, source, value, desired_id, report_status, mid]
        flags = _F_AFTER if self._soft and self.head == n else 0
        if not 0 <= t <= 0xFFFFFFFF:
            fields.append(t)
            flags |= _F_BIGT
            t = 0
        while fields[-1] is None:
            fields.pop()
        body = json.dumps(fields, separators=(",", ":")).encode()
        return _seal(_parity(struct.pack("<BIIH", flags, n, t, self.boot & 0xFFFF) + body, n))

    def _read(self, n):
        # the Record in slot n; False for a resolution marker; None when the slot is missing,
        # damaged or stale
        data = _read_file(self._slot(n))
        body = _unseal(data) if data else None
        try:
            if body is None or struct.unpack_from("<I", body, 1)[0] != n:
                raise ValueError("crc or position")
            if body[0] & _F_DONE:
                return False
            flags, _, t, b16 = struct.unpack_from("<BIIH", body)
            f = json.loads(body[11:])
            if not isinstance(f, list) or not 3 <= len(f) <= 7:
                raise ValueError("shape")
            if len(f) < 6:
                f.extend(_NONES[len(f) - 3])  # trailing nulls are left out on flash
            if flags & _F_BIGT:
                t = f[6]
            kind = _KINDS[f[0]] if isinstance(f[0], int) else f[0]
            mid = f[5]
            if mid is None:  # the boot that appended it: the latest one with these low 16 bits
                mid = "%x-%x" % (self.boot - ((self.boot - b16) & 0xFFFF), n)
            elif id_key(mid) is None:  # an id carried over from v1
                raise ValueError("id")
            if not isinstance(kind, str) or not isinstance(f[2], str):
                raise ValueError("fields")
            return Record(mid, kind, f[1], f[2], t, f[3], f[4])
        except (ValueError, TypeError, IndexError, KeyError):
            log.error(_TAG, "record %d damaged (%s), skipped", n,
                      "missing" if data is None else "%d bytes" % len(data))
            return None

    def _after(self, n):
        # whether slot n holds a record written with _F_AFTER (every record before it
        # resolved); None when it cannot be read
        data = _read_file(self._slot(n))
        body = _unseal(data) if data else None
        if body is None or len(body) < 11 or struct.unpack_from("<I", body, 1)[0] != n:
            return None
        return body[0] & (_F_AFTER | _F_DONE) == _F_AFTER

    def _scan(self, fn):
        # fn(n, Record or None) for every unresolved n from head; True from fn stops
        n = self.head
        while n < self._end:
            if n not in self._oo:
                rec = self._read(n)
                if rec is not False and fn(n, rec):
                    return True
            n += 1
        return False

    # ---- public API
    def append(self, kind: str, source, value: str, t: int, desired_id=None,
               report_status=None) -> str:
        return self._append(kind, source, value, t, desired_id, report_status, None)

    def _append(self, kind, source, value, t, desired_id, report_status, mid):
        if not isinstance(kind, str) or not isinstance(value, str) or not isinstance(t, int):
            raise OutboxError("kind and value must be str, t int")
        if not isinstance(source, (int, str)):
            raise OutboxError("source must be int or str")
        n = self._end
        data = self._encode(n, mid, kind, source, value, t, desired_id, report_status)
        if len(data) > _MAX_PAYLOAD:
            raise OutboxError("record too large (%d bytes)" % len(data))
        if self._count >= _CAP_CHECK and not (self._capped or self._converting):
            # once a boot, and only with a backlog: LittleFS's statvfs walks the whole tree
            self._capped = True
            cap = capacity(self.root)
            if cap < self.max_records:
                log.warn(_TAG, "max_records %d does not fit the filesystem: %d kept at most",
                         self.max_records, cap)
                self.max_records = cap
        if self._count >= self.max_records:
            self._drop_one()
        try:
            if n // _G > self._top:
                self._new_bucket(n // _G)
            elif self._soft and self.head != n:  # this slot would hide the flag of the last one
                self._write_index(self.head, self._marks, self._oo)
            if self._mdirty or n % _G == _HALF:  # this boot's counter; where the queue ends
                self._write_meta()  # within 15 slots (opening's search)
            with open(self._slot(n), "wb") as f:
                f.write(data)
        except OSError as e:  # the slot is taken again by the next append: no id was handed out
            raise OutboxError("append failed: %s" % log.describe(e))
        self._end = n + 1
        self._count += 1
        return mid or "%x-%x" % (self.boot, n)

    def _new_bucket(self, b):
        # reuse the lowest bucket when all its records are resolved (a rename: one commit),
        # else make one (mkdir: LittleFS allocates and erases a metadata pair)
        if self._soft:  # a rename must not take a slot whose delivery is only in RAM
            self._write_index(self.head, self._marks, self._oo)
        if 0 <= self._low < self.head // _G and self._low < self._top and (b - self._low) % 2:
            try:
                os.rename(self._bucket(self._low), self._bucket(b))
            except OSError:
                if _is_dir(self._bucket(self._low)):
                    raise
                self._low += 1  # gone: renamed or removed by a cut before its meta write
                return self._new_bucket(b)
            self._low += 1
        else:
            try:
                os.mkdir(self._bucket(b))
            except OSError:
                if not _is_dir(self._bucket(b)):
                    raise
            if self._low < 0:
                self._low = b
        self._top = b  # the meta file follows before slot _HALF (opening looks one bucket up)

    def pending(self, limit: int = 10, skip=()) -> list:
        """The oldest pending records, at most limit, leaving out those whose message_id is in
        skip (the records of running send attempts). A skipped record of this store is passed
        by its number, its slot not read (the uplink asked again for every record in flight
        on each call: bench/mqtt-throughput.md), and never expired: it may be delivered."""
        out: list = []
        if limit <= 0:
            return out
        cutoff = None
        if self.ttl_s:
            try:
                cutoff = self.now() - self.ttl_s
            except clock.ClockUnset:  # no wall time, no expiry
                pass
        held = set()  # record numbers of skipped ids of this store
        other: list = []  # skipped ids carried over from v1 (or not ours): compared once read
        for mid in skip:
            n = _number(mid, self.epoch, self.boot)
            if n >= 0:
                held.add(n)
            else:
                other.append(mid)
        expired: list = []
        bad: list = []
        skipped = 0
        n = self.head
        while n < self._end and len(out) < limit:
            if n in held:
                skipped += 1
            elif n not in self._oo:
                rec = self._read(n)
                if rec is None:
                    bad.append(n)
                elif rec is False:
                    pass  # a resolution marker
                elif other and rec.message_id in other:
                    skipped += 1
                elif cutoff is not None and isinstance(rec.t, int) and 0 < rec.t < cutoff:
                    expired.append(n)
                else:
                    out.append(rec)
            n += 1
        if n >= self._end and not (skipped and self._marks):
            # the whole queue was looked at: the count is exact now (a skipped slot is not
            # read, so with marked slots about it could be one already resolved)
            self._count = len(out) + len(bad) + len(expired) + skipped
        for n in bad:  # after the scan: resolving moves the head the scan stands on
            self._resolve_n(n, None)
        for n in expired:
            self._resolve_n(n, "E")
        return out

    def delivered(self, message_id: str) -> None:
        self.resolve((message_id,))

    def dead_letter(self, message_id: str, reason: str = "") -> None:
        self.resolve((), ((message_id, reason),))

    def resolve(self, ok=(), dead=()) -> None:
        """One send result: ok ids delivered, dead (id, reason) pairs dead-lettered. The ack
        index is written once for all of them (and the meta file once when any is dead): a
        power cut before that write leaves them all pending, after it all are resolved.
        One delivery that empties the queue is not written at all: the next append (or
        flush()) carries it, so a power cut before that sends this one record again.
        Ids that are unknown or already resolved are ignored, like delivered() does."""
        todo: list = []  # (n, status, id, reason) of records of this store
        seen: list = []
        alone = False  # ids carried over from v1 are found by a scan and resolved one by one
        for mid, status, reason in [(m, "D", "") for m in ok] + [(m, "X", r) for m, r in dead]:
            k = id_key(mid)
            if k is None:
                continue
            n = k[1]
            if not self.epoch <= k[0] <= self.boot:
                n = _find_v1(self, mid)
                alone = alone or n is not None
            if n is not None and self.head <= n < self._end and n not in self._oo and (
                    n not in seen):
                seen.append(n)
                todo.append((n, status, mid, reason))
        if not todo:
            return
        head, marks = self.head, self._marks
        oo = self._oo + seen
        oo.sort()
        if oo[0] == head:
            head, marks = self._advance(head, oo, marks)
        if alone or len(oo) > _OO_MAX or (oo and oo[-1] - head > 0xFFFF):
            # too far out of order for one index: each one on its own (marks slots as needed)
            todo = [t for t in todo if self._resolve_n(t[0], t[1])]
        elif len(todo) == 1 and todo[0][1] == "D" and head == self._end:
            self.head, self._oo, self._marks, self._soft = head, oo, marks, True
            self._count = 0
        else:
            try:
                self._write_index(head, marks, oo)
            except OSError as e:
                raise OutboxError("ack failed: %s" % log.describe(e))
            self.head, self._oo, self._marks = head, oo, marks
            self._count = max(0, self._count - len(todo))
            died = len(todo) - [t[1] for t in todo].count("D")
            if died:
                self._stats["dead"] += died
                self._save_counts()
        for _, status, mid, reason in todo:
            if status == "X":
                log.warn(_TAG, "dead letter %s: %s", mid, reason)

    def flush(self) -> None:
        """Make a delivery that resolve() left for the next append durable now (before a deep
        sleep or a reset: else that one record is sent again after the boot)."""
        if self._soft:
            try:
                self._write_index(self.head, self._marks, self._oo)
            except OSError as e:
                raise OutboxError("ack failed: %s" % log.describe(e))

    def pending_count(self) -> int:
        return self._count

    def stats(self) -> dict:
        s = dict(self._stats)
        s["pending"] = self._count
        # every resolution moves head or joins the out-of-order list / the marks, so the
        # delivered count needs no write of its own
        s["delivered"] = max(0, self.head + len(self._oo) + (
            self._marks if self._marks < 0xFFFF else 0) - self._base - self._bad - s["dead"] -
                             s["dropped"] - s["expired"])
        return s

    def compact(self) -> None:
        """Give back the space of fully resolved buckets (a drained backlog), keeping a few for
        reuse. Costs one delete per slot; the queue never needs it to stay correct."""
        self.flush()
        while self._low >= 0 and self._low < self.head // _G - 2 and self._low < self._top:
            path = self._bucket(self._low)
            if not _is_dir(path):  # removed or renamed before a cut kept the meta file behind
                self._low += 1
                continue
            for name in list(_names(path)):
                os.remove(path + "/" + name)
            os.rmdir(path)
            self._low += 1
            self._write_meta()

    # ---- resolutions
    def _resolve_n(self, n, status):
        # status None: a damaged record skipped (no counter)
        if n < self.head or n >= self._end or n in self._oo:
            return False
        head, oo, marks = self.head, list(self._oo), self._marks
        try:
            if n == head:
                head, marks = self._advance(head + 1, oo, marks)
            elif len(oo) < _OO_MAX and n - head <= 0xFFFF:
                oo.append(n)
                oo.sort()
            else:  # far out of order (overflow drops behind a stuck report): mark the slot
                with open(self._slot(n), "wb") as f:
                    f.write(_seal(_parity(struct.pack("<BI", _F_DONE, n), n, 2)))
                marks = min(marks + 1, 0xFFFF)
            self._write_index(head, marks, oo)
        except OSError as e:
            raise OutboxError("ack failed: %s" % log.describe(e))
        self.head, self._oo, self._marks = head, oo, marks
        self._count = max(0, self._count - 1)
        if status != "D":
            if status is None:
                self._bad += 1
            else:
                self._stats[_STATUS_NAMES[status]] += 1
            self._save_counts()
        return True

    def _save_counts(self):
        try:
            self._write_meta()
        except OSError as e:  # the records are resolved; only their counter is not durable
            log.error(_TAG, "counter not saved: %s", log.describe(e))

    def _advance(self, head, oo, marks):
        # the first unresolved n from head on, past acks in oo and marked slots; reads slots
        # only while marks say some lie ahead
        while head < self._end:
            if oo and oo[0] == head:
                oo.pop(0)
            elif not marks or self._read(head) is not False:
                break
            elif marks < 0xFFFF:
                marks -= 1
            head += 1
        if head >= self._end:
            marks = 0
        return head, marks

    def _drop_one(self):
        victim: list = []

        def pick(n, rec):
            if rec is None:
                return False
            if rec.desired_id is None and rec.report_status is None:  # a reading: first choice
                victim[:] = [n, rec.message_id]
                return True
            if not victim:
                victim[:] = [n, rec.message_id]  # the oldest report, if no reading is pending
            return False

        self._scan(pick)
        if victim:
            log.warn(_TAG, "full (%d): dropping %s", self.max_records, victim[1])
            self._resolve_n(victim[0], "P")


# ---- v1 conversion (a device updated by OTA from the v1 layout)
def _find_v1(box, mid):
    # the record number of an id carried over from v1 (v1 records come first), or None
    found: list = []

    def look(n, rec):
        if rec is not None and rec.message_id == mid:
            found.append(n)
        return bool(found) or (rec is not None and id_key(rec.message_id)[0] >= box.epoch)

    box._scan(look)
    return found[0] if found else None


def _migrate_v1(box):
    from firmware import outbox_v1  # imported only on the boot that converts

    log.info(_TAG, "converting %s from the v1 layout", box.root)
    old = outbox_v1.Outbox(box.root, max_records=1 << 30)
    box._converting = True
    # a conversion cut short before its commit starts over in the buckets it made (the
    # same records go to the same slots), under the epoch it chose: no v1 id has it
    box._scan_buckets()
    if box._top < 0:
        box.epoch = old.boot + 1  # above every v1 id: order and uniqueness both hold
    box.boot = box.epoch
    box._end = box.head = box._count = 0
    keep, box.max_records = box.max_records, 1 << 30  # carry everything, drop nothing
    carried = []

    def carry(_, __, rec):
        if outbox_v1._key(rec[0]) not in old._acked:
            box._append(rec[1], rec[2], rec[3], rec[4], rec[5], rec[6], rec[0])
            carried.append(1)
        return False

    old._opening = True
    old._records(old._hseg, old._hoff, carry)
    if box._top < 0:
        box._new_bucket(0)  # the epoch lives in bucket names: keep it above the v1 ids
    st = old._stats
    box._stats = {"dead": st["dead"], "dropped": st["dropped"], "expired": st["expired"]}
    # what stats() adds up to the v1 store's delivered count
    box._base = -(st["delivered"] + st["dead"] + st["dropped"] + st["expired"])
    box._write_index(0, 0, [])
    box._converting = False
    box._v1left = True
    box._write_meta()  # the commit point: from here on the store is v3
    box.max_records = keep
    _v1_remove(box.root)
    box._v1left = False  # the write of this boot's counter records it
    log.info(_TAG, "converted: %d pending records kept with their ids", len(carried))


def _moved(box, b):
    # bucket b is above the top one box's meta file says: made, or renamed from the low one,
    # since it was written
    box._top = b
    if box._low < 0:
        box._low = b
    while box._low < b and not _is_dir(box._bucket(box._low)):
        box._low += 1
    return b


def _fresh(path, parity, lo, hi, listing=False):
    # (how many slots of the bucket at path (its number's parity) are fresh, the size of the
    # last one or 0), knowing the slots below lo are and those from hi on are not. This lap's
    # slots are written in slot order: a binary search of file opens (a listing walks
    # LittleFS's log twice per slot: 60 KB with 20 slots, where the live log at 1k pending is
    # 26 KB). With many buckets (listing) every open walks several metadata blocks of the
    # outbox directory to the top one: then one listing reads less than four opens.
    last = 0
    while lo < hi:
        mid = (lo + hi) // 2
        size = 0 if listing else _size(path + "%x" % mid)
        if size == 0:  # (or emptied by a cut on a filesystem without atomic writes): list
            lo = last = 0
            for name, size in _sizes(path[:-1]):
                try:
                    s = int(name, 16)
                except ValueError:
                    continue
                if size > 0 and size % 2 == parity and s >= lo and name == "%x" % s:
                    lo, last = s + 1, size
            return lo, last
        if size > 0 and size % 2 == parity:
            lo, last = mid + 1, size
        else:
            hi = mid
    return lo, last


def capacity(root):
    """How many pending records the filesystem holding root can keep: a bucket of 28 records is
    one LittleFS metadata pair (two blocks); the outbox takes at most 3/4 of the filesystem
    less 8 blocks (config, CA, OTA state and LittleFS's own spare blocks keep the rest), and
    two of its buckets are the partly used head and top ones. The board's 448 KB vfs partition
    (112 blocks) gives 1008."""
    try:
        st = os.statvfs(root)
    except (AttributeError, OSError):  # no statvfs: no limit of its own
        return 1 << 30
    return fits(st[0], st[2])


def fits(block_size, blocks):
    """capacity() of a filesystem of that many blocks."""
    pairs = (blocks * 3 // 4 - 8) * block_size // 8192
    return max(_G, (pairs - 2) * _G)


def _names(path):
    # names in a directory, streamed on MicroPython (RAM stays flat with many entries)
    if hasattr(os, "ilistdir"):
        for entry in os.ilistdir(path):
            yield entry[0]
    else:  # CPython (host tests)
        yield from os.listdir(path)


def _sizes(path):
    # (name, size) of the files in a directory, from the listing alone on MicroPython
    if hasattr(os, "ilistdir"):
        for entry in os.ilistdir(path):
            if len(entry) > 3:  # LittleFS, FAT
                yield entry[0], entry[3]
            else:  # the unix port's host filesystem lists no sizes
                yield entry[0], os.stat(path + "/" + entry[0])[6]
    else:  # CPython (host tests)
        for name in os.listdir(path):
            yield name, os.stat(path + "/" + name)[6]


def _size(path):
    # a file's size without reading it (LittleFS: from the open's lookup), -1 when it does not
    # exist or is not a file
    try:
        with open(path, "rb") as f:
            return f.seek(0, 2)
    except OSError:
        return -1


def _is_dir(path):
    try:
        return bool(os.stat(path)[0] & 0x4000)
    except OSError:
        return False


def _v1_present(root):
    for name in _names(root):
        if name in ("state.json", "state.tmp") or (name.endswith(".seg") and
                                                    name.startswith("s")) or (
                name == "k" and _is_dir(root + "/k")):
            return True
    return False


def _v1_remove(root):
    for name in list(_names(root)):
        path = root + "/" + name
        if name == "k" and _is_dir(path):
            for e in list(_names(path)):
                os.remove(path + "/" + e)
            os.rmdir(path)
        elif name in ("state.json", "state.tmp") or (name.endswith(".seg") and
                                                      name.startswith("s") and len(name) == 17):
            os.remove(path)


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
