"""The local NUBISON cloud (tools/nubison_cloud.py) over real TLS: the spec's calls, codes and
messages, de-duplication on data.message_id, the fault knobs; then the firmware's adapter
(CPython side) against it through a whole session: login, register once, data, 401, logout."""
import asyncio
import base64
import json
import os
import ssl
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import peers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.clouds import nubison as nb
from firmware.outbox import Record
from tools import nubison_cloud as nc
from tools import run_local


class Api:
    def __init__(self, info):
        self.info = info
        self.ctx = ssl.create_default_context(cafile=info["ca_file"])

    def post(self, path, body=None, form=None, auth="ok", ctype=None, raw=None):
        hdrs = {}
        if auth == "ok":
            auth = "Basic " + base64.b64encode(("%s:%s" % (
                self.info["client_id"], self.info["client_secret"])).encode()).decode()
        if auth:
            hdrs["Authorization"] = auth
        data = raw
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        if ctype:
            hdrs["Content-Type"] = ctype
        req = urllib.request.Request(self.info["api_url"] + path, data or b"", hdrs,
                                     method="POST")
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=10) as r:
                return r.status, _parse(r.read()), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, _parse(e.read()), dict(e.headers)

    def login(self, key=nc.DEVICE_KEY):
        status, body, _ = self.post("/devices/login", form={"deviceKey": key})
        assert status == 200, body
        return body["AccessToken"]

    def register(self, key, tok):
        return self.post("/devices", {"accessToken": tok, "deviceKey": key,
                                      "deviceName": "n", "modelName": nc.MODELS[0]})[0]

    def data(self, key, tok, data):
        return self.post("/devices/data", {"accessToken": tok, "deviceKey": key,
                                           "data": data})


def _parse(raw):
    try:
        return json.loads(raw)
    except ValueError:
        return raw


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    data = str(tmp_path_factory.mktemp("nubison"))
    proc, info = run_local.start_cloud(data, token_ttl=3, platform="nubison")
    yield data, info, Api(info)
    proc.kill()
    proc.wait(10)


def _key(name):
    return nc.PRODUCT_CODE + "_" + name


def test_cloud_json_follows_the_run_local_contract(cloud):
    data, info, api = cloud
    dc = info["device_cloud"]
    assert dc["platform"] == "nubison" and dc["api_url"] == info["api_url"]
    assert {"client_id", "client_secret", "product_code", "device_id", "model_name",
            "device_name"} <= set(dc)
    assert open(info["ca_file"]).read().startswith("-----BEGIN CERTIFICATE")
    cfg = run_local.device_config(info)
    assert cfg["cloud"]["ca_file"] == "ca.pem" and cfg["cloud"]["product_code"] == "NBPRD01"


def test_login_errors_in_the_spec_order_with_its_messages(cloud):
    _, info, api = cloud
    assert api.post("/devices/login", form={"deviceKey": _key("a")}, auth=None)[:2] == \
        (400, {"code": "ERROR401", "message": "authorization header does not exist."})
    assert api.post("/devices/login", form={})[:2] == \
        (400, {"code": "ERROR402", "message": "deviceKey is missing."})
    bad = "Basic " + base64.b64encode(b"%s:wrong" % info["client_id"].encode()).decode()
    assert api.post("/devices/login", form={"deviceKey": _key("a")}, auth=bad)[:2] == \
        (400, {"code": "ERROR403", "message": "client is not valid."})
    # the public example's mistake: the word Basic encoded too
    wrong = "Basic " + base64.b64encode(("Basic %s:%s" % (
        info["client_id"], info["client_secret"])).encode()).decode()
    assert api.post("/devices/login", form={"deviceKey": _key("a")}, auth=wrong)[1][
        "code"] == "ERROR403"
    assert api.post("/devices/login", form={"deviceKey": "OTHER_a"})[0] == 405
    assert api.post("/devices/login", raw=b"deviceKey=x", ctype="text/plain")[0] == 415
    status, body, hdrs = api.post("/devices/login", form={"deviceKey": _key("a")})
    assert status == 200 and list(body) == ["AccessToken"] and body["AccessToken"]
    status, body, _ = api.post("/devices/login", {"deviceKey": _key("a")})  # JSON variant
    assert status == 200 and body["AccessToken"]


def test_calls_need_json_a_device_key_and_a_live_token_of_that_device(cloud):
    _, _, api = cloud
    key = _key("b")
    tok = api.login(key)
    other = api.login(_key("b2"))
    for path in ("/devices", "/devices/data", "/devices/logout"):
        assert api.post(path, raw=b"accessToken=x", ctype="application/x-www-form-urlencoded"
                        )[0] == 415
        assert api.post(path, {"accessToken": tok})[1]["code"] == "ERROR402"
        assert api.post(path, {"deviceKey": key})[1]["code"] == "ERROR404"
        assert api.post(path, {"deviceKey": key, "accessToken": other})[:2] == \
            (401, {"message": "accessToken is not valid."})
        assert api.post(path, raw=b"[1,2]", ctype="application/json")[1]["code"] == "ERROR402"
    assert api.post("/devices", {"accessToken": tok, "deviceKey": key,
                                 "deviceName": "n"})[1]["code"] == "ERROR406"
    assert api.post("/devices", {"accessToken": tok, "deviceKey": key, "deviceName": "n",
                                 "modelName": "NOPE"})[1]["code"] == "ERROR406"


def test_data_is_stored_once_per_message_id_and_replays_answer_201(cloud):
    data, _, api = cloud
    key = _key("c")
    tok = api.login(key)
    assert api.data(key, tok, {"message_id": "9-1", "value": "1"})[0] == 405  # unregistered
    assert api.register(key, tok) == 201
    assert api.register(key, tok) == 201  # again: counted, not duplicated
    for d in (None, "", {}, []):
        assert api.data(key, tok, d)[:2] == (400, {"code": "ERROR406",
                                                  "message": "data is missing."})
    first = api.data(key, tok, {"message_id": "9-1", "value": "1"})
    assert first[:2] == (201, b"")
    assert api.data(key, tok, {"message_id": "9-1", "value": "1"})[0] == 201
    assert api.data(key, tok, {"message_id": "9-1", "value": "other"})[0] == 201
    assert api.data(key, tok, 42)[0] == 201  # no message_id: stored as it comes
    rows = [r for r in nc.data_rows(data) if r["device_key"] == key]
    assert [r["data"] for r in rows] == [{"message_id": "9-1", "value": "1"}, 42]
    assert (rows[0]["replays"], rows[0]["conflicts"]) == (2, 1)
    regs = [r for r in nc.registrations(data) if r["device_key"] == key]
    assert [r["registrations"] for r in regs] == [2]


def test_tokens_expire_after_the_ttl_and_logout_deletes_them(cloud):
    data, _, api = cloud
    key = _key("d")
    before = time.time()
    tok = api.login(key)
    after = time.time()
    assert api.register(key, tok) == 201
    # the token's deadline is the ttl (3 s) after its login; moving it to the past stands in
    # for waiting those seconds out (the server compares it with its own clock)
    (expires,) = nc.db(data).execute("select expires from token where token=?",
                                     (tok,)).fetchone()
    assert before + 3 <= expires <= after + 3
    nc.db(data).execute("update token set expires=? where token=?", (before - 1, tok))
    assert api.data(key, tok, {"message_id": "1-1"})[0] == 401
    tok = api.login(key)
    assert api.post("/devices/logout", {"accessToken": tok, "deviceKey": key})[:2] == \
        (200, b"")
    assert api.data(key, tok, {"message_id": "1-1"})[0] == 401
    assert [e["event"] for e in nc.timeline(data) if e["device_key"] == key] == \
        ["login", "register", "unauthorized", "login", "logout", "unauthorized"]
    unreg = _key("d2")
    tok = api.login(unreg)
    assert api.post("/devices/logout", {"accessToken": tok, "deviceKey": unreg})[0] == 405


def test_fault_knobs_each_take_effect_for_the_next_calls_only(cloud):
    data, _, api = cloud
    key = _key("e")
    tok = api.login(key)
    assert api.register(key, tok) == 201
    nc.set_fault(data, "503", count=2, retry_after=3)
    s1, b1, h1 = api.data(key, tok, {"message_id": "e-1"})
    assert (s1, h1.get("Retry-After")) == (503, "3") and api.data(key, tok, {})[0] == 503
    assert api.data(key, tok, {"message_id": "e-1"})[0] == 201
    nc.set_fault(data, "429", retry_after=1)
    assert api.data(key, tok, {"message_id": "e-2"})[0] == 429
    nc.set_fault(data, "401")
    assert api.data(key, tok, {"message_id": "e-2"})[0] == 401
    tok = api.login(key)
    nc.set_fault(data, "garbage")
    status, body, _ = api.data(key, tok, {"message_id": "e-3"})
    assert status == 201 and body == b'{"AccessToken": "tru'  # handled, answer broken
    nc.set_fault(data, "wrong-types", count=2)
    assert api.post("/devices/login", form={"deviceKey": key})[:2] == \
        (200, {"AccessToken": 12345, "expires": "soon"})
    assert api.data(key, tok, {"message_id": "e-4"})[0] == 500  # not handled
    nc.set_fault(data, "login-json")
    assert api.post("/devices/login", form={"deviceKey": key})[0] == 415
    assert api.post("/devices/login", {"deviceKey": key})[0] == 200
    nc.set_fault(data, "slow", seconds=1)
    t0 = time.time()
    assert api.data(key, tok, {"message_id": "e-5"})[0] == 201
    assert time.time() - t0 >= 0.9
    nc.set_fault(data, "lost-answer")
    assert api.post("/devices/login", form={"deviceKey": key})[0] == 200  # only data calls
    with pytest.raises((ConnectionError, urllib.error.URLError, OSError)):
        api.data(key, tok, {"message_id": "e-6"})  # stored, then the connection is reset
    assert api.data(key, tok, {"message_id": "e-6"})[0] == 201  # the replay is answered
    rows = [r for r in nc.data_rows(data) if r["device_key"] == key]
    assert [r["message_id"] for r in rows] == ["e-1", "e-3", "e-5", "e-6"]
    assert rows[-1]["replays"] == 1 and nc.count(data, "lost-answer") == 1
    with pytest.raises(ValueError):
        nc.set_fault(data, "nonsense")


class Cfg:
    def __init__(self, root, info, device_id):
        self.root = root
        self.ca_path = info["ca_file"]
        self.raw = {"cloud": dict(info["device_cloud"], device_id=device_id)}

    def get(self, key, default=None):
        return self.raw.get(key, default)


def test_the_adapter_through_a_whole_session_against_the_cloud(cloud, tmp_path):
    data, info, _ = cloud
    key = _key("f")

    async def session(root):
        a = nb.Nubison(Cfg(root, info, "f"))
        assert await a.authenticate() == 0 and a.registered
        recs = [Record("2a-%x" % i, "sensor", 7, str(i), 1777025700) for i in range(3)]
        assert (await a.send(recs)).ok == ["2a-0", "2a-1", "2a-2"]
        nc.set_fault(data, "401")  # token expires: one new login, same message_id again
        res = await a.send([Record("2a-3", "command", 4, "50", 1777025700, "des_1",
                                   "applied")])
        assert res.ok == ["2a-3"] and a.logins == 2
        nc.unregister(data, key)  # the cloud forgot the device: 405, register, retry
        assert (await a.send([Record("2a-4", "sensor", 8, "4", 1777025700)])).ok == ["2a-4"]
        await a.close()
        # a second boot with the same data root logs in but does not register again
        b = nb.Nubison(Cfg(root, info, "f"))
        assert await b.authenticate() == 0
        assert (await b.send(recs[:1])).ok == ["2a-0"]  # a replay: still delivered
        await b.close()

    asyncio.run(session(str(tmp_path)))
    events = [e["event"] for e in nc.timeline(data) if e["device_key"] == key]
    assert events == ["login", "register", "data", "data", "data", "unauthorized", "login",
                      "data", "data_refused", "register", "data", "logout", "login",
                      "replay", "logout"]
    rows = {r["message_id"]: r for r in nc.data_rows(data) if r["device_key"] == key}
    assert sorted(rows) == ["2a-0", "2a-1", "2a-2", "2a-3", "2a-4"]
    assert rows["2a-3"]["data"] == {"message_id": "2a-3", "kind": "command", "id": 4,
                                    "value": "50", "time": "2026-04-24T10:15:00Z",
                                    "desired_id": "des_1", "report_status": "applied"}
    assert rows["2a-0"]["replays"] == 1 and not any(r["conflicts"] for r in rows.values())


def test_the_adapter_under_micropython_logs_in_as_json_after_415_and_logs_out(cloud,
                                                                             tmp_path):
    data, info, _ = cloud
    key = _key("g")
    nc.set_fault(data, "login-json")  # the next form login gets 415
    spec = {"root": str(tmp_path), "ca": info["ca_file"],
            "cloud": dict(info["device_cloud"], device_id="g"),
            "records": [["3b-%x" % i, "sensor", 7, str(i), 1777025700] for i in range(5)]}
    out = peers.json_lines(peers.run_mp_spec("nubison_driver.py", spec).stdout)
    assert [o["step"] for o in out] == ["auth", "send", "close"], out
    assert out[0] == {"step": "auth", "wait": 0, "registered": True, "due": False}
    assert out[1]["ok"] == ["3b-%x" % i for i in range(5)] and not out[1]["failed"]
    assert out[2] == {"step": "close", "due": True, "handshakes": 1}  # one kept-alive TLS
    events = [(e["event"], e["detail"]) for e in nc.timeline(data) if e["device_key"] == key]
    assert events[0] == ("login", "application/json") and events[1][0] == "register"
    assert [e for e, _ in events[2:]] == ["data"] * 5 + ["logout"]
    assert nc.tokens(data) and not [t for t in nc.tokens(data) if t in json.dumps(out)]


# -- fuzz: whatever a cloud answers, the adapter decides something and never crashes ------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) |
    st.sampled_from(["ERROR401", "ERROR402", "ERROR403", "ERROR404", "ERROR405", "ERROR406",
                     "tok-fuzz-1", ""]) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["code", "message", "AccessToken", "accessToken", "x"]), inner,
        max_size=3), max_leaves=8)
_answers = st.tuples(st.sampled_from([200, 201, 204, 400, 401, 403, 404, 405, 415, 429, 500,
                                      503]),
                     st.one_of(_json_values.map(lambda v: json.dumps(v).encode()),
                               st.binary(max_size=24)),
                     st.sampled_from([None, "1", "x", "-5", "Wed, 21 Oct 2015 07:28:00 GMT"]))


class _Resp:
    def __init__(self, status, body, retry_after):
        self.status, self.body = status, body
        self.headers = {} if retry_after is None else {"retry-after": retry_after}

    def json(self):
        return json.loads(self.body)

    def retry_after_ms(self):
        from firmware.backoff import retry_after_ms

        return retry_after_ms(self.headers.get("retry-after"))


class _Script:
    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = 0

    async def request(self, method, url, **kw):
        self.calls += 1
        if not self.answers:
            raise ConnectionResetError("script ended")
        return _Resp(*self.answers.pop(0))

    async def close(self):
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(_answers, max_size=8), st.booleans())
def test_fuzzed_answers_never_crash_the_adapter(answers, registered):
    with tempfile.TemporaryDirectory() as root:
        if registered:
            with open(os.path.join(root, "nubison.json"), "w") as f:
                json.dump({"registered": "P_d"}, f)
        cfg = type("C", (), {"root": root, "ca_path": None, "get": lambda self, k, d=None: {
            "cloud": {"api_url": "https://x", "client_id": "c", "client_secret": "fuzz-s3cret",
                      "product_code": "P", "device_id": "d", "model_name": "M"}}.get(k, d)})()
        http = _Script(answers)
        a = nb.Nubison(cfg, http)
        recs = [Record("5-%d" % i, "sensor", 7, str(i), 1777025700) for i in range(3)]

        async def go():
            try:
                res = await a.send(recs)
            except ConnectionResetError:
                return None  # the network "failed": the app keeps everything
            await a.close()
            return res

        res = asyncio.run(go())
        if res is not None:
            ok, dead = res.ok, [m for m, _ in res.dead]
            assert not set(ok) & set(dead)
            assert set(ok) | set(dead) <= {r.message_id for r in recs}
            assert res.failed or len(ok) + len(dead) == 3
            assert isinstance(res.wait_ms, int) and res.wait_ms >= 0
