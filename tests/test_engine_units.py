"""The run engine's pure parts, without a broker or any I/O: the state machine
(:mod:`acquisition.run_states`), what the terminal asks of a run
(:mod:`acquisition.engine.control`) and where an interrupted run stands, read back from its
documents (:mod:`acquisition.engine.recovery`). The commands need a daemon: see
tests/test_engine_e2e.py.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

import pytest

from acquisition.engine.control import RunControl
from acquisition.engine.recovery import ResumePoint, decide, read_run
from acquisition.payloads import RunStateName, StartDocument, read_document
from acquisition.protocols import Protocol, parse_protocol
from acquisition.run_states import FINAL, OPEN, TRANSITIONS, check_transition

# ----------------------------------------------------------------------------- states


def _reachable(state: str) -> set[str]:
    seen: set[str] = set()
    todo = [state]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_every_state_named_by_the_payloads_is_in_the_machine() -> None:
    names = set(get_args(RunStateName))
    assert set(TRANSITIONS) == names
    assert FINAL | OPEN | {"interrupted"} == names
    assert not FINAL & OPEN
    assert all(targets <= names for targets in TRANSITIONS.values())


@pytest.mark.parametrize("state", sorted(FINAL))
def test_a_final_state_has_no_way_out(state: str) -> None:
    assert TRANSITIONS[state] == frozenset()
    for new in get_args(RunStateName):
        with pytest.raises(AssertionError, match=f"no transition {state} -> {new}"):
            check_transition("r1", state, new)


@pytest.mark.parametrize("state", sorted(OPEN))
def test_every_open_state_can_be_aborted_or_interrupted(state: str) -> None:
    assert {"aborted", "interrupted"} <= _reachable(state)
    check_transition("r1", state, "aborted")
    check_transition("r1", state, "interrupted")


def test_an_interrupted_run_can_be_resumed_or_ended() -> None:
    assert {"running", "awaiting-recovery", "aborted"} <= TRANSITIONS["interrupted"]
    assert FINAL & _reachable("interrupted")


def test_check_transition_refuses_what_the_engine_must_never_do() -> None:
    with pytest.raises(AssertionError, match="run r1: no transition completed -> running"):
        check_transition("r1", "completed", "running")
    with pytest.raises(AssertionError, match="queued -> paused"):
        check_transition("r1", "queued", "paused")
    with pytest.raises(AssertionError, match="no transition nonsense -> running"):
        check_transition("r1", "nonsense", "running")
    check_transition("r1", "queued", "running")
    check_transition("r1", "running", "completed")


# ---------------------------------------------------------------------------- control


def _pause(c: RunControl) -> str | None:
    return c.pause_requested  # read afresh (mypy would keep the narrowed value)


def test_pause_now_wins_over_after_step() -> None:
    c = RunControl()
    c.pause("after-step")
    assert _pause(c) == "after-step"
    c.pause("now")
    assert _pause(c) == "now"
    c.pause("after-step")
    assert _pause(c) == "now"


def test_resume_clears_a_pause_and_a_pause_clears_a_resume() -> None:
    c = RunControl()
    c.pause("now")
    c.resume()
    assert _pause(c) is None and c.resume_requested
    assert c.take_resume() is True
    assert c.take_resume() is False  # taken once
    c.resume()
    c.pause("after-step")
    assert _pause(c) == "after-step" and not c.resume_requested


def test_take_answer_only_for_the_prompt_asked() -> None:
    c = RunControl()
    assert c.take_answer("1") is None
    c.give_answer("1", "done", "alice")
    answer = c.take_answer("1")
    assert answer is not None
    assert (answer.prompt_id, answer.text, answer.by) == ("1", "done", "alice")
    assert c.take_answer("1") is None  # taken once
    c.give_answer("1", "done", "alice")
    assert c.take_answer("3") is None  # an answer to another prompt is not this one's ...
    assert c.take_answer("1") is None  # ... and a stale answer is not kept for later


def test_take_recovery_once() -> None:
    c = RunControl()
    assert c.take_recovery() is None
    c.recover("skip")
    taken = c.take_recovery()
    assert taken is not None and (taken.action, taken.by, taken.note) == ("skip", "operator", None)
    assert c.take_recovery() is None
    c.recover("retry", by="virtual-operator", note="emptied the waste trap")
    taken = c.take_recovery()
    assert taken is not None and (taken.by, taken.note) == ("virtual-operator",
                                                            "emptied the waste trap")


@pytest.mark.parametrize(
    "ask",
    [
        lambda c: c.abort(),
        lambda c: c.pause("now"),
        lambda c: c.pause("after-step"),
        lambda c: c.resume(),
        lambda c: c.give_answer("1", "done", "bob"),
        lambda c: c.recover("retry"),
    ],
    ids=["abort", "pause-now", "pause-after-step", "resume", "answer", "recover"],
)
async def test_changed_returns_at_once_when_something_is_pending(ask: Any) -> None:
    c = RunControl()
    ask(c)
    await asyncio.wait_for(c.changed(), timeout=1.0)  # asked before anyone waited
    waiter = asyncio.ensure_future(c.changed())  # the request was seen: wait for the next
    await asyncio.sleep(0.01)
    assert not waiter.done()
    ask(c)
    await asyncio.wait_for(waiter, timeout=1.0)


# --------------------------------------------------------------------------- recovery

PROTOCOL = """\
name = "unit"

[[steps]]
type = "prompt"
text = "put the plate in the incubator"

[[steps]]
type = "incubate"
temperature = "37 C"
duration = "90 min"
grace = "2 min"

[[steps]]
type = "harvest"
prewet = "10 s"
washes = 3
wash_volume = "1 mL"
dry = "30 s"

[[steps]]
type = "count"
isotope = "H3"
count_time = "60 s"

[[steps]]
type = "analyze"
model = "one-site-fit-ki"
competitor = "progesterone"
constants = { HotNM = 5, HotKdNM = 5.13 }
"""
TWO_COUNTS = """\
name = "two-counts"

[[steps]]
type = "count"
isotope = "H3"
count_time = "60 s"

[[steps]]
type = "count"
isotope = "H3"
count_time = "30 s"
"""
T0 = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)


class Docs:
    """A run's documents, written by hand in the shape the recorder gives them."""

    def __init__(self, protocol_toml: str) -> None:
        self.protocol, definition = parse_protocol(protocol_toml, source="unit.toml")
        self._seq = itertools.count(1)
        self.docs: list[dict[str, Any]] = []
        self._add(
            "start",
            protocol={"name": self.protocol.name, "source": "unit.toml", "definition": definition},
            plate={"plate_id": "P1", "format": 96, "source": None, "map": None},
            instruments={
                "counter": {"kind": "counter", "address": "x", "identity": "c"},
                "inc1": {"kind": "incubator", "address": "y", "identity": "i"},
            },
        )

    def _add(self, kind: str, **fields: Any) -> None:
        seq = next(self._seq)
        if kind == "start":
            fields = {"config": {}, "simulated": True, **fields}
        self.docs.append({"schema": "assay.event/1", "id": f"d{seq}", "run": "r1",
                          "node": "lab1", "seq": seq, "ts": T0.isoformat(), "kind": kind,
                          **fields})  # fmt: skip

    def step(self, index: int, phase: str, **detail: Any) -> Docs:
        step = self.protocol.steps[index - 1].type
        self._add("step", step=step, phase=phase, detail={"index": index, **detail})
        return self

    def wells(self, *wells: str) -> Docs:
        for well in wells:
            self._add("data", stream="well", reading={
                "index": 0, "well": well, "detector": 1, "counts": 100, "count_time_s": 1.0,
                "cpm": 6000.0, "ccpm": 6000.0, "counted_at": T0.isoformat()})  # fmt: skip
        return self

    def sample(self, elapsed_s: float, at: datetime) -> Docs:
        reading = {"step_index": 2, "elapsed_s": elapsed_s, "temperature_c": 37.0,
                   "setpoint_c": 37.0, "in_tolerance": True,
                   "sampled_at": at.isoformat()}  # fmt: skip
        self._add("data", stream="temperature", reading=reading)
        return self

    def interruption(self) -> Docs:
        self._add("interruption", reason="daemon restarted", detail={})
        return self

    def point(self) -> ResumePoint:
        return read_run([read_document(d) for d in self.docs])


def _through_incubation(samples: int = 3) -> Docs:
    d = Docs(PROTOCOL).step(1, "started").step(1, "finished").step(2, "started")
    for i in range(samples):
        d.sample(60.0 * i, T0 + timedelta(minutes=i))
    return d


def test_read_run_takes_the_protocol_plate_and_instruments_from_the_start_document() -> None:
    d = Docs(PROTOCOL)
    point = d.point()
    assert point.protocol_source == "unit.toml"
    assert point.protocol_definition["name"] == "unit"
    assert len(point.protocol_definition["steps"]) == 5
    assert point.plate["plate_id"] == "P1"
    assert point.instruments == {"counter": "counter", "incubator": "inc1"}
    assert (point.next_index, point.completed, point.progress) == (1, [], {})


def test_read_run_takes_a_run_without_a_plate_and_roles_by_name() -> None:
    """A run with no plate (a cell, next) has none in its start document; an instrument
    records the role it played (a kind of another name playing ``counter``)."""
    d = Docs(PROTOCOL)
    start = d.docs[0]
    del start["plate"]
    start["instruments"]["c2"] = start["instruments"].pop("counter")
    start["instruments"]["c2"].update(kind="acme-counter", role="counter")
    StartDocument.model_validate({**start, "id": "x", "config": {}, "simulated": True})
    point = d.point()
    assert point.plate == {}
    assert point.instruments == {"counter": "c2", "incubator": "inc1"}


def test_read_run_attributes_counted_wells_to_their_step() -> None:
    d = Docs(TWO_COUNTS).step(1, "started").wells("A1", "A2", "A3").step(1, "finished")
    d.wells("H12")  # between two steps: no step's
    d.step(2, "started").wells("A1", "B1").interruption()
    point = d.point()
    assert point.progress[1].counted == ["A1", "A2", "A3"]
    assert point.progress[2].counted == ["A1", "B1"]
    assert point.completed == [1]
    assert point.next_index == 2
    assert point.progress[2].started


def test_read_run_leaves_out_readings_it_cannot_read_and_goes_on() -> None:
    """A stream this version does not know (a newer daemon's, a plug-in not loaded) and a
    malformed reading are left out of the resume; the run stays resumable, never aborted."""
    d = Docs(TWO_COUNTS).step(1, "started").wells("A1")
    d._add("data", stream="sweep", reading={"sweep": 3})
    d._add("data", stream="well", reading=None)
    d.wells("A2")
    point = d.point()
    assert point.progress[1].counted == ["A1", "A2"] and point.next_index == 1
    inc = _through_incubation(1)
    inc._add("data", stream="temperature", reading={"step_index": 2, "elapsed_s": 9.0})
    inc._add("data", stream="temperature", reading="garbage")
    prog = inc.point().progress[2]
    assert prog.elapsed_s == 0.0 and prog.last_sample_at == T0  # only the full sample


def test_read_run_counts_a_well_once_and_goes_on_after_a_resume() -> None:
    d = Docs(TWO_COUNTS).step(1, "started").wells("A1", "A2").step(1, "paused")
    d.step(1, "resumed").wells("A2", "A3")
    point = d.point()
    assert point.progress[1].counted == ["A1", "A2", "A3"]
    assert point.completed == [] and point.next_index == 1


def test_read_run_completed_steps_and_next_index() -> None:
    d = Docs(PROTOCOL).step(1, "started").step(1, "finished").step(2, "started")
    d.step(2, "skipped").step(3, "started").step(3, "finished").step(4, "started")
    point = d.point()
    assert point.completed == [1, 2, 3]  # a skipped step is done with
    assert point.next_index == 4
    assert point.progress[4].started and not point.progress[4].counted
    d.step(4, "finished").step(5, "started").step(5, "finished")
    done = d.point()
    assert done.completed == [1, 2, 3, 4, 5]
    assert done.next_index == 6  # past the last step: nothing left


def test_read_run_elapsed_and_last_sample_from_temperature_samples() -> None:
    d = _through_incubation(samples=4)
    prog = d.point().progress[2]
    assert prog.started and prog.counted == []
    assert prog.elapsed_s == 180.0
    assert prog.last_sample_at == T0 + timedelta(minutes=3)


def test_read_run_ignores_step_documents_without_an_index() -> None:
    d = Docs(PROTOCOL)
    d._add("step", step="count", phase="started", detail={})  # an older run's count step
    d.wells("A1")
    point = d.point()
    assert point.progress == {} and point.next_index == 1


def _start_without_definition(protocol: dict[str, Any]) -> list[dict[str, Any]]:
    d = Docs(PROTOCOL)
    d.docs[0]["protocol"] = protocol
    return d.docs


@pytest.mark.parametrize(
    "docs",
    [
        [],
        Docs(PROTOCOL).step(1, "started").docs[1:],  # no start
        _start_without_definition({"name": "count-plate", "steps": [{"name": "count"}]}),
        _start_without_definition({}),
    ],
    ids=["none", "no-start", "no-definition", "no-protocol"],
)
def test_read_run_refuses_documents_of_no_protocol_run(docs: list[dict[str, Any]]) -> None:
    with pytest.raises(ValueError, match="not a protocol run"):
        read_run([read_document(d) for d in docs])


@pytest.mark.parametrize("damaged", ["start", "step"])
def test_read_run_stops_at_a_start_or_step_document_it_cannot_read(damaged: str) -> None:
    """Never guess where a run stands: an unreadable start or step document is an error
    naming it (the run then waits for a person), unlike a reading, which is left out."""
    d = Docs(PROTOCOL).step(1, "started").step(1, "finished").step(2, "started")
    doc = d.docs[0] if damaged == "start" else d.docs[2]  # the start; step 1 finished
    assert doc["kind"] == damaged
    doc["phase" if damaged == "step" else "protocol"] = "garbled"
    with pytest.raises(TypeError, match=rf"document seq {doc['seq']} \({damaged}\) cannot be"):
        d.point()


def _decide(d: Docs, now: datetime, time_scale: float = 1.0) -> str | None:
    protocol: Protocol = d.protocol
    return decide(protocol, d.point(), now, time_scale)


def test_a_started_harvest_is_left_to_the_harvesters_report() -> None:
    """decide() does not guess where a harvest stands: the run reads the harvester once it
    holds it (engine.harvest.assess_harvest), from the facts its started document kept."""
    facts = {"harvester": {"mats_made": 4, "waste_pct": 12.5}}
    d = (_through_incubation().step(2, "finished").step(3, "started", **facts)
         .interruption())  # fmt: skip
    assert _decide(d, T0 + timedelta(hours=2)) is None
    point = d.point()
    assert point.next_index == 3
    assert point.progress[3].started and point.progress[3].before == facts


def test_a_data_document_of_another_stream_is_not_read_as_a_temperature() -> None:
    d = _through_incubation(samples=2)
    d._add("data", stream="harvester", reading={"event": "noted"})  # no sampled_at
    point = d.point()  # no KeyError
    assert point.progress[2].last_sample_at is not None


def test_decide_incubate_with_a_recent_sample_goes_on() -> None:
    d = _through_incubation(samples=3)  # last sample at T0 + 2 min
    last = T0 + timedelta(minutes=2)
    assert _decide(d, last + timedelta(seconds=30)) is None
    assert _decide(d, last + timedelta(seconds=120)) is None  # the grace itself is within


def test_decide_incubate_after_a_long_gap_names_gap_and_grace() -> None:
    d = _through_incubation(samples=3)
    message = _decide(d, T0 + timedelta(minutes=2, seconds=600))
    assert message is not None
    assert "step 2 (incubate) was interrupted for 600 s" in message
    assert "grace 120 s" in message
    assert "after 120 of 5400 s" in message


def test_decide_time_scale_multiplies_the_gap() -> None:
    d = _through_incubation(samples=3)
    now = T0 + timedelta(minutes=2, seconds=30)  # 30 s of wall time ...
    assert _decide(d, now, time_scale=1.0) is None
    message = _decide(d, now, time_scale=10.0)  # ... is 300 s of simulated time
    assert message is not None and "interrupted for 300 s" in message


def test_decide_incubate_before_any_sample_goes_on() -> None:
    d = _through_incubation(samples=0)
    assert _decide(d, T0 + timedelta(hours=5)) is None


def test_decide_count_goes_on() -> None:
    d = _through_incubation().step(2, "finished").step(3, "started").step(3, "finished")
    d.step(4, "started").wells("A1", "A2").interruption()
    assert d.point().next_index == 4
    assert _decide(d, T0 + timedelta(days=1)) is None


def test_decide_a_step_not_started_goes_on() -> None:
    d = _through_incubation().step(2, "finished")  # harvest next, never started
    assert d.point().next_index == 3
    assert _decide(d, T0 + timedelta(days=1)) is None
    assert _decide(Docs(PROTOCOL), T0) is None  # nothing started at all


def test_decide_prompt_started_goes_on() -> None:
    d = Docs(PROTOCOL).step(1, "started").interruption()
    assert _decide(d, T0 + timedelta(days=1)) is None


def test_decide_past_the_last_step_goes_on() -> None:
    d = Docs(TWO_COUNTS).step(1, "started").step(1, "finished")
    d.step(2, "started").step(2, "finished")
    assert d.point().next_index == 3
    assert _decide(d, T0) is None
