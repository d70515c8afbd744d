import struct

import support
from firmware.net import ws


def test_accept_key_matches_rfc6455_example():
    assert ws.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_mask_is_its_own_inverse_for_every_tail_length():
    key = b"\x37\xfa\x21\x3d"
    for n in range(0, 11):
        data = bytes(range(n))
        buf = bytearray(data)
        ws.apply_mask(buf, key)
        assert n == 0 or bytes(buf) != data
        ws.apply_mask(buf, key)
        assert bytes(buf) == data


def test_rfc6455_masked_hello_example():
    frame = ws.encode_frame(ws.TEXT, b"Hello", key=b"\x37\xfa\x21\x3d")
    assert frame == bytes([0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58])


def test_length_encodings():
    for n, head_len, code in ((125, 2, 125), (126, 4, 126), (65535, 4, 126), (65536, 10, 127)):
        f = ws.encode_frame(ws.BINARY, b"\0" * n, key=b"\0\0\0\0")
        assert f[1] == 0x80 | code
        assert len(f) == head_len + 4 + n
        if code == 126:
            assert struct.unpack("!H", f[2:4])[0] == n
        if code == 127:
            assert struct.unpack("!Q", f[2:10])[0] == n


def test_header_parsing_and_violations():
    assert ws.parse_header(0x81, 0x05) == (True, ws.TEXT, False, 5)
    assert ws.parse_header(0x01, 0x7E) == (False, ws.TEXT, False, 126)
    assert ws.parse_header(0x89, 0x00)[1] == ws.PING
    for b0, b1 in ((0xC1, 0), (0x83, 0), (0x09, 0), (0x88, 126), (0x8B, 0)):
        support.raises(ws.WsProtocolError, ws.parse_header, b0, b1)
