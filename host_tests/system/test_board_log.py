"""`make logs PORT=...` and `make status PORT=...` against the virtual board running the
firmware (its cloud unreachable): the log lines arrive with wall-clock times and the fix for
the error, the status says offline and why, and neither stops the app."""
import json
import os
import re

from test_deploy import Board, make
from test_improv_wifi import _install

from tools import deploy as deploytool


def test_make_logs_and_status_read_a_running_board(tmp_path):
    board = Board(str(tmp_path))
    try:
        _install(board, str(tmp_path))
        cfg_path = os.path.join(board.root, "config.json")
        with open(cfg_path) as f:
            cfg = json.load(f)
        del cfg["secrets_file"]  # configured: the app runs
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
        deploytool.mpremote(board.port, "reset", timeout=30)

        rc, out, err = make("status", "PORT=" + board.port, timeout=60)
        assert rc == 0, out + err
        m = re.search(r"^board on \S+: offline for ([\dminsh]+) \((\w+\(.*\))\); (\d+) "
                      r"readings, 0 delivered, (\d+) pending, 0 dead, 0 applied "
                      r"\(renewals=0\); heap free \d+ \(at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)$",
                      out, re.M)
        assert m, out
        assert "refused" in m.group(2) or "111" in m.group(2), out
        # the cause, logged with its fix, shows among the recent lines
        assert re.search(r"^  recent: \S+ W app: \w+: %s.*; fix: nothing listens there: check "
                         r"cloud.api_url's host and port$" % re.escape(m.group(2)), out, re.M), out

        rc, out, err = make("logs", "PORT=" + board.port, "SECONDS=4", timeout=60)
        assert rc == 0, out + err
        assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ I status: readings=\d+ .* "
                         r"link=offline\([\dminsh]+\) error=\w+\(",
                         out, re.M), out
        # the same failure, every second (auth, uplink), is not logged again: only counted
        assert " W app: " not in out, out

        # neither stopped the app: it still samples
        before = int(re.findall(r"status: readings=(\d+)", out)[-1])
        rc, out, err = make("status", "PORT=" + board.port, timeout=60)
        assert rc == 0 and int(re.search(r"; (\d+) readings", out).group(1)) > before, out
    finally:
        board.stop()


def test_make_status_says_when_the_app_is_not_running(tmp_path):
    board = Board(str(tmp_path))  # nothing installed: a REPL, no app
    try:
        rc, out, err = make("status", "PORT=" + board.port, timeout=90)
        assert rc != 0
        assert "no status line within 30 s; the app is not running" in out, out
    finally:
        board.stop()
