import binascii
import json

import support
from firmware import log
from firmware.clouds import nubison as nb
from firmware.outbox import Record

T = 1777025700  # 2026-04-24T10:15:00Z


class FakeResp:
    def __init__(self, status, body=None, headers=None):
        self.status = status
        self.body = body
        self.headers = headers or {}

    def json(self):
        if isinstance(self.body, (bytes, str)):
            return json.loads(self.body)  # ValueError on garbage, like http.Response
        return self.body

    def retry_after_ms(self):
        v = self.headers.get("retry-after")
        return int(v) * 1000 if v else None


class FakeHttp:
    """Answers from a script (an Exception instance is raised instead); records requests."""

    def __init__(self, answers):
        self.answers = answers
        self.calls = []
        self.closed = False

    async def request(self, method, url, **kw):
        self.calls.append((method, url, kw))
        if not self.answers:
            raise AssertionError("unexpected request %s %s" % (method, url))
        a = self.answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    async def close(self):
        self.closed = True

    def paths(self):
        return [c[1].split("://", 1)[1].split("/", 1)[1] for c in self.calls]


class Cfg:
    ca_path = None

    def __init__(self, root, **over):
        self.root = root
        self.cloud = {"platform": "nubison", "api_url": "https://nb.example/",
                      "client_id": "cli-abc", "client_secret": "nb-secret-xyz",
                      "product_code": "PRD7", "device_id": "dev-01",
                      "model_name": "ESP32-SIM", "device_name": "greenhouse"}
        self.cloud.update(over)

    def get(self, key, default=None):
        return {"cloud": self.cloud}.get(key, default)


def _login(tok="tok-1"):
    return FakeResp(200, {"AccessToken": tok})


def _adapter(answers, root=None, **over):
    root = root or support.tmpdir("nb")
    http = FakeHttp(answers)
    return nb.Nubison(Cfg(root, **over), http), http, root


def _rec(n, kind="sensor", source=7, desired_id=None, status=None):
    return Record("1a-%x" % n, kind, source, str(n), T, desired_id, status)


def _registered(root, key="PRD7_dev-01"):
    support.write(root + "/nubison.json", json.dumps({"registered": key}))


def test_login_sends_basic_of_id_and_secret_and_the_device_key_as_a_form():
    cloud, http, root = _adapter([_login(), FakeResp(201)])
    assert support.run(cloud.authenticate()) == 0
    method, url, kw = http.calls[0]
    assert (method, url) == ("POST", "https://nb.example/devices/login")
    raw = binascii.a2b_base64(kw["headers"]["Authorization"][6:])
    assert kw["headers"]["Authorization"].startswith("Basic ")
    assert raw == b"cli-abc:nb-secret-xyz"  # not "Basic cli-abc:..." as a public example
    assert kw["form"] == {"deviceKey": "PRD7_dev-01"} and "json" not in kw
    assert cloud.token == "tok-1" and cloud.renewals == 1 and not cloud.token_due()
    support.rmtree(root)


def test_registers_once_and_remembers_it_across_restarts():
    cloud, http, root = _adapter([_login(), FakeResp(201)])
    support.run(cloud.authenticate())
    assert http.paths() == ["devices/login", "devices"]
    assert http.calls[1][2]["json"] == {"accessToken": "tok-1", "deviceKey": "PRD7_dev-01",
                                        "deviceName": "greenhouse", "modelName": "ESP32-SIM"}
    with open(root + "/nubison.json") as f:
        assert json.load(f) == {"registered": "PRD7_dev-01"}
    again, http2, _ = _adapter([_login("tok-2")], root=root)
    assert again.registered
    support.run(again.authenticate())
    assert http2.paths() == ["devices/login"] and not again.token_due()
    support.rmtree(root)


def test_another_device_key_or_a_broken_state_file_registers_again():
    root = support.tmpdir("nb")
    _registered(root, "PRD7_other")
    assert not _adapter([], root=root)[0].registered
    support.write(root + "/nubison.json", "{not json")
    cloud, http, _ = _adapter([_login(), FakeResp(201)], root=root)
    assert not cloud.registered
    support.run(cloud.authenticate())
    assert cloud.registered and http.paths() == ["devices/login", "devices"]
    support.rmtree(root)


def test_login_415_is_retried_once_as_json_and_json_is_kept():
    root = support.tmpdir("nb")
    _registered(root)
    cloud, http, _ = _adapter([FakeResp(415, {"message": "content-type must be json"}),
                               _login(), _login("tok-2")], root=root)
    support.run(cloud.authenticate())
    assert "form" in http.calls[0][2] and http.calls[1][2]["json"] == {"deviceKey":
                                                                      "PRD7_dev-01"}
    assert cloud.token == "tok-1"
    support.run(cloud.authenticate(force=True))
    assert "json" in http.calls[2][2] and cloud.token == "tok-2"
    support.rmtree(root)


def test_token_is_read_from_every_documented_spelling_and_bad_answers_do_not_crash():
    root = support.tmpdir("nb")
    _registered(root)
    for body, tok in (({"AccessToken": "nbtok-a1"}, "nbtok-a1"),
                      ({"accessToken": "nbtok-a2"}, "nbtok-a2"),
                      ({"access_token": "nbtok-a3"}, "nbtok-a3"), ({"AccessToken": 123}, None),
                      ({"AccessToken": ""}, None), ([1, 2], None), (b"<html>oops", None),
                      ("null", None), ({"token": "x"}, None)):
        cloud, http, _ = _adapter([FakeResp(200, body)], root=root)
        assert support.run(cloud.authenticate()) == 0
        assert cloud.token == tok, body
        assert cloud.token_due() == (tok is None)
    support.rmtree(root)


def test_login_refusals_hold_the_device_without_asking_again():
    for status, body in ((400, {"code": "ERROR403", "message": "client is not valid."}),
                         (400, {"code": "ERROR401"}), (400, {"code": "ERROR402"}),
                         (405, None), (415, None)):
        answers = [FakeResp(status, body)] + ([FakeResp(status, body)] if status == 415 else [])
        cloud, http, root = _adapter(answers)
        assert support.run(cloud.authenticate()) == 300000
        n = len(http.calls)
        assert 0 < support.run(cloud.authenticate()) <= 300000 and len(http.calls) == n
        res = support.run(cloud.send([_rec(1)]))
        assert res.failed and not res.ok and not res.dead and len(http.calls) == n
        assert 0 < res.wait_ms <= 300000
        assert cloud.held_reason.startswith("login ")
        support.rmtree(root)


def test_readings_go_out_as_data_with_the_message_id_inside():
    cloud, http, root = _adapter([_login(), FakeResp(201), FakeResp(201, b"")])
    res = support.run(cloud.send([_rec(10)]))
    assert res.ok == ["1a-a"] and not res.dead and not res.failed
    method, url, kw = http.calls[2]
    assert url == "https://nb.example/devices/data" and kw["idempotent"]
    assert kw["json"] == {"accessToken": "tok-1", "deviceKey": "PRD7_dev-01",
                          "data": {"message_id": "1a-a", "kind": "sensor", "id": 7,
                                   "value": "10", "time": "2026-04-24T10:15:00Z"}}
    support.rmtree(root)


def test_command_states_and_desired_reports_are_data_too():
    assert nb.to_wire(_rec(1, "command", 3)) == {
        "message_id": "1a-1", "kind": "command", "id": 3, "value": "1",
        "time": "2026-04-24T10:15:00Z"}
    d = nb.to_wire(_rec(2, "command", 4, "des_9", "rejected"))
    assert d["desired_id"] == "des_9" and d["report_status"] == "rejected"
    assert nb.to_wire(_rec(3, "command", 4, "des_8", None))["report_status"] == "applied"


def test_no_desired_channel_poll_never_calls_back():
    cloud, http, root = _adapter([])
    seen = []
    assert support.run(cloud.poll_catalog(seen.append)) > 0
    assert seen == [] and http.calls == [] and cloud.background() == []
    support.rmtree(root)


def test_verdicts_name_every_documented_error():
    cases = [
        (201, None, "ok", "http 201"), (201, {"id": 1}, "ok", "http 201"),
        (400, {"code": "ERROR401", "message": "x"}, "held", "ERROR401 auth_header_missing"),
        (400, {"code": "ERROR402"}, "held", "ERROR402 device_key_missing"),
        (400, {"code": "ERROR403"}, "held", "ERROR403 client_invalid"),
        (400, {"code": "ERROR404"}, "relogin", "ERROR404 token_missing"),
        (400, {"code": "ERROR406"}, "dead", "ERROR406 data_missing"),
        (400, {"code": "ERROR405"}, "dead", "ERROR405 bad_request"),
        (400, {"code": 406}, "dead", "http 400 bad_request"),
        (400, [1], "dead", "http 400 bad_request"),
        (401, None, "relogin", "http 401 token_invalid"),
        (405, None, "reregister", "http 405 not_found"),
        (415, None, "held", "http 415 unsupported_media_type"),
        (429, None, "keep", "http 429"), (503, {"code": "ERROR406"}, "keep", "http 503"),
    ]
    for status, body, what, reason in cases:
        assert nb.verdict(status, body) == (what, reason), (status, body)


def test_401_logs_in_again_and_resends_the_same_message_id_once():
    root = support.tmpdir("nb")
    _registered(root)
    cloud, http, _ = _adapter([_login(), FakeResp(401), _login("tok-2"), FakeResp(201)],
                              root=root)
    res = support.run(cloud.send([_rec(5)]))
    assert res.ok == ["1a-5"]
    data = [c[2]["json"] for c in http.calls if c[1].endswith("/data")]
    assert [d["data"]["message_id"] for d in data] == ["1a-5", "1a-5"]
    assert [d["accessToken"] for d in data] == ["tok-1", "tok-2"]
    assert cloud.renewals == 2
    # ERROR404 (token missing) is handled the same way; a second 401 keeps the record
    cloud2, http2, _ = _adapter([_login(), FakeResp(400, {"code": "ERROR404"}),
                                 _login("tok-2"), FakeResp(401)], root=root)
    res = support.run(cloud2.send([_rec(6)]))
    assert res.ok == [] and res.dead == [] and res.failed
    support.rmtree(root)


def test_a_rejected_record_is_dead_lettered_and_the_next_ones_still_go():
    root = support.tmpdir("nb")
    _registered(root)
    cloud, http, _ = _adapter([_login(), FakeResp(400, {"code": "ERROR406",
                                                         "message": "data is missing."}),
                               FakeResp(201), FakeResp(201)], root=root)
    res = support.run(cloud.send([_rec(1), _rec(2), _rec(3)]))
    assert res.dead == [("1a-1", "ERROR406 data_missing")]
    assert res.ok == ["1a-2", "1a-3"] and not res.failed
    support.rmtree(root)


def test_a_busy_login_keeps_everything_and_passes_retry_after_on():
    cloud, http, root = _adapter([FakeResp(503, b"", {"retry-after": "3"})])
    res = support.run(cloud.send([_rec(1), _rec(2)]))
    assert res.failed and res.ok == [] and res.dead == [] and res.wait_ms == 3000
    assert http.paths() == ["devices/login"]
    support.rmtree(root)


def test_busy_or_broken_server_keeps_records_and_passes_retry_after_on():
    root = support.tmpdir("nb")
    _registered(root)
    cloud, http, _ = _adapter([_login(), FakeResp(201), FakeResp(503, b"<html>",
                                                                 {"retry-after": "4"})],
                              root=root)
    res = support.run(cloud.send([_rec(1), _rec(2), _rec(3)]))
    assert res.ok == ["1a-1"] and res.dead == [] and res.failed and res.wait_ms == 4000
    assert len(http.calls) == 3  # stopped at the first record that must wait
    support.rmtree(root)


def test_405_registers_again_and_retries_once_then_holds():
    root = support.tmpdir("nb")
    _registered(root)
    cloud, http, _ = _adapter([_login(), FakeResp(405), FakeResp(201), FakeResp(201)],
                              root=root)
    res = support.run(cloud.send([_rec(1)]))
    assert res.ok == ["1a-1"]
    assert http.paths() == ["devices/login", "devices/data", "devices", "devices/data"]
    cloud2, http2, _ = _adapter([_login(), FakeResp(405), FakeResp(201), FakeResp(405)],
                                root=root)
    res = support.run(cloud2.send([_rec(2)]))
    assert res.ok == [] and res.dead == [] and res.failed and res.wait_ms == 300000
    support.rmtree(root)


def test_network_error_propagates_but_keeps_what_was_already_decided():
    root = support.tmpdir("nb")
    _registered(root)
    cloud, http, _ = _adapter([_login(), OSError(104)], root=root)
    support.run(support.araises(OSError, cloud.send([_rec(1)])))
    cloud2, http2, _ = _adapter([_login(), FakeResp(201), OSError(104)], root=root)
    res = support.run(cloud2.send([_rec(1), _rec(2)]))
    assert res.ok == ["1a-1"] and res.failed
    support.rmtree(root)


def test_close_logs_out_and_never_raises():
    root = support.tmpdir("nb")
    _registered(root)
    cloud, http, _ = _adapter([_login(), FakeResp(200)], root=root)
    support.run(cloud.authenticate())
    support.run(cloud.close())
    assert http.paths()[-1] == "devices/logout" and http.closed
    assert http.calls[-1][2]["json"] == {"accessToken": "tok-1", "deviceKey": "PRD7_dev-01"}
    assert cloud.token is None and cloud.token_due()
    cloud2, http2, _ = _adapter([_login(), OSError(111)], root=root)
    support.run(cloud2.authenticate())
    support.run(cloud2.close())  # a dead network at shutdown is only logged
    assert http2.closed
    cloud3, http3, _ = _adapter([], root=root)
    support.run(cloud3.close())  # never logged in: nothing to log out
    assert http3.calls == []
    support.rmtree(root)


def test_secrets_are_redacted_from_log_lines():
    root = support.tmpdir("nb")
    _registered(root)
    cloud, http, _ = _adapter([FakeResp(200, {"AccessToken": "tok-very-secret-42"})],
                              root=root)
    support.run(cloud.authenticate())
    line = log.redact("t=tok-very-secret-42 basic=%s" % cloud._basic)
    assert "tok-very-secret-42" not in line and cloud._basic[6:] not in line
    support.rmtree(root)


def test_app_builds_the_adapter_from_a_validated_config():
    from firmware import app, config

    root = support.tmpdir("nb")
    support.write(root + "/ca.pem", "-----BEGIN CERTIFICATE-----\n")
    cfg = config.validate({"cloud": {"platform": "nubison", "api_url": "https://127.0.0.1:9",
                                     "ca_file": "ca.pem",
                                     "client_id": "cli-abc", "client_secret": "nb-secret-xyz",
                                     "product_code": "PRD7", "device_id": 42,
                                     "model_name": "ESP32-SIM", "device_name": "gh"}}, root)
    cloud = app.make_cloud(cfg)
    assert isinstance(cloud, nb.Nubison) and cloud.device_key == "PRD7_42"
    assert cloud.token_due() and cloud.enabled_sensors is None and cloud.renew_at is None
    assert cloud._state_path == root + "/nubison.json"
    support.rmtree(root)


def test_only_a_201_accepts_data_anything_else_keeps_the_record_with_a_warning():
    # the spec's one success is 201 (no body, or JSON): a captive portal's page, a JSON
    # list, a 200 with nothing, a 201 carrying HTML or a list are not the cloud's word
    html = b"<html><head><title>Sign in to the guest network</title></head></html>"
    for answer, seen in ((FakeResp(200, html), "not JSON"), (FakeResp(200, b"[1]"),
                                                             "JSON list"),
                         (FakeResp(200, b""), "empty body"), (FakeResp(204), "empty body"),
                         (FakeResp(201, html), "<html>"), (FakeResp(201, b"[]"),
                                                           "JSON list")):
        root = support.tmpdir("nb")
        _registered(root)
        cloud, http, _ = _adapter([_login(), answer], root=root)
        lines: list = []
        log.set_sink(lines.append)
        try:
            res = support.run(cloud.send([_rec(1), _rec(2)]))
        finally:
            log.set_sink(None)
        assert res.ok == [] and res.dead == [] and res.failed, seen
        assert len(http.calls) == 2  # the next record waits too
        warns = [line for line in lines if " W nubison: " in line]
        assert len(warns) == 1 and seen in warns[0] and str(answer.status) in warns[0], lines
        support.rmtree(root)


def test_a_registration_answered_by_something_else_than_201_is_not_kept():
    cloud, http, root = _adapter([_login(), FakeResp(200, b"<html>portal</html>")])
    assert support.run(cloud.authenticate()) == 0
    assert not cloud.registered and cloud.token_due()
    support.rmtree(root)
