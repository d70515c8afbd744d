"""The outbox written in place into a raw flash partition (a measured prototype, not used by the
app: bench/outbox-wear.md says what adoption still needs).

Same interface as firmware/outbox.Outbox, over a block device with esp32.Partition's extended
interface (`readblocks(block, buf, offset)`, `writeblocks(block, buf, offset)`: a program, no
erase; `ioctl(6, block)`: erase one sector) instead of a directory. NOR flash: an erase sets a
sector to 0xFF, a program only clears bits, so a record is programmed once where the log ends
and its resolution clears bits of its flag byte: no erase until the log wraps.

Sector (ioctl(5) bytes, 4096 on the ESP32), a ring of them in sequence-number order:

    0   header  magic "OBN1", seq u32, epoch u32, first n u32, boot u32, base counts 5 x u32
                (delivered, dead, dropped, expired, damaged of every sector already erased),
                CRC-16
    42  reclaim byte: 0x00 once the sector is about to be erased (a torn erase never
        resurrects it)
    44  summary: the sector's own counts 5 x u16 + CRC-16, programmed once every record in it
        is resolved (opening then reads 56 bytes of the sector, not its records)
    64  records: flags u8, 0xA5, length u16, n u32, boot u32, CRC-16 of the 11 bytes before it
        (not the flags), body (JSON [kind, source, value, t, desired_id, report_status,
        message_id], trailing nulls and message_id left out unless the record was carried
        over or moved), CRC-16 of the body

Flags: 0xFF pending; resolutions clear bits to codes of two set bits (delivered 0x00, dead
0x11, dropped 0x22, expired 0x44, damaged 0x88, moved 0x81); a flag byte with five or more
bits set is pending (a torn or rotted flag write means one more delivery, never a loss).

- message_id = "<boot hex>-<n hex>". n counts records; boot, above every earlier one, is
  written into the log at each open (a record of length 0) before any id of that boot is
  handed out; both are recovered from the log at open. The epoch (the first boot) is random
  at format (a wiped partition never repeats its ids) or above the carried store's boots.
- A damaged record (CRC) is reported, flagged damaged and skipped; a damaged header is
  stepped over by searching the sector for the next valid header, so the records after it
  stay.
- The log wraps into the next sector only when it holds no pending record: the sector after
  the one being written is kept free of pending records. When the log is full (a sector is
  started and the one after it, the oldest, still holds pending records) the oldest sector's
  command reports are copied to the new sector (same message_id) and its readings dropped;
  reports are dropped only when the copies would not leave room.
- Overflow by count (max_records) and TTL behave as in firmware/outbox.py.

Not kept from firmware/outbox.py: resolve() marks one record per program, so a power cut in
the middle of a send result leaves part of it pending (delivered again: at-least-once holds);
moved reports come after newer records; a power cut between a sector's erase and its new
header undercounts the stats by that sector's resolutions (never loses a record).
"""
import json
import os
import struct
from binascii import crc32

from micropython import const

from firmware import clock, log
from firmware.outbox import OutboxError, Record, id_key

_TAG = "outbox"
_SMAGIC = b"OBN1"
_SH = "<4sIIII5I"  # 40 bytes + CRC-16
_SHLEN = const(42)
_RECLAIM = const(42)
_SUM = const(44)  # 5 x u16 + CRC-16
_REC0 = const(64)
_RH = "<BBHII"  # flags, magic, length, n, boot; then CRC-16 of bytes 1..11
_RHLEN = const(14)
_RMAGIC = const(0xA5)
_RMAGIC_ID = const(0xA4)  # the body carries its message_id (carried over or moved)
_MAX_PAYLOAD = const(1024)
_CODES = (0x00, 0x11, 0x22, 0x44, 0x88, 0x81)  # delivered dead dropped expired damaged moved
_DLV = const(0)
_DEAD = const(1)
_DROP = const(2)
_EXP = const(3)
_BAD = const(4)
_MOVED = const(5)
_KINDS = ("sensor", "command", "reading", "report", "state")
_BLANK = b"\xff" * _RHLEN
_AVG = const(64)  # bytes per record assumed by capacity() (a reading frames to 50-60)


def _crc16(data):
    return crc32(data) & 0xFFFF


def _ones(v):
    c = 0
    while v:
        c += v & 1
        v >>= 1
    return c


def _status(flags):
    # None while pending, else the index of the nearest resolution code
    if _ones(flags) >= 5:
        return None
    best, dist = 0, 9
    for i, c in enumerate(_CODES):
        d = _ones(flags ^ c)
        if d < dist:
            best, dist = i, d
    return best


def _is_report(rec):
    return rec.desired_id is not None or rec.report_status is not None


def _sector_header(dev, s):
    b = bytearray(_SUM + 12)
    dev.readblocks(s, b, 0)
    if bytes(b[:4]) != _SMAGIC or _crc16(b[:40]) != struct.unpack_from("<H", b, 40)[0]:
        return None
    f = struct.unpack_from(_SH, b)
    summ = None
    if _crc16(b[_SUM:_SUM + 10]) == struct.unpack_from("<H", b, _SUM + 10)[0]:
        summ = list(struct.unpack_from("<5H", b, _SUM))
    return f[1], f[2], f[3], f[4], list(f[5:10]), b[_RECLAIM] != 0xFF, summ


def _resync(dev, s, off, end):
    # the next offset holding a valid header or blank flash, else end
    if off >= end:
        return end
    buf = bytearray(end - off)
    dev.readblocks(s, buf, off)
    for i in range(len(buf) - _RHLEN + 1):
        h = buf[i:i + _RHLEN]
        if h == _BLANK:
            return off + i
        if h[1] in (_RMAGIC, _RMAGIC_ID) and _crc16(h[1:12]) == struct.unpack_from(
                "<H", h, 12)[0]:
            return off + i
    return end


def _frame(flags, n, boot, body, mid):
    h = struct.pack(_RH, flags, _RMAGIC_ID if mid else _RMAGIC, len(body), n, boot)
    return h + struct.pack("<H", _crc16(h[1:])) + body + struct.pack("<H", _crc16(body))


def _load(dev, s, off, n, boot, ln):
    # (body, Record) of a record, or None when its body is damaged
    buf = bytearray(ln + 2)
    dev.readblocks(s, buf, off + _RHLEN)
    body = bytes(buf[:ln])
    try:
        if _crc16(body) != struct.unpack_from("<H", buf, ln)[0]:
            raise ValueError("crc")
        f = json.loads(body)
        if not isinstance(f, list) or not 4 <= len(f) <= 7:
            raise ValueError("shape")
        while len(f) < 7:
            f.append(None)
        kind = _KINDS[f[0]] if isinstance(f[0], int) else f[0]
        mid = f[6] if f[6] is not None else "%x-%x" % (boot, n)
        if not isinstance(kind, str) or not isinstance(f[2], str) or not isinstance(
                f[3], int) or id_key(mid) is None:
            raise ValueError("fields")
        return body, Record(mid, kind, f[1], f[2], f[3], f[4], f[5])
    except (ValueError, TypeError, IndexError):
        return None


def _encode(rec, mid=None):
    k = _KINDS.index(rec.kind) if rec.kind in _KINDS else rec.kind
    fields = [k, rec.source, rec.value, rec.t, rec.desired_id, rec.report_status, mid]
    while fields[-1] is None:
        fields.pop()
    return json.dumps(fields, separators=(",", ":")).encode()


class OutboxNor:
    def __init__(self, dev, max_records: int = 2000, ttl_s=None, carry=None):
        """dev: the partition (esp32.Partition.find(..., label="outbox")[0] on the board);
        carry: a file outbox whose pending records move in, keeping their message_ids."""
        if max_records < 1:
            raise OutboxError("max_records must be >= 1")
        self.dev = dev
        self.ss = dev.ioctl(5, 0)
        self.ns = dev.ioctl(4, 0)
        if not self.ss or self.ss < 256 or not self.ns or self.ns < 3:
            raise OutboxError("partition too small for the outbox")
        self.ttl_s = ttl_s
        self.now = clock.unix_time  # replaceable (tests); called only when clock.is_set()
        self.max_records = max_records
        cap = self.capacity()
        if cap < max_records:
            log.warn(_TAG, "max_records %d does not fit the partition: %d kept at most",
                     max_records, cap)
            self.max_records = cap
        self._hb = bytearray(_RHLEN)
        self.epoch = self.boot = self._next_n = self._top_seq = self._count = 0
        self._base = [0] * 5
        self._head = (0, _REC0)  # the oldest pending record, or the end of the log
        self._cache: dict = {}  # message_id -> (sector, offset) of the last pending() batch
        try:
            self._open(carry)
            if carry is not None:
                self._carry(carry)
        except OSError as e:
            raise OutboxError("cannot open the outbox partition: %s" % log.describe(e))

    def capacity(self):
        # one sector is kept free and one is being written
        return max(1, (self.ns - 2) * ((self.ss - _REC0) // _AVG))

    # ---- sectors
    def _counts(self, s):
        # resolutions in sector s, from its summary or its records
        h = _sector_header(self.dev, s)
        if h is not None and h[6] is not None:
            return h[6]
        c = [0] * 5
        for _, flags, n, _, ln in self._recs(s, _REC0):
            st = _status(flags)
            if st is not None and st < 5 and (ln or n < 0):
                c[st] += 1
        return c

    def _start(self, x):
        # make sector x the one written next (it holds no pending record)
        base = list(self._base)
        if self._seq[x] >= 0:
            c = self._counts(x)
            for i in range(5):
                base[i] += c[i]
                self._res[i] -= c[i]
            self.dev.writeblocks(x, b"\x00", _RECLAIM)
        if x in self._order:
            self._order.remove(x)
        self._seq[x] = -1
        if not self._blank[x]:
            self.dev.ioctl(6, x)
        self._blank[x] = False
        seq = self._top_seq + 1
        body = struct.pack(_SH, _SMAGIC, seq, self.epoch, self._next_n, self.boot, *base)
        self.dev.writeblocks(x, body + struct.pack("<H", _crc16(body)), 0)
        self._top_seq = self._seq[x] = seq
        self._first[x] = self._next_n
        self._order.append(x)
        self._base = base
        self._w, self._wo = x, _REC0

    def _finish(self, s):
        # every record of s is resolved: its summary lets opening skip it
        b = bytearray(12)
        self.dev.readblocks(s, b, _SUM)
        if b != b"\xff" * 12:  # written (or torn) before: never program it twice
            return
        c = self._counts(s)
        body = struct.pack("<5H", *[min(v, 0xFFFF) for v in c])
        self.dev.writeblocks(s, body + struct.pack("<H", _crc16(body)), _SUM)

    # ---- records
    def _recs(self, s, off):
        # (offset, flags, n, boot, length) of each record of sector s from off; n is -1 for a
        # damaged header (the next valid one is searched for)
        end = self._wo if s == self._w else self.ss
        hb = self._hb
        self._stop = end
        while off + _RHLEN + 2 <= end:
            self.dev.readblocks(s, hb, off)
            if hb == _BLANK:
                self._stop = off
                return
            flags, magic, ln, n, boot = struct.unpack_from(_RH, hb)
            if magic in (_RMAGIC, _RMAGIC_ID) and _crc16(hb[1:12]) == struct.unpack_from(
                    "<H", hb, 12)[0] and off + _RHLEN + ln + 2 <= self.ss:
                yield off, flags, n, boot, ln
                off += _RHLEN + ln + 2
            else:
                yield off, flags, -1, 0, 0
                off = _resync(self.dev, s, off + 1, end)

    def _walk(self, s, off):
        # the records of the log from (s, off) on, oldest first: (sector,) + _recs' tuple
        for x in self._order[self._order.index(s):]:
            for r in self._recs(x, off if x == s else _REC0):
                yield (x,) + r

    def _put(self, n, body, flags=0xFF, mid=False):
        rec = _frame(flags, n, self.boot, body, mid)
        if self._wo + len(rec) > self.ss:
            self._next_sector(len(rec))
        off = self._wo
        self._wo += len(rec)  # a failed program leaves its bytes unusable: skip them
        self.dev.writeblocks(self._w, rec, off)
        return off

    def _next_sector(self, need):
        x = (self._w + 1) % self.ns
        if self._seq[x] >= 0 and self._head[0] == x:  # cannot happen while the reserve holds
            log.error(_TAG, "log full at sector %d: its pending records are dropped", x)
            for s, off, flags, n, _, ln in self._walk(x, self._head[1]):
                if s != x:
                    break
                if n >= 0 and ln and _status(flags) is None:
                    self._mark(s, off, _DROP)
                    self._res[_DROP] += 1
                    self._count -= 1
            self._advance_head()
        self._start(x)
        self._clear_next(need)

    def _clear_next(self, need):
        # keep the sector after the one being written free of pending records: its reports are
        # copied here, its readings dropped (the log is full)
        y = (self._w + 1) % self.ns
        if self._seq[y] < 0 or self._head[0] != y or y == self._w:
            return
        copied = []  # message_ids already copied here (a copy cut short before its marks)
        for _, _, rec, _ in self._records(self._w, _REC0, self._wo):
            if rec is not None:
                copied.append(rec[1].message_id)
        for s, off, rec, rn in list(self._records(y, self._head[1], self.ss, pending=True)):
            if rec is None:
                self._damaged(s, off, "record %d" % rn)
                self._count -= 1
                continue
            mid = rec[1].message_id
            frame = _RHLEN + len(rec[0]) + 2
            if mid in copied:
                self._mark(s, off, _MOVED)
            elif _is_report(rec[1]) and self._wo + frame + need <= self.ss:
                body = _encode(rec[1], mid)
                self._put(self._next_n, body, mid=True)
                self._next_n += 1
                self._moved = True
                self._mark(s, off, _MOVED)
            else:
                log.warn(_TAG, "log full: dropping %s", mid)
                self._mark(s, off, _DROP)
                self._res[_DROP] += 1
                self._count -= 1
        self._advance_head()

    def _records(self, s, off, end, pending=False):
        # (sector, offset, (body, Record) or None, n) of the records of s in [off, end)
        for x, o, flags, n, boot, ln in self._walk(s, off):
            if x != s or o >= end:
                return
            if n < 0 or not ln or (pending and _status(flags) is not None):
                continue
            rec = _load(self.dev, x, o, n, boot, ln)
            yield x, o, rec, n

    def _mark(self, s, off, st):
        self.dev.writeblocks(s, bytes((_CODES[st],)), off)

    def _damaged(self, s, off, what):
        log.error(_TAG, "%s at %d:%d damaged, skipped", what, s, off)
        self._mark(s, off, _BAD)
        self._res[_BAD] += 1

    # ---- open
    def _open(self, carry):
        ns = self.ns
        self._seq = [-1] * ns
        self._first = [0] * ns
        self._blank = [False] * ns
        self._order: list = []
        self._res = [0] * 5  # resolutions in the sectors not yet erased
        self._moved = False  # records moved or carried here: ids found by a scan
        self._w = -1
        heads = []
        for s in range(ns):
            h = _sector_header(self.dev, s)
            if h is not None and not h[5]:
                heads.append((h[0], s, h))
        if not heads:
            self._format(carry)
            return
        heads.sort()
        newest = heads[-1][2]
        self.epoch = newest[1]
        self._base = newest[4]
        self._top_seq = newest[0]
        boot = newest[3]
        top_n = newest[2] - 1
        byseq = {}
        for seq, s, h in heads:
            byseq[s] = h
            if h[1] != self.epoch:
                log.error(_TAG, "sector %d of another store ignored", s)
                continue
            self._seq[s], self._first[s] = seq, h[2]
            self._order.append(s)
        head = None
        self._count = 0
        last = self._order[-1]
        wo = _REC0
        for s in self._order:
            summ = byseq[s][6] if s != last else None
            if summ is not None:
                for i in range(5):
                    self._res[i] += summ[i]
                continue
            for off, flags, n, b, ln in self._recs(s, _REC0):
                st = _status(flags)
                if n < 0:
                    if st is None:
                        self._damaged(s, off, "record header")
                    elif st < 5:
                        self._res[st] += 1
                    continue
                top_n = max(top_n, n)
                boot = max(boot, b)
                if not ln:
                    continue
                if self._hb[1] == _RMAGIC_ID:
                    self._moved = True
                if st is None:
                    self._count += 1
                    if head is None:
                        head = (s, off)
                elif st < 5:
                    self._res[st] += 1
                else:
                    self._moved = True
            if s == last:
                wo = self._stop
        # a torn program may have left bytes after the last whole record, past a blank gap
        # that ends the scan: this sector takes no more records (they would not be found)
        tail = bytearray(self.ss - wo) if wo < self.ss else b""
        if tail:
            self.dev.readblocks(last, tail, wo)
            if tail != b"\xff" * len(tail):
                wo = self.ss
        self._w, self._wo = last, wo
        self._next_n = top_n + 1
        self.boot = boot + 1
        self._head = head or (self._w, self._wo)
        self._put(self._next_n, b"", 0x00)  # this boot is durable before it hands out an id
        self._clear_next(0)  # a log-full copy cut short
        self._advance_head()

    def _format(self, carry):
        # a new (or wiped) partition: erase it whole, random epoch above any carried store
        self.epoch = (int.from_bytes(os.urandom(3), "big") << 4) | 0x100
        if carry is not None:
            self.epoch = max(self.epoch, carry.boot + 1)
        self.boot = self.epoch
        self._next_n = 0
        self._top_seq = 0
        self._base = [0] * 5
        self._count = 0
        for s in range(self.ns):
            self.dev.ioctl(6, s)
            self._blank[s] = True
        self._w = self.ns - 1
        self._start(0)
        self._head = (0, _REC0)
        self._put(self._next_n, b"", 0x00)
        self._head = (0, self._wo)

    def _carry(self, old):
        # the file outbox's pending records move here with their ids, in order; a move cut short
        # is finished at the next open (ids already here are not copied twice)
        if not old.pending_count():
            return
        here = []
        if self._moved:
            for _, _, _, _, _, rec in self._scan_pending():
                here.append(rec.message_id)
        moved = 0
        while True:
            batch = old.pending(20)
            if not batch:
                break
            for r in batch:
                if r.message_id not in here:
                    self._append(r, r.message_id)
                    moved += 1
            old.resolve([r.message_id for r in batch])
        if moved:
            log.info(_TAG, "%d pending records carried over with their ids", moved)

    def _scan_pending(self):
        # (sector, offset, flags, n, boot, Record) of every intact pending record
        for s, off, flags, n, boot, ln in self._walk(*self._head):
            if n >= 0 and ln and _status(flags) is None:
                rec = _load(self.dev, s, off, n, boot, ln)
                if rec is not None:
                    yield s, off, flags, n, boot, rec[1]

    # ---- head
    def _advance_head(self):
        # head: the oldest pending record (or the end of the log); sectors it leaves get their
        # summary
        hs, ho = self._head
        if self._seq[hs] < 0:  # its sector was erased (log full)
            hs, ho = self._order[0], _REC0
        new = None
        for s, off, flags, n, _, ln in self._walk(hs, ho):
            if n >= 0 and ln and _status(flags) is None:
                new = (s, off)
                break
        if new is None:
            new = (self._w, self._wo)
        i = self._order.index(hs)
        while self._order[i] != new[0]:
            self._finish(self._order[i])
            i += 1
        self._head = new

    # ---- public API
    def append(self, kind: str, source, value: str, t: int, desired_id=None,
               report_status=None) -> str:
        if not isinstance(kind, str) or not isinstance(value, str) or not isinstance(t, int):
            raise OutboxError("kind and value must be str, t int")
        if not isinstance(source, (int, str)):
            raise OutboxError("source must be int or str")
        return self._append(Record(None, kind, source, value, t, desired_id, report_status),
                            None)

    def _append(self, rec, mid):
        body = _encode(rec, mid)
        if len(body) > _MAX_PAYLOAD:
            raise OutboxError("record too large (%d bytes)" % len(body))
        if self._count >= self.max_records:
            self._drop_one()
        n = self._next_n
        try:
            self._put(n, body, mid=mid is not None)
        except OSError as e:  # the next append takes the next n: this one was never handed out
            self._next_n = n + 1
            raise OutboxError("append failed: %s" % log.describe(e))
        self._next_n = n + 1
        self._count += 1
        if mid is not None:
            self._moved = True
        return mid or "%x-%x" % (self.boot, n)

    def pending(self, limit: int = 10) -> list:
        out: list = []
        self._cache = {}
        if limit <= 0:
            return out
        cutoff = None
        if self.ttl_s:
            try:
                cutoff = self.now() - self.ttl_s
            except clock.ClockUnset:
                pass
        full = True
        seen = 0
        for s, off, flags, n, boot, ln in self._walk(*self._head):
            st = _status(flags)
            if n < 0:
                if st is None:
                    self._damaged(s, off, "record header")
                continue
            if not ln or st is not None:
                continue
            rec = _load(self.dev, s, off, n, boot, ln)
            if rec is None:
                self._damaged(s, off, "record %d" % n)
                self._count -= 1
                continue
            r = rec[1]
            if cutoff is not None and 0 < r.t < cutoff:
                self._mark(s, off, _EXP)
                self._res[_EXP] += 1
                self._count -= 1
                continue
            seen += 1
            out.append(r)
            self._cache[r.message_id] = (s, off)
            if len(out) >= limit:
                full = False
                break
        if full:
            self._count = seen
        self._advance_head()
        return out

    def delivered(self, message_id: str) -> None:
        self.resolve((message_id,))

    def dead_letter(self, message_id: str, reason: str = "") -> None:
        self.resolve((), ((message_id, reason),))

    def resolve(self, ok=(), dead=()) -> None:
        """One send result. Each record is one flag program: a power cut part way leaves the
        rest pending (delivered again). Unknown or resolved ids are ignored."""
        todo = [(m, _DLV, "") for m in ok] + [(m, _DEAD, r) for m, r in dead]
        head = False
        for mid, st, reason in todo:
            loc = self._find(mid)
            if loc is None:
                continue
            try:
                self._mark(loc[0], loc[1], st)
            except OSError as e:
                raise OutboxError("ack failed: %s" % log.describe(e))
            self._res[st] += 1
            self._count = max(0, self._count - 1)
            head = head or loc == self._head
            if st == _DEAD:
                log.warn(_TAG, "dead letter %s: %s", mid, reason)
        if head:
            self._advance_head()

    def _find(self, mid):
        # (sector, offset) of the pending record with this id, or None
        loc = self._cache.pop(mid, None) if isinstance(mid, str) else None
        if loc is not None:
            return loc
        k = id_key(mid)
        if k is None:
            return None
        if k[0] < self.epoch:  # carried over: found by a scan
            pass
        elif k[0] <= self.boot:
            n = k[1]
            for i, s in enumerate(self._order):
                if self._first[s] <= n and (i + 1 == len(self._order) or
                                            self._first[self._order[i + 1]] > n):
                    for off, flags, rn, boot, ln in self._recs(s, _REC0):
                        if rn == n and ln and boot == k[0]:
                            st = _status(flags)
                            if st is None:
                                return (s, off)
                            if st != _MOVED:  # resolved: nothing to do
                                return None
                            break  # moved: its copy is found by its id below
                    break
            if not self._moved:
                return None
        else:
            return None
        for s, off, _, _, _, rec in self._scan_pending():  # moved or carried: by id
            if rec.message_id == mid:
                return (s, off)
        return None

    def _drop_one(self):
        victim = None
        for s, off, _, _, _, rec in self._scan_pending():
            if not _is_report(rec):
                victim = (s, off, rec.message_id)
                break
            if victim is None:
                victim = (s, off, rec.message_id)
        if victim:
            log.warn(_TAG, "full (%d): dropping %s", self.max_records, victim[2])
            self._mark(victim[0], victim[1], _DROP)
            self._res[_DROP] += 1
            self._count -= 1
            self._cache.pop(victim[2], None)
            if (victim[0], victim[1]) == self._head:
                self._advance_head()

    def pending_count(self) -> int:
        return self._count

    def stats(self) -> dict:
        t = [self._base[i] + self._res[i] for i in range(5)]
        return {"delivered": t[_DLV], "dead": t[_DEAD], "dropped": t[_DROP],
                "expired": t[_EXP], "damaged": t[_BAD], "pending": self._count}

    def compact(self) -> None:
        """Nothing to give back: the partition is the outbox's own."""
