"""The helpers the adapters and the state keepers share: state files replaced whole
(firmware/statefile.py), one path join (config.join) and one JSON reading of an answer
(firmware.clouds.answer_json)."""
import json
import os

import support
from firmware import config, statefile
from firmware.clouds import answer_json


def test_write_replaces_the_file_and_leaves_no_temporary():
    root = support.tmpdir("state")
    try:
        path = root + "/count"
        statefile.write(path, "1\n")
        statefile.write(path, "2\n")
        with open(path) as f:
            assert f.read() == "2\n"
        statefile.write(path, b"\x00\xff")
        with open(path, "rb") as f:
            assert f.read() == b"\x00\xff"
        assert sorted(os.listdir(root)) == ["count"], os.listdir(root)
    finally:
        support.rmtree(root)


class _Bad:
    def __repr__(self):
        raise ValueError("cannot be written")


def test_write_json_that_fails_half_way_keeps_the_old_file():
    root = support.tmpdir("state")
    try:
        path = root + "/reg.json"
        statefile.write_json(path, {"id": "dev-1", "done": [1, 2]})
        with open(path) as f:
            assert json.load(f) == {"id": "dev-1", "done": [1, 2]}
        # the dump fails after it started writing the temporary file (CPython: not JSON;
        # MicroPython prints the object, and printing it raises)
        support.raises(Exception, statefile.write_json, path, {"id": "dev-2", "x": _Bad()})
        with open(path) as f:
            assert json.load(f) == {"id": "dev-1", "done": [1, 2]}  # the old content, whole
    finally:
        support.rmtree(root)


def test_join_takes_every_spelling_of_the_current_directory():
    for root in (None, "", "."):
        assert config.join(root, "state.json") == "state.json", root
    assert config.join("/data", "x.json") == "/data/x.json"
    assert config.join("/data/", "x.json") == "/data/x.json"
    assert config.join("/", "x.json") == "/x.json"


class _Resp:
    def __init__(self, body):
        self.body = body

    def json(self):
        return json.loads(self.body)


def test_answer_json_is_none_for_a_body_that_is_not_json():
    assert answer_json(_Resp('{"a": 1}')) == {"a": 1}
    assert answer_json(_Resp("<html>portal</html>")) is None
    assert answer_json(_Resp("")) is None
