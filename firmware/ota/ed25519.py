"""Ed25519 signature verification (RFC 8032, pure Ed25519: no prehash, no context).

Verification only: the device checks OTA bundles signed on the host. `verify()` answers
True/False for any input and never raises; `check()` raises `BadSignature` saying why.

Strict rules (the same verdicts as OpenSSL, hence the `cryptography` package, which signs the
bundles): S must be canonical (S < L); the public key must be a canonical point encoding
(y < p, on the curve, no "negative zero" x) and not of small order (stricter than OpenSSL,
which matters only for a key nobody should hold); R is checked by comparing the canonical encoding
of [S]B - [k]A with the 32 signature bytes, so a non-canonical R never verifies (cofactorless
equation, which RFC 8032 5.1.7 allows).

Arithmetic: MicroPython's arbitrary-precision ints, points in extended twisted Edwards
coordinates (X:Y:Z:T), one interleaved double-scalar multiplication with width-5 NAF digits
for both scalars (about 253 doublings and 85 additions per verify).
"""
from micropython import const

from firmware.ota.sha512 import sha512

_W = const(5)  # NAF window: tables of 8 odd multiples per point

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
# d = -121665/121666, 2*d, sqrt(-1) = 2^((p-1)/4): tested against their definitions.
_D = 37095705934669439343138083508754565189542113879843219016388785533085940283555
_D2 = 16295367250680780974490674513165176452449235426866156013048779062215315747161
_SQRT_M1 = 19681161376707505956807079304988542015446066515923890162744021073123829784752
# Base point B: y = 4/5, x positive (even).
_BX = 15112221349535400772501151409588531511454012693041857206046113283949847762202
_BY = 46316835694926478169428394003475163141307993866256225615783033603165251855960
_Y_MASK = (1 << 255) - 1

_base_table = None  # cached odd multiples of B, built on first verify


class BadSignature(ValueError):
    """The signature does not verify for this key and message (str says which check failed)."""


def _decode_point(s):
    # RFC 8032 5.1.3; None for anything that is not a canonical encoding of a curve point.
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= _Y_MASK
    if y >= _P:
        return None
    p = _P
    yy = y * y % p
    u = (yy - 1) % p
    v = (_D * yy + 1) % p
    v3 = v * v % p * v % p
    x = u * v3 % p * pow(u * v3 % p * v3 % p * v % p, (p - 5) // 8, p) % p
    vxx = v * x % p * x % p
    if vxx != u:
        if vxx != p - u:
            return None
        x = x * _SQRT_M1 % p
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = p - x
    return (x, y, 1, x * y % p)


# A key of order 1, 2, 4 or 8 would accept forged signatures: [8]A is then the identity (X = 0).
def _small_order(pt):
    return _double(_double(_double(pt)))[0] % _P == 0


def _encode_point(pt):
    p = _P
    x, y, z, _ = pt
    zi = pow(z, p - 2, p)
    x = x * zi % p
    y = y * zi % p
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


# Point doubling (dbl-2008-hwcd with a = -1); T of the input is not needed.
def _double(pt):
    p = _P
    x, y, z, _ = pt
    a = x * x % p
    b = y * y % p
    c = 2 * z * z % p
    h = a + b
    s = x + y
    e = h - s * s % p
    g = a - b
    f = c + g
    return (e * f % p, g * h % p, f * g % p, e * h % p)


# Addition of a point and a "cached" point (Y+X, Y-X, 2Z, 2dT) (add-2008-hwcd-3, a = -1).
def _add_cached(pt, q):
    p = _P
    x, y, z, t = pt
    a = (y - x) * q[1] % p
    b = (y + x) * q[0] % p
    c = t * q[3] % p
    d = z * q[2] % p
    e = b - a
    f = d - c
    g = d + c
    h = b + a
    return (e * f % p, g * h % p, f * g % p, e * h % p)


def _cached(pt):
    p = _P
    x, y, z, t = pt
    return ((y + x) % p, (y - x) % p, 2 * z % p, _D2 * t % p)


def _neg_cached(c):
    # -(x, y) = (-x, y): swaps Y+X and Y-X and negates T.
    return (c[1], c[0], c[2], (_P - c[3]) % _P)


# Odd multiples P, 3P, ..., (2^(W-1)-1)P in cached form, index i holds (2i+1)P.
def _odd_multiples(pt):
    two = _cached(_double(pt))
    table = [_cached(pt)]
    cur = pt
    for _ in range((1 << (_W - 2)) - 1):
        cur = _add_cached(cur, two)
        table.append(_cached(cur))
    return table


# Width-W non-adjacent form of n < 2^256 into 257 bytes, least significant digit first; digits
# are odd or zero, a negative digit d stored as 256 + d (a bytearray, not a list of ints, so
# the 64K heap never needs a large contiguous block).
def _naf(n):
    digits = bytearray(257)
    full = 1 << _W
    half = 1 << (_W - 1)
    i = 0
    while n:
        if n & 1:
            d = n & (full - 1)
            if d >= half:
                d -= full
            n -= d
            digits[i] = d & 0xFF
        n >>= 1
        i += 1
    return digits


# Adds the table entry for NAF byte v (odd multiple, negated when v > 127) to acc.
def _add_digit(acc, table, v):
    if v < 128:
        return _add_cached(acc, table[v >> 1])
    return _add_cached(acc, _neg_cached(table[(256 - v) >> 1]))


# [s]B + [k]Q for scalars below 2^256, by one shared chain of doublings.
def _double_mul(s, k, q):
    global _base_table
    if _base_table is None:
        _base_table = _odd_multiples((_BX, _BY, 1, _BX * _BY % _P))
    tb = _base_table
    tq = _odd_multiples(q)
    ns = _naf(s)
    nk = _naf(k)
    top = 256
    while top >= 0 and not ns[top] and not nk[top]:
        top -= 1
    p = _P
    x, y, z, t = 0, 1, 1, 0
    for i in range(top, -1, -1):
        # _double() inlined (it is 3/4 of the work); T only when an addition follows.
        a = x * x % p
        b = y * y % p
        c = 2 * z * z % p
        h = a + b
        e = x + y
        e = h - e * e % p
        g = a - b
        f = c + g
        x = e * f % p
        y = g * h % p
        z = f * g % p
        ds = ns[i]
        dk = nk[i]
        if ds or dk:
            acc = (x, y, z, e * h % p)
            if ds:
                acc = _add_digit(acc, tb, ds)
            if dk:
                acc = _add_digit(acc, tq, dk)
            x, y, z, t = acc
    if top >= 0 and not (ns[0] or nk[0]):
        t = e * h % p  # the last step was a bare doubling
    return (x, y, z, t)


def check(public_key, message, signature):
    """Raise BadSignature unless `signature` (64 bytes) is a valid Ed25519 signature of
    `message` under `public_key` (32 bytes)."""
    if len(public_key) != 32:
        raise BadSignature("public key must be 32 bytes")
    if len(signature) != 64:
        raise BadSignature("signature must be 64 bytes")
    sig = memoryview(signature)
    s = int.from_bytes(sig[32:64], "little")
    if s >= _L:
        raise BadSignature("non-canonical S")
    a = _decode_point(public_key)
    if a is None:
        raise BadSignature("bad public key encoding")
    if _small_order(a):
        raise BadSignature("small-order public key")
    h = sha512(sig[0:32])
    h.update(public_key)
    h.update(message)
    k = int.from_bytes(h.digest(), "little") % _L
    # R' = [S]B - [k]A must encode to exactly the R bytes.
    x, y, z, t = a
    r = _double_mul(s, k, ((_P - x) % _P, y, z, (_P - t) % _P))
    if _encode_point(r) != bytes(sig[0:32]):
        raise BadSignature("signature mismatch")


def verify(public_key, message, signature):
    """True if `signature` is a valid Ed25519 signature of `message` under `public_key`."""
    try:
        check(public_key, message, signature)
    except (BadSignature, TypeError):
        return False
    return True
