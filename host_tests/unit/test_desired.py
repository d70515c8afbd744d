"""Desired-state bookkeeping and apply_desired, including crashes between its steps, on both
runtimes. A reboot is modelled by building a new DesiredState and a new board from the same
data root while the outbox (persistent) keeps its records."""
import os

import support
from firmware import desired
from firmware.board.factory import make_board
from firmware.desired import DesiredError, DesiredState, apply_desired
from firmware.outbox import Outbox

NOW = 1777025700
COMMANDS = [
    {"id": 3, "driver": "sim", "kind": "switch", "safe_value": 0},
    {"id": 4, "driver": "sim", "kind": "level", "min": 0, "max": 100, "safe_value": 10},
]


class PowerCut(Exception):
    """Stands for the power going away at that exact point."""


class Box(Outbox):
    """The real outbox, with the power cut just before or just after a durable append."""

    def __init__(self, root):
        super().__init__(root + "/outbox")
        self.cut_before = False  # power lost before the record became durable
        self.cut_after = False  # power lost right after append returned

    def append(self, kind, source, value, t, desired_id=None, report_status=None):
        if self.cut_before:
            raise PowerCut("before append")
        mid = super().append(kind, source, value, t, desired_id, report_status)
        if self.cut_after:
            raise PowerCut("after append")
        return mid

    @property
    def records(self):
        return [(r.kind, r.source, r.value, r.t, r.desired_id, r.report_status)
                for r in self.pending(100)]

    def reports(self, desired_id):
        return [r for r in self.records if r[4] == desired_id]


class CutAtSave(DesiredState):
    """A DesiredState whose n-th state write (1-based) never happens."""

    def __init__(self, root, cut_at):
        self.cut_at = cut_at
        self.saves = 0
        super().__init__(root)

    def _save(self):
        self.saves += 1
        if self.saves == self.cut_at:
            raise PowerCut("save %d" % self.saves)
        super()._save()


def _board():
    return make_board("sim", [], COMMANDS)


def _fresh():
    root = support.tmpdir("desired")
    return root, DesiredState(root), _board(), Box(root)


def test_decide_apply_duplicate_and_ring():
    root, st, _, _ = _fresh()
    try:
        assert st.decide(3, "d1", "1", now=NOW) == "apply"
        st.mark_handled(3, "d1")
        assert st.decide(3, "d1", "1", now=NOW) == "duplicate"
        assert st.decide(4, "d1", "5", now=NOW) == "apply"  # ids are per command
        for i in range(2, 7):
            st.mark_handled(3, "d%d" % i)
        assert st.handled(3) == ["d3", "d4", "d5", "d6"]  # bounded memory
        st.mark_handled(3, "d4")  # handled again moves to newest, no duplicate entry
        assert st.handled(3) == ["d3", "d5", "d6", "d4"]
        assert st.decide(3, 17, "1", now=NOW) == "apply"  # integer ids (DeviceHive) work
        st.mark_handled(3, 17)
        assert st.decide(3, "17", "1", now=NOW) == "duplicate"
    finally:
        support.rmtree(root)


def test_decide_stale_by_expiry_and_sequence():
    root, st, _, _ = _fresh()
    try:
        assert st.decide(3, "a", "1", expires_at=NOW, now=NOW) == "stale"
        assert st.decide(3, "a", "1", expires_at=NOW + 1, now=NOW) == "apply"
        st.mark_handled(3, "a", seq=5)
        assert st.last_seq(3) == 5
        assert st.decide(3, "b", "1", seq=4, now=NOW) == "stale"
        assert st.decide(3, "b", "1", seq=5, now=NOW) == "apply"
        assert st.decide(3, "b", "1", seq=6, now=NOW) == "apply"
        # a lower seq never moves the route back
        st.mark_handled(3, "c", seq=2)
        assert st.last_seq(3) == 5
        # routes are separate when named
        st.mark_handled(4, "x", seq=9, route="rte_b")
        assert st.decide(4, "y", "1", seq=8, now=NOW, route="rte_b") == "stale"
        assert st.decide(4, "y", "1", seq=8, now=NOW) == "apply"
    finally:
        support.rmtree(root)


def test_decide_refuses_malformed_input():
    root, st, _, _ = _fresh()
    try:
        support.raises(DesiredError, st.decide, 3, None, "1", now=NOW)
        support.raises(DesiredError, st.decide, 3, "", "1", now=NOW)
        support.raises(DesiredError, st.decide, 3, "a", "1", expires_at="2026-01-01T00:00:00Z",
                       now=NOW)
        support.raises(DesiredError, st.decide, 3, "a", "1", seq="7", now=NOW)
    finally:
        support.rmtree(root)


def test_state_survives_restart_via_rename():
    root, st, _, _ = _fresh()
    try:
        st.mark_handled(3, "d1", seq=4)
        st.mark_handled(4, "d9", seq=1, route="r4")
        # no temp file left behind (the outbox has its own directory)
        assert sorted(n for n in os.listdir(root) if n != "outbox") == ["desired.json"]
        again = DesiredState(root)
        assert again.decide(3, "d1", "1", now=NOW) == "duplicate"
        assert again.decide(3, "d2", "1", seq=3, now=NOW) == "stale"
        assert again.last_seq("r4") == 1
    finally:
        support.rmtree(root)


def test_corrupt_state_file_starts_empty():
    for text in ("{not json", "[1, 2]", '{"cmds": {"3": "x"}, "routes": {"3": "y"}}', ""):
        root = support.tmpdir("desired")
        try:
            support.write(root + "/desired.json", text)
            st = DesiredState(root)
            assert st.decide(3, "d1", "1", seq=1, now=NOW) == "apply"
            st.mark_handled(3, "d1")
            assert DesiredState(root).handled(3) == ["d1"]
        finally:
            support.rmtree(root)


def test_apply_reports_observed_value_once():
    root, st, board, ob = _fresh()
    try:
        assert apply_desired(board, ob, st, 3, "d1", "on", now=NOW) == "applied"
        assert ob.records == [("command", 3, "1", NOW, "d1", "applied")]
        assert board.actuators[3].value() == 1
        # the catalog keeps showing the same desired value: no re-apply, no re-report
        assert apply_desired(board, ob, st, 3, "d1", "on", now=NOW) == "duplicate"
        assert len(ob.records) == 1 and board.actuators[3].writes == 1
        assert apply_desired(board, ob, st, 4, "d2", "42.5", now=NOW) == "applied"
        assert ob.records[-1] == ("command", 4, "42.5", NOW, "d2", "applied")
        assert st.claims() == []
    finally:
        support.rmtree(root)


def test_apply_reports_the_physical_value_not_the_request():
    root, st, board, ob = _fresh()
    try:
        board.actuators[4].stuck = True
        assert apply_desired(board, ob, st, 4, "d1", 80, now=NOW) == "applied"
        assert ob.records == [("command", 4, "10", NOW, "d1", "applied")]
    finally:
        support.rmtree(root)


def test_rejections_report_current_value():
    root, st, board, ob = _fresh()
    try:
        act = board.actuators[4]
        assert apply_desired(board, ob, st, 4, "r1", 101, now=NOW) == "rejected"
        assert apply_desired(board, ob, st, 4, "r2", "abc", now=NOW) == "rejected"
        assert act.writes == 0  # invalid values never reach the hardware
        act.refuse_next = 1
        assert apply_desired(board, ob, st, 4, "r3", 50, now=NOW) == "rejected"
        act.fail_next = 1
        assert apply_desired(board, ob, st, 4, "r4", 60, now=NOW) == "rejected"
        assert [(r[2], r[4], r[5]) for r in ob.records] == [
            ("10", "r1", "rejected"), ("10", "r2", "rejected"),
            ("10", "r3", "rejected"), ("10", "r4", "rejected")]
        assert apply_desired(board, ob, st, 4, "r4", 60, now=NOW) == "duplicate"
        # a command this board does not have: rejected, with the requested value
        assert apply_desired(board, ob, st, 99, "u1", "5", now=NOW) == "rejected"
        assert ob.records[-1] == ("command", 99, "5", NOW, "u1", "rejected")
        # a malformed expiry is the message's fault: rejected, reported, handled
        assert apply_desired(board, ob, st, 3, "e1", "1", expires_at="soon", now=NOW) == \
            "rejected"
        assert ob.records[-1][4:] == ("e1", "rejected")
        assert board.actuators[3].value() == 0
        # no desired_id: nothing to report against
        n = len(ob.records)
        support.raises(DesiredError, apply_desired, board, ob, st, 3, None, "1", now=NOW)
        assert len(ob.records) == n
    finally:
        support.rmtree(root)


def test_stale_reports_without_applying():
    root, st, board, ob = _fresh()
    try:
        assert apply_desired(board, ob, st, 3, "s1", "1", expires_at=NOW - 5, now=NOW) == "stale"
        assert apply_desired(board, ob, st, 4, "s2", "70", seq=9, now=NOW) == "applied"
        assert apply_desired(board, ob, st, 4, "s3", "20", seq=8, now=NOW) == "stale"
        assert board.actuators[3].value() == 0 and board.actuators[4].value() == 70
        assert [(r[2], r[4], r[5]) for r in ob.records] == [
            ("0", "s1", "stale"), ("70", "s2", "applied"), ("70", "s3", "stale")]
    finally:
        support.rmtree(root)


def _crash_then_reboot(point, value="1"):
    """Apply desired d1 on command 3, cut the power at `point`, reboot, redeliver d1.
    Returns (writes before, writes after the reboot, reports for d1, result of redelivery)."""
    root = support.tmpdir("crash")
    try:
        ob = Box(root)
        board = _board()
        st = CutAtSave(root, {"claim": 1, "mark": 2}.get(point, 0))
        if point == "apply":
            def cut(value):
                raise PowerCut("in apply")
            board.actuators[3].apply = cut
        ob.cut_before = point == "append"
        ob.cut_after = point == "after-append"
        try:
            apply_desired(board, ob, st, 3, "d1", value, now=NOW)
            crashed = False
        except PowerCut:
            crashed = True
        assert crashed, "no power cut at %s" % point
        before = board.actuators[3].writes
        # reboot: outbox and state reopened from flash, new board (actuators at safe values)
        ob = Box(root)
        st2 = DesiredState(root)
        board2 = _board()
        st2.recover(board2, ob, NOW)
        again = apply_desired(board2, ob, st2, 3, "d1", value, now=NOW)
        return before, board2.actuators[3].writes, ob.reports("d1"), again
    finally:
        support.rmtree(root)


def test_crash_at_claim_write_applies_once_after_reboot():
    before, after, reports, again = _crash_then_reboot("claim")
    assert before == 0  # the claim failed, so nothing was touched
    assert after == 1 and again == "applied"
    assert [r[5] for r in reports] == ["applied"]


def test_crash_between_claim_and_report_never_reapplies():
    for point in ("apply", "append"):
        before, after, reports, again = _crash_then_reboot(point)
        assert before == (1 if point == "append" else 0)
        assert after == 0, point  # never applied again after the reboot
        assert again == "duplicate", point
        # reported exactly once, with the real (safe) state the reboot left
        assert [(r[2], r[5]) for r in reports] == [("0", "stale")], point


def test_interrupted_command_equal_to_safe_state_reports_applied():
    before, after, reports, again = _crash_then_reboot("append", value="0")
    assert after == 0 and again == "duplicate"
    assert [(r[2], r[5]) for r in reports] == [("0", "applied")]


def test_crash_after_report_before_mark_repeats_report_not_action():
    for point in ("after-append", "mark"):
        before, after, reports, again = _crash_then_reboot(point)
        assert before == 1 and after == 0 and again == "duplicate", point
        # the only price of this window: the report goes out twice, never zero times
        assert len(reports) == 2 and reports[0][5] == "applied", point


def test_failed_append_is_reported_by_the_next_call():
    root, st, board, ob = _fresh()
    try:
        ob.cut_before = True
        support.raises(PowerCut, apply_desired, board, ob, st, 3, "d1", "1", now=NOW)
        ob.cut_before = False
        assert len(st.claims()) == 1 and ob.records == []
        assert apply_desired(board, ob, st, 3, "d1", "1", now=NOW) == "duplicate"
        assert ob.records == [("command", 3, "1", NOW, "d1", "applied")]
        assert board.actuators[3].writes == 1 and st.claims() == []
    finally:
        support.rmtree(root)


def test_module_constants():
    assert (desired.APPLIED, desired.REJECTED, desired.STALE) == ("applied", "rejected", "stale")


def test_failed_claim_write_leaves_no_claim_and_no_action():
    root = support.tmpdir("desired")
    try:
        st, board, ob = CutAtSave(root, 1), _board(), Box(root)
        support.raises(PowerCut, apply_desired, board, ob, st, 3, "d1", "1", now=NOW)
        assert st.claims() == [] and ob.records == [] and board.actuators[3].writes == 0
        # the flash works again: the redelivery applies it, once
        assert apply_desired(board, ob, st, 3, "d1", "1", now=NOW) == "applied"
        assert len(ob.records) == 1 and board.actuators[3].writes == 1
    finally:
        support.rmtree(root)
