import support
from firmware import clock, log
from firmware.net import conn, http, tls


def read(data, method="GET", max_body=1000, step=7):
    c = http.Stream(support.StepReader(data, step), None)
    return support.run(http.Client()._read_response(c, method, 1000, max_body, None))


def test_status_line_and_headers():
    assert http.parse_status_line(b"HTTP/1.1 201 Created") == (201, "Created")
    assert http.parse_status_line(b"HTTP/1.0 404") == (404, "")
    assert http.parse_header_line(b"Content-Type:  application/json ") == \
        ("content-type", "application/json")
    for bad in (b"", b"HTTP/2 200 OK", b"HTTP/1.1 abc", b"HTTP/1.1 999 X", b"SPDY 200"):
        support.raises(http.HttpProtocolError, http.parse_status_line, bad)
    for bad in (b"NoColon", b": empty name", b" folded: x"):
        support.raises(http.HttpProtocolError, http.parse_header_line, bad)


def test_chunk_sizes():
    assert http.parse_chunk_size(b"1a") == 26
    assert http.parse_chunk_size(b"0;ext=1") == 0
    support.raises(http.HttpProtocolError, http.parse_chunk_size, b"zz")


def test_content_length_response_in_small_pieces():
    resp, keep = read(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhelloEXTRA", step=3)
    assert (resp.status, resp.body, resp.headers["x-a"], keep) == (200, b"hello", "b", True)


def test_chunked_response_with_trailers():
    resp, _ = read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nTrailer: 1\r\n\r\n")
    assert resp.body == b"abcde"


def test_interim_100_skipped_and_close_honoured():
    resp, keep = read(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n"
                      b"Connection: close\r\n\r\n")
    assert resp.status == 204 and resp.body == b"" and keep is False


def test_limits_and_truncation_are_named_errors():
    support.raises(http.BodyTooLarge, read,
                   b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000)
    support.raises(http.BodyTooLarge, read,
                   b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"400\r\n" + b"y" * 1024 + b"\r\n0\r\n\r\n")
    support.raises(conn.Closed, read, b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort")
    support.raises(http.HttpProtocolError, read, b"HTTP/1.1 200 OK\r\nX: " + b"a" * 2000)
    many = b"".join(b"H%d: v\r\n" % i for i in range(60))
    support.raises(http.HttpProtocolError, read, b"HTTP/1.1 200 OK\r\n" + many + b"\r\n")


def test_body_until_close():
    resp, keep = read(b"HTTP/1.0 200 OK\r\n\r\nall of it")
    assert resp.body == b"all of it" and keep is False


def test_form_encoding_and_auth_helpers():
    assert http.form_encode({"a": "b c", "k": "é&="}) == b"a=b+c&k=%C3%A9%26%3D"
    lines = []
    log.set_sink(lines.append)
    try:
        value = http.basic_auth("cdv_user", "pw-secret-1")
        log.info("t", "header %s", value)
    finally:
        log.set_sink(None)
    assert value == "Basic Y2R2X3VzZXI6cHctc2VjcmV0LTE="
    assert "Y2R2X3VzZXI6cHctc2VjcmV0LTE=" not in lines[0]
    assert http.bearer("t0k") == "Bearer t0k"


def test_parse_url():
    assert conn.parse_url("https://api.example.com/iot/v1") == \
        ("https", "api.example.com", 443, "/iot/v1", True)
    assert conn.parse_url("mqtt://127.0.0.1:1884") == ("mqtt", "127.0.0.1", 1884, "/", False)
    assert conn.parse_url("wss://[::1]:9000/ws")[1:3] == ("::1", 9000)
    for bad in ("ftp://x", "https://", "https://h:0/", "https://h:abc", "no-scheme", None):
        support.raises(conn.URLError, conn.parse_url, bad)


def test_errors_mapped_in_one_place():
    assert isinstance(conn.as_net_error(OSError(104), "x"), conn.Closed)
    assert isinstance(conn.as_net_error(OSError(113), "x"), conn.ConnectError)
    assert isinstance(conn.as_net_error(OSError(-29312), "x"), conn.TLSError)
    assert isinstance(conn.as_net_error(OSError(110), "x"), conn.NetTimeout)
    assert isinstance(conn.as_net_error(ValueError("bad CN"), "x"), conn.TLSError)


PEM = """junk
-----BEGIN CERTIFICATE-----
AAEC
-----END CERTIFICATE-----
-----BEGIN CERTIFICATE-----
AwQF
-----END CERTIFICATE-----
"""


def test_pem_to_der_reads_every_certificate():
    assert tls.pem_to_der(PEM) == [b"\x00\x01\x02", b"\x03\x04\x05"]
    assert tls.pem_to_der("nothing here") == []


def test_tls_refuses_while_clock_unset_and_without_ca():
    e = support.raises(clock.ClockUnset, tls.context, "ca.pem", lambda: False)
    assert "TLS" in str(e)
    support.raises(tls.TLSConfigError, tls.context, None)
    support.raises(tls.TLSConfigError, tls.context, "/nonexistent/ca.pem")


def test_stream_line_limit_names_the_protocol():
    long_line = b"x" * 2000 + b"\r\n"
    # HTTP and WebSocket read through http.Stream: an HTTP protocol error
    c = http.Stream(support.StepReader(long_line, 300), None)
    support.raises(http.HttpProtocolError, support.run, c.readline(1000))
    # the shared conn.Stream (MQTT) says the same as a generic protocol error
    c = conn.Stream(support.StepReader(long_line, 300), None)
    e = support.raises(conn.ProtocolError, support.run, c.readline(1000))
    assert isinstance(e, conn.NetError) and not isinstance(e, http.HttpProtocolError)
    c = conn.Stream(support.StepReader(b"short\r\nrest", 3), None)
    assert support.run(c.readline(1000)) == b"short"
