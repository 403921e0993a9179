"""RunFollower: in order, once each, and a replay asked for when a gap lasts."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from acquisition.follow import RunFollower


def doc(seq: int, kind: str = "data") -> dict[str, Any]:
    return {"schema": "assay.event/1", "seq": seq, "id": f"id-{seq}", "kind": kind}


def test_in_order_documents_pass_straight_through() -> None:
    f = RunFollower()
    assert [d["seq"] for d in f.offer(doc(1), 0) + f.offer(doc(2), 0)] == [1, 2]
    assert f.replay_due(10) is None


def test_duplicates_are_dropped() -> None:
    f = RunFollower()
    f.offer(doc(1), 0)
    assert f.offer(doc(1), 0) == []
    assert f.duplicates == 1


def test_gap_is_held_then_replay_requested_after_grace() -> None:
    f = RunFollower(grace_s=0.5, retry_s=2.0)
    f.offer(doc(1), 0)
    assert f.offer(doc(4), 0.0) == []
    assert f.replay_due(0.4) is None
    assert f.replay_due(0.6) == (2, 3)
    assert f.replay_due(1.0) is None  # asked already; wait retry_s before asking again
    assert f.replay_due(2.7) == (2, 3)
    out = f.offer(doc(3), 3) + f.offer(doc(2), 3)
    assert [d["seq"] for d in out] == [2, 3, 4]
    assert f.replay_due(10) is None


def test_a_lost_tail_is_detected_from_the_run_state() -> None:
    f = RunFollower(grace_s=0.1)
    f.offer(doc(1), 0)
    f.saw_last_seq(5, 0)
    assert f.replay_due(0.2) == (2, 5)


def test_a_history_asked_for_up_front_is_not_asked_again_within_retry_s() -> None:
    f = RunFollower(next_seq=1, grace_s=0.5, retry_s=2.0)
    f.saw_last_seq(300, 0.0)  # a watch begun late: documents 1-300 came before it
    f.replay_requested(0.0)
    assert f.replay_due(1.0) is None
    f.offer(doc(1), 1.5)
    assert f.replay_due(2.1) == (2, 300)  # still missing after retry_s: asked again


def test_stop_document_marks_the_run_finished() -> None:
    f = RunFollower()
    f.offer(doc(1, "start"), 0)
    f.offer(doc(2, "stop"), 0)
    assert f.stopped


@given(st.permutations(list(range(1, 30))), st.lists(st.integers(1, 29), max_size=20))
def test_any_arrival_order_with_duplicates_delivers_each_once_in_order(
    order: list[int], dups: list[int]
) -> None:
    f = RunFollower()
    delivered: list[int] = []
    for seq in [*order, *dups]:
        delivered += [d["seq"] for d in f.offer(doc(seq), 0)]
    assert delivered == list(range(1, 30))


def test_payloads_that_are_not_run_documents_are_ignored() -> None:
    f = RunFollower()
    assert f.offer({"schema": "assay.reply/1", "ok": True}, 0) == []
    assert f.offer({"schema": "assay.event/1", "seq": "7"}, 0) == []
    assert f.foreign == 2
    assert [d["seq"] for d in f.offer(doc(1), 0)] == [1]
