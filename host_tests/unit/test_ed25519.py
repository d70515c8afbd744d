"""Ed25519 verification and SHA-512 against RFC 8032 / FIPS 180 vectors, on both runtimes.

`sign()` below is a test-only RFC 8032 signer built from the module's own point arithmetic;
it must reproduce the RFC's public keys and signatures, which checks fixed-base scalar
multiplication independently of verify().
"""
import os

import support
from firmware.ota import ed25519
from firmware.ota.sha512 import sha512

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493

# RFC 8032 section 7.1: (secret key, public key, message, signature), hex.
TEST_1 = (
    "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
    "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
    "",
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
    "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
)
TEST_2 = (
    "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
    "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
    "72",
    "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
    "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
)
TEST_3 = (
    "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
    "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
    "af82",
    "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
    "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
)
TEST_1024 = (
    "f5e5767cf153319517630f226876b86c8160cc583bc013744c6bf255f5cc0ee5",
    "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e",
    "08b8b2b733424243760fe426a4b54908632110a66c2f6591eabd3345e3e4eb98"
    "fa6e264bf09efe12ee50f8f54e9f77b1e355f6c50544e23fb1433ddf73be84d8"
    "79de7c0046dc4996d9e773f4bc9efe5738829adb26c81b37c93a1b270b20329d"
    "658675fc6ea534e0810a4432826bf58c941efb65d57a338bbd2e26640f89ffbc"
    "1a858efcb8550ee3a5e1998bd177e93a7363c344fe6b199ee5d02e82d522c4fe"
    "ba15452f80288a821a579116ec6dad2b3b310da903401aa62100ab5d1a36553e"
    "06203b33890cc9b832f79ef80560ccb9a39ce767967ed628c6ad573cb116dbef"
    "efd75499da96bd68a8a97b928a8bbc103b6621fcde2beca1231d206be6cd9ec7"
    "aff6f6c94fcd7204ed3455c68c83f4a41da4af2b74ef5c53f1d8ac70bdcb7ed1"
    "85ce81bd84359d44254d95629e9855a94a7c1958d1f8ada5d0532ed8a5aa3fb2"
    "d17ba70eb6248e594e1a2297acbbb39d502f1a8c6eb6f1ce22b3de1a1f40cc24"
    "554119a831a9aad6079cad88425de6bde1a9187ebb6092cf67bf2b13fd65f270"
    "88d78b7e883c8759d2c4f5c65adb7553878ad575f9fad878e80a0c9ba63bcbcc"
    "2732e69485bbc9c90bfbd62481d9089beccf80cfe2df16a2cf65bd92dd597b07"
    "07e0917af48bbb75fed413d238f5555a7a569d80c3414a8d0859dc65a46128ba"
    "b27af87a71314f318c782b23ebfe808b82b0ce26401d2e22f04d83d1255dc51a"
    "ddd3b75a2b1ae0784504df543af8969be3ea7082ff7fc9888c144da2af58429e"
    "c96031dbcad3dad9af0dcbaaaf268cb8fcffead94f3c7ca495e056a9b47acdb7"
    "51fb73e666c6c655ade8297297d07ad1ba5e43f1bca32301651339e22904cc8c"
    "42f58c30c04aafdb038dda0847dd988dcda6f3bfd15c4b4c4525004aa06eeff8"
    "ca61783aacec57fb3d1f92b0fe2fd1a85f6724517b65e614ad6808d6f6ee34df"
    "f7310fdc82aebfd904b01e1dc54b2927094b2db68d6f903b68401adebf5a7e08"
    "d78ff4ef5d63653a65040cf9bfd4aca7984a74d37145986780fc0b16ac451649"
    "de6188a7dbdf191f64b5fc5e2ab47b57f7f7276cd419c17a3ca8e1b939ae49e4"
    "88acba6b965610b5480109c8b17b80e1b7b750dfc7598d5d5011fd2dcc5600a3"
    "2ef5b52a1ecc820e308aa342721aac0943bf6686b64b2579376504ccc493d97e"
    "6aed3fb0f9cd71a43dd497f01f17c0e2cb3797aa2a2f256656168e6c496afc5f"
    "b93246f6b1116398a346f1a641f3b041e989f7914f90cc2c7fff357876e506b5"
    "0d334ba77c225bc307ba537152f3f1610e4eafe595f6d9d90d11faa933a15ef1"
    "369546868a7f3a45a96768d40fd9d03412c091c6315cf4fde7cb68606937380d"
    "b2eaaa707b4c4185c32eddcdd306705e4dc1ffc872eeee475a64dfac86aba41c"
    "0618983f8741c5ef68d3a101e8a3b8cac60c905c15fc910840b94c00a0b9d0",
    "0aab4c900501b3e24d7cdf4663326a3a87df5e4843b2cbdb67cbf6e460fec350"
    "aa5371b1508f9f4528ecea23c436d94b5e8fcd4f681e30a6ac00a9704a188a03",
)
SHA_ABC = (
    "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
    "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
)
TEST_SHA_ABC = (
    "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
    "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
    SHA_ABC,
    "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b589"
    "09351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
)
VECTORS = (TEST_1, TEST_2, TEST_3, TEST_1024, TEST_SHA_ABC)


def unhex(s):
    return bytes.fromhex(s)


def _scalar_base(n):
    # [n]B through the verifier's double-scalar routine with a zero second scalar.
    b = ed25519._decode_point(ed25519._encode_point((ed25519._BX, ed25519._BY, 1, 0)))
    return ed25519._double_mul(n % L, 0, b)


def public_key(seed):
    h = sha512(seed).digest()
    a = int.from_bytes(h[:32], "little")
    a = (a & ((1 << 254) - 8)) | (1 << 254)
    return a, h[32:], ed25519._encode_point(_scalar_base(a))


def sign(seed, message):
    """RFC 8032 5.1.6 signing, for tests only (the device never signs)."""
    a, prefix, pk = public_key(seed)
    r = int.from_bytes(sha512(prefix + message).digest(), "little") % L
    rb = ed25519._encode_point(_scalar_base(r))
    k = int.from_bytes(sha512(rb + pk + message).digest(), "little") % L
    return rb + ((r + k * a) % L).to_bytes(32, "little")


def _flip(data, bit):
    b = bytearray(data)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


def test_sha512_fips_vectors():
    assert sha512(b"abc").hexdigest() == SHA_ABC
    assert sha512(b"").hexdigest() == (
        "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
        "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e")
    assert sha512(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq").hexdigest() == (
        "204a8fc6dda82f0a0ced7beb8e08a41657c16ef468b228a8279be331a703c335"
        "96fd15c13b1b07f9aa1d3bea57789ca031ad85c7a71dd70354ec631238ca3445")
    two_blocks = (b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmn"
                  b"hijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu")
    assert sha512(two_blocks).hexdigest() == (
        "8e959b75dae313da8cf4f72814fc143f8f7779c6eb9f7fa17299aeadb6889018"
        "501d289e4900f7e4331b99dec4b5433ac7d329eeb6dd26545e96e55b874be909")


def test_sha512_incremental_equals_one_shot_at_block_edges():
    data = bytes(i * 7 & 0xFF for i in range(300))
    for n in (0, 1, 111, 112, 113, 127, 128, 129, 239, 240, 256, 300):
        whole = sha512(data[:n]).digest()
        for step in (1, 13, 128):
            h = sha512()
            for i in range(0, n, step):
                h.update(data[i:min(i + step, n)])
            assert h.digest() == whole, (n, step)
        h = sha512(data[:n])
        assert h.digest() == h.digest()  # digest() does not disturb the state


def test_sha512_matches_hashlib_on_cpython():
    if support.IS_MICROPYTHON:
        import hashlib

        # The reason this module exists: the port has no sha512.
        assert not hasattr(hashlib, "sha512")
        return
    import hashlib

    for n in range(0, 400, 3):
        data = os.urandom(n)
        assert sha512(data).digest() == hashlib.sha512(data).digest(), n


def test_curve_constants_match_their_definitions():
    assert ed25519._D == (-121665 * pow(121666, P - 2, P)) % P
    assert ed25519._D2 == 2 * ed25519._D % P
    assert ed25519._SQRT_M1 == pow(2, (P - 1) // 4, P)
    assert ed25519._SQRT_M1 * ed25519._SQRT_M1 % P == P - 1
    x, y = ed25519._BX, ed25519._BY
    assert y == 4 * pow(5, P - 2, P) % P and x % 2 == 0
    assert (-x * x + y * y) % P == (1 + ed25519._D * x * x % P * y * y) % P
    # B has order L: [L]B is the identity, which encodes as y = 1.
    assert _scalar_base(L - 1) != _scalar_base(0)
    assert ed25519._encode_point(ed25519._double_mul(L, 0, (x, y, 1, x * y % P))) == \
        (1).to_bytes(32, "little")


def test_double_scalar_mult_is_linear_and_keeps_coordinates_consistent():
    x, y = ed25519._BX, ed25519._BY
    b = (x, y, 1, x * y % P)
    for s, k in ((0, 0), (1, 0), (0, 1), (2, 6), (2**252, 3), (L - 1, 1), (12345, L - 54321),
                 (2**253 - 1, 2**253 - 3)):
        r = ed25519._double_mul(s, k, b)
        rx, ry, rz, rt = r
        assert (rx * ry - rz * rt) % P == 0, (s, k)  # T = XY/Z, also after a bare doubling
        assert ed25519._encode_point(r) == ed25519._encode_point(ed25519._double_mul(
            (s + k) % L, 0, b)), (s, k)
    # a general point Q = [5]B as the second base: [7]Q = [35]B
    q = ed25519._double_mul(5, 0, b)
    assert ed25519._encode_point(ed25519._double_mul(0, 7, q)) == \
        ed25519._encode_point(ed25519._double_mul(35, 0, b))

def test_rfc8032_vectors_verify():
    for _sk, pk, msg, sig in VECTORS:
        assert ed25519.verify(unhex(pk), unhex(msg), unhex(sig)), pk
        ed25519.check(unhex(pk), unhex(msg), unhex(sig))


def test_rfc8032_vectors_reproduced_by_test_signer():
    for sk, pk, msg, sig in VECTORS:
        assert public_key(unhex(sk))[2] == unhex(pk)
        assert sign(unhex(sk), unhex(msg)) == unhex(sig)


def test_mutated_message_signature_or_key_fails():
    sk, pk, msg, sig = TEST_3
    pk, msg, sig = unhex(pk), unhex(msg), unhex(sig)
    for bit in (0, 7, 8, 15):
        assert not ed25519.verify(pk, _flip(msg, bit), sig)
    for bit in (0, 100, 255, 256, 300, 500):
        assert not ed25519.verify(pk, msg, _flip(sig, bit))
    for bit in (0, 77, 254):
        assert not ed25519.verify(_flip(pk, bit), msg, sig)
    assert not ed25519.verify(pk, msg + b"\x00", sig)
    assert not ed25519.verify(pk, msg[:1], sig)
    other = unhex(TEST_2[1])
    assert not ed25519.verify(other, msg, sig)


def test_non_canonical_s_is_rejected():
    sk, pk, msg, sig = TEST_1
    pk, msg, sig = unhex(pk), unhex(msg), unhex(sig)
    s = int.from_bytes(sig[32:], "little")
    # S + L satisfies the group equation too (the classic malleability); it must still fail.
    for bad in (s + L, L, 2**256 - 1):
        forged = sig[:32] + bad.to_bytes(32, "little")
        assert not ed25519.verify(pk, msg, forged)
        e = support.raises(ed25519.BadSignature, ed25519.check, pk, msg, forged)
        assert "non-canonical S" in str(e)


def test_bad_public_key_encodings_are_rejected():
    sk, pk, msg, sig = TEST_1
    msg, sig = unhex(msg), unhex(sig)
    canon = int.from_bytes(unhex(pk), "little")
    y = canon & ((1 << 255) - 1)
    cases = [
        (P + 1).to_bytes(32, "little"),                 # y >= p (would be y = 1)
        ((1 << 255) - 1).to_bytes(32, "little"),        # y = 2^255 - 1 >= p
        ((1 << 255) | 1).to_bytes(32, "little"),        # x = 0 with the sign bit set
    ]
    if y + P < (1 << 255):
        cases.append((y + P).to_bytes(32, "little"))
    for bad in cases:
        e = support.raises(ed25519.BadSignature, ed25519.check, bad, msg, sig)
        assert "public key" in str(e), bad


def test_decoding_agrees_with_euler_criterion():
    # y is a curve point iff x^2 = (y^2 - 1) / (d y^2 + 1) has a root (Euler's criterion).
    found_bad = found_good = 0
    for y in range(2, 60):
        u = (y * y - 1) % P
        v = (ed25519._D * y * y + 1) % P
        ratio = u * pow(v, P - 2, P) % P
        is_square = ratio == 0 or pow(ratio, (P - 1) // 2, P) == 1
        pt = ed25519._decode_point(y.to_bytes(32, "little"))
        assert (pt is not None) == is_square, y
        if pt is None:
            found_bad += 1
        else:
            found_good += 1
            x = pt[0]
            assert (-x * x + y * y) % P == (1 + ed25519._D * x * x % P * y * y) % P
            assert ed25519._encode_point(pt) == y.to_bytes(32, "little")
    assert found_bad and found_good


def test_small_order_public_keys_are_rejected():
    msg = b"anything"
    identity_sig = (1).to_bytes(32, "little") + bytes(32)
    for y in (1, P - 1, 0):
        pk = y.to_bytes(32, "little")
        e = support.raises(ed25519.BadSignature, ed25519.check, pk, msg, identity_sig)
        assert "small-order" in str(e), y


def test_wrong_lengths_and_types_return_false():
    sk, pk, msg, sig = TEST_2
    pk, msg, sig = unhex(pk), unhex(msg), unhex(sig)
    assert not ed25519.verify(pk[:31], msg, sig)
    assert not ed25519.verify(pk + b"\x00", msg, sig)
    assert not ed25519.verify(pk, msg, sig[:63])
    assert not ed25519.verify(pk, msg, sig + b"\x00")
    assert not ed25519.verify(None, msg, sig)
    assert not ed25519.verify(pk, msg, None)
    assert not ed25519.verify(pk, msg, bytes([0xFF]) * 64)
    e = support.raises(ed25519.BadSignature, ed25519.check, pk, msg, sig[:10])
    assert "64 bytes" in str(e)


def test_accepts_bytearray_and_memoryview_inputs():
    sk, pk, msg, sig = TEST_3
    pk, msg, sig = unhex(pk), unhex(msg), unhex(sig)
    assert ed25519.verify(bytearray(pk), memoryview(msg), bytearray(sig))
    assert ed25519.verify(memoryview(pk), bytearray(msg), memoryview(sig))


def test_signer_round_trip_on_fresh_keys():
    for n in (0, 1, 64, 200):
        seed = os.urandom(32)
        msg = os.urandom(n)
        sig = sign(seed, msg)
        pk = public_key(seed)[2]
        assert ed25519.verify(pk, msg, sig)
        assert not ed25519.verify(pk, msg + b"!", sig)
        assert not ed25519.verify(pk, msg, _flip(sig, 3))

