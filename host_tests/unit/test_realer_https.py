import json

import support
from firmware import log
from firmware.clouds import realer_https as rh
from firmware.outbox import Record


def test_sensor_record_body_matches_the_spec_example():
    rec = Record("1a-7", "sensor", 7, "21.4", 1777025700)
    assert rh.to_wire(rec) == {"sensor_id": 7, "value": "21.4",
                                   "value_received_at": "2026-04-24T10:15:00Z",
                                   "message_id": "1a-7"}


def test_command_reports_carry_status_only_when_not_applied():
    applied = Record("1-1", "command", 3, "1", 1777025700, "des_1", "applied")
    rejected = Record("1-2", "command", 3, "0", 1777025700, "des_2", "rejected")
    local = Record("1-3", "command", 3, "1", 1777025700)
    assert rh.to_wire(applied)["desired_id"] == "des_1"
    assert "report_status" not in rh.to_wire(applied)
    assert rh.to_wire(rejected)["report_status"] == "rejected"
    body = rh.to_wire(local)
    assert "desired_id" not in body and "report_status" not in body
    assert body["command_id"] == 3 and "sensor_id" not in body


def test_verdicts_follow_the_runtime_table():
    ok, dead, keep = "ok", "dead", "keep"
    cases = [
        (201, {"code": 2000, "status": "created"}, ok),
        (200, {"code": 2000, "status": "idempotent"}, ok),
        (201, {"status": "created"}, ok),  # code may be absent
        (200, {"code": "2000", "status": "idempotent"}, ok),
        (200, {"code": 2000}, keep),  # no status: not the documented success
        (204, None, keep),
        (200, [{"status": "created"}], keep),
        (201, {"status": "created", "code": 4000}, keep),
        (503, {"status": "created"}, keep),
        (409, {"code": 4009, "error": {"type": "message_conflict"}}, dead),
        (422, {"error": "validation_failed"}, dead),  # error as a plain string
        (413, {"code": 4013, "error": {"type": "payload_too_large"}}, dead),
        (415, None, dead),
        (429, {"code": 4029, "error": {"type": "rate_limited"}}, keep),
        (503, None, keep),
        (402, {"error": {"type": "subscription_inactive"}}, keep),
        (403, {"error": {"type": "insufficient_scope"}}, keep),
        (200, {"code": 4000, "error": {"type": "mystery"}}, keep),
    ]
    for status, body, want in cases:
        assert rh.verdict(status, body)[0] == want, (status, body)


def test_error_type_reads_every_documented_shape():
    assert rh.error_type({"error": {"type": "invalid_token"}}) == "invalid_token"
    assert rh.error_type({"error": "rate_limited"}) == "rate_limited"
    assert rh.error_type({"code": 4000}) is None
    assert rh.error_type("not json") is None


class FakeResp:
    def __init__(self, status, body, headers=None):
        self.status = status
        self.body = body
        self.headers = headers or {}

    def json(self):
        if isinstance(self.body, Exception):
            raise self.body
        if isinstance(self.body, (bytes, str)):
            return json.loads(self.body)  # ValueError on HTML or empty, like http.Response
        return self.body

    def retry_after_ms(self):
        v = self.headers.get("retry-after")
        return int(v) * 1000 if v else None


class FakeHttp:
    """Answers from a script; records what was asked."""

    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    async def request(self, method, url, **kw):
        self.calls.append((method, url, kw))
        return self.answers.pop(0)


class Cfg:
    ca_path = None

    def get(self, key, default=None):
        return {"cloud": {"api_url": "https://cloud", "device_id": 12345,
                          "client_id": "cdv_x", "client_secret": "s3cret-xyz"}}.get(key, default)


def _token():
    return FakeResp(200, {"access_token": "tok-1", "renew_after": 100})


def test_batch_results_split_into_ok_dead_and_kept():
    recs = [Record("1-%d" % i, "sensor", 7, str(i), 1777025700) for i in range(4)]
    answers = [_token(), FakeResp(200, {"code": 2000, "results": [
        {"message_id": "1-0", "status": "created"},
        {"message_id": "1-1", "status": "idempotent"},
        {"message_id": "1-2", "http_status": 409, "code": 4009,
         "error": {"type": "message_conflict"}}]})]  # 1-3 has no result: it stays
    cloud = rh.RealerHttps(Cfg(), FakeHttp(answers))
    res = support.run(cloud.send(recs))
    assert res.ok == ["1-0", "1-1"]
    assert [d[0] for d in res.dead] == ["1-2"]
    assert res.failed


def test_401_renews_the_token_and_retries_once_with_the_same_message_id():
    rec = Record("1-9", "sensor", 7, "5", 1777025700)
    http = FakeHttp([_token(), FakeResp(401, {"error": {"type": "invalid_token"}}),
                     FakeResp(200, {"access_token": "tok-2", "renew_after": 100}),
                     FakeResp(201, {"code": 2000, "status": "created"})])
    cloud = rh.RealerHttps(Cfg(), http)
    res = support.run(cloud.send([rec]))
    assert res.ok == ["1-9"]
    posts = [c for c in http.calls if c[1].endswith("/feed-data")]
    assert [c[2]["json"]["message_id"] for c in posts] == ["1-9", "1-9"]
    assert posts[1][2]["headers"]["Authorization"] == "Bearer tok-2"
    assert cloud.renewals == 2


def test_429_keeps_the_record_and_passes_retry_after_on():
    rec = Record("1-5", "sensor", 7, "5", 1777025700)
    http = FakeHttp([_token(), FakeResp(429, {"error": {"type": "rate_limited"}},
                                        {"retry-after": "7"})])
    res = support.run(rh.RealerHttps(Cfg(), http).send([rec]))
    assert res.ok == [] and res.dead == [] and res.failed and res.wait_ms == 7000


def test_refused_client_is_a_named_error():
    http = FakeHttp([FakeResp(401, {"error": {"type": "unauthorized"}})])
    e = support.raises(rh.RealerError, support.run, rh.RealerHttps(Cfg(), http).authenticate())
    assert "401" in str(e)


HTML = b"<!DOCTYPE html><html><head><title>Hotel Wi-Fi login</title></head></html>"


def _logged(coro):
    """(what the coroutine returned, the log lines it wrote)."""
    lines: list = []
    log.set_sink(lines.append)
    try:
        return support.run(coro), lines
    finally:
        log.set_sink(None)


def test_a_2xx_that_is_not_the_documented_success_keeps_the_record_with_one_warning():
    # a captive portal's page, a JSON list, an empty body, code 2000 without a status
    for answer, seen in ((FakeResp(200, HTML), "<!DOCTYPE html><html>"),
                         (FakeResp(200, b"[]"), "JSON list"),
                         (FakeResp(201, b""), "empty body"),
                         (FakeResp(200, {"code": 2000, "message_id": "1-1"}), "message_id")):
        rec = Record("1-1", "sensor", 7, "5", 1777025700)
        cloud = rh.RealerHttps(Cfg(), FakeHttp([_token(), answer]))
        res, lines = _logged(cloud.send([rec]))
        assert res.ok == [] and res.dead == [] and res.failed, seen
        warns = [line for line in lines if " W realer: " in line]
        assert len(warns) == 1 and seen in warns[0] and str(answer.status) in warns[0], lines
        assert "s3cret" not in warns[0] and "tok-1" not in warns[0]


def test_a_batch_item_without_a_status_keeps_its_record():
    recs = [Record("1-%d" % i, "sensor", 7, str(i), 1777025700) for i in range(4)]
    answers = [_token(), FakeResp(200, {"code": 2000, "results": [
        {"message_id": "1-0", "status": "created"},
        {"message_id": "1-1"},  # only the id: not an answer
        {"message_id": "1-2", "http_status": 201, "code": 2000},  # no status either
        {"message_id": "1-3", "status": "idempotent"}]})]
    cloud = rh.RealerHttps(Cfg(), FakeHttp(answers))
    res, lines = _logged(cloud.send(recs))
    assert res.ok == ["1-0", "1-3"] and res.dead == [] and res.failed
    warns = [line for line in lines if " W realer: " in line]
    assert len(warns) == 1 and "2 of 4" in warns[0] and "1-1" in warns[0], lines


def test_a_batch_answer_that_is_not_a_results_object_keeps_every_record():
    recs = [Record("1-%d" % i, "sensor", 7, str(i), 1777025700) for i in range(3)]
    for answer, seen in ((FakeResp(200, HTML), "not JSON"),
                         (FakeResp(200, b'[{"message_id": "1-0", "status": "created"}]'),
                          "JSON list"),
                         (FakeResp(200, b""), "empty body")):
        cloud = rh.RealerHttps(Cfg(), FakeHttp([_token(), answer]))
        res, lines = _logged(cloud.send(recs))
        assert res.ok == [] and res.dead == [] and res.failed, seen
        warns = [line for line in lines if " W realer: " in line]
        assert len(warns) == 1 and seen in warns[0], lines


def test_the_warning_never_carries_a_stub_of_a_secret_the_page_echoes():
    # a proxy page echoing the request: the token crosses the excerpt's 40-character cut
    page = b"<html>You sent: Bearer tok-echoed-0123456789abcdef</html>"
    rec = Record("1-1", "sensor", 7, "5", 1777025700)
    http = FakeHttp([FakeResp(200, {"access_token": "tok-echoed-0123456789abcdef",
                                    "renew_after": 100}), FakeResp(200, page)])
    res, lines = _logged(rh.RealerHttps(Cfg(), http).send([rec]))
    warns = [line for line in lines if " W realer: " in line]
    assert res.failed and len(warns) == 1 and "***" in warns[0], lines
    assert "tok-e" not in warns[0], warns
