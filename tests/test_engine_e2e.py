"""The orchestrator end to end: bench, daemon and terminal on one virtual clock, over the
real wires (Modbus TCP, ptys, a VISA socket) and a real Mosquitto.

Points inside a step are reached with ``lab.freeze_when``: the virtual clock stops the
moment the run is where the test wants it, the test acts over MQTT, then time goes on.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from acquisition.errors import CommandError
from acquisition.run_recorder import RunRecorder
from devtools.mosquitto import MosquittoBroker
from devtools.virtual_lab import VirtualLab, virtual_lab

PLATE = "competition-progesterone"
SEED = Path("config/protocols/competition-binding.toml").read_text(encoding="utf-8")
ENDED = {"completed", "failed", "aborted"}


def _wells(docs: list[dict[str, Any]]) -> list[str]:
    return [d["reading"]["well"] for d in docs if d["kind"] == "data" and d["stream"] == "well"]


def _kinds(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _step_phases(docs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(d["step"], d["phase"]) for d in _kinds(docs, "step")]


def _in_step(step: str, *, done: int = 0, phase: str | None = None) -> Any:
    def at(rec: RunRecorder) -> bool:
        if rec.state != "running" or rec.step != step:
            return False
        if phase is not None and (rec.latest or {}).get("phase") != phase:
            return False
        return done == 0 or (rec.progress is not None and rec.progress.done >= done)

    return at


async def _instrument(lab: VirtualLab, iid: str) -> dict[str, Any]:
    insts = await lab.client.request("instruments")
    return next(i for i in insts if i["id"] == iid)


async def _assert_safe(lab: VirtualLab) -> None:
    """Incubator at its idle setpoint with the shaker off; harvester vacuum off; counter not
    counting (read from the simulated instruments through the control channel)."""
    inc = await lab.sim("state", instrument="incubator")
    assert inc["target_c"] == pytest.approx(25.0) and not inc["shaker_on"], inc
    har = await lab.sim("state", instrument="harvester")
    assert har["state"] != "BUSY" and har["vacuum_bar"] > -0.1, har
    ctr = await lab.sim("state", instrument="counter")
    assert ctr["state"] != "counting", ctr


@pytest.fixture
async def lab(tmp_path: Path, broker: MosquittoBroker) -> Any:
    async with virtual_lab(tmp_path, broker.port) as the_lab:
        yield the_lab


# ----------------------------------------------------------------------- the whole assay


async def test_full_protocol_and_the_ki_within_its_ci_of_the_truth(lab: VirtualLab) -> None:
    run = await lab.start("competition-binding", plate_map=PLATE)
    final = await lab.wait_state(run, ENDED)
    assert final["state"] == "completed", final
    docs = await lab.documents(run)
    wells = _wells(docs)
    assert len(wells) == 96 and len(set(wells)) == 96
    assert [d["seq"] for d in docs] == list(range(1, len(docs) + 1))
    # the incubation: temperature logged throughout, 90 min timed once stable
    temps = [d["reading"] for d in docs if d["kind"] == "data" and d["stream"] == "temperature"]
    timing = [t for t in temps if t["elapsed_s"] > 0]
    gaps = [b["elapsed_s"] - a["elapsed_s"] for a, b in itertools.pairwise(timing)]
    assert len(timing) >= 40 and max(gaps) <= 120  # sampled well within the grace period
    assert max(t["elapsed_s"] for t in temps) == pytest.approx(5400)
    assert all(t["in_tolerance"] for t in timing)
    # the prompts were answered by the virtual operator
    answered = [d for d in _kinds(docs, "prompt") if d["phase"] == "answered"]
    assert [d["by"] for d in answered] == ["virtual-operator"] * 3
    assert _step_phases(docs)[-2:] == [("analyze", "started"), ("analyze", "finished")]
    # the analysis: Ki within its 95% CI of the simulator's true Ki
    result = (await lab.client.request("results", {"run": run}))["analysis"]
    truth = (await lab.sim("truth"))["truth"]
    ki = next(p for p in result["derived"] if p["name"] == "Ki")
    true_ki_m = truth["ki_nm"]["progesterone"] * 1e-9
    assert ki["ci_low"] <= true_ki_m <= ki["ci_high"], (ki, true_ki_m)
    assert math.isclose(ki["estimate"], true_ki_m, rel_tol=0.3)
    await _assert_safe(lab)


# -------------------------------------------------------------------- pause and resume


@pytest.mark.parametrize(
    ("step", "done", "phase"),
    # (the wait is caught as it begins: its 5 s ticks may be jumped over under load)
    [("incubate", 600, "timing"), ("count", 12, None), ("wait", 0, None)],
)
async def test_pause_mid_step_then_resume(
    lab: VirtualLab, step: str, done: int, phase: str | None
) -> None:
    protocol = SEED.replace('[[steps]]\ntype = "analyze"', '[[steps]]\ntype = "wait"\n'
                            'duration = "2 min"\n\n[[steps]]\ntype = "analyze"')  # fmt: skip
    run = await lab.start("seed-with-wait", protocol_toml=protocol, plate_map=PLATE)
    await lab.freeze_when(run, _in_step(step, done=done, phase=phase))
    reply = await lab.client.request("run.pause", {"run": run})
    assert reply["state"] == "pausing"
    lab.thaw()
    paused = await lab.wait_state(run, {"paused"})
    assert paused["step"] == step and (paused["progress"] or {}).get("done", 0) >= done
    docs = await lab.documents(run)
    assert _step_phases(docs)[-1] == (step, "paused")
    with pytest.raises(CommandError, match="is paused: cannot recover it"):
        await lab.client.request("run.recover", {"run": run, "action": "retry"})
    await lab.client.request("run.resume", {"run": run})
    final = await lab.wait_state(run, ENDED)
    assert final["state"] == "completed", final
    docs = await lab.documents(run)
    assert (step, "resumed") in _step_phases(docs)
    wells = _wells(docs)
    assert len(wells) == 96 and len(set(wells)) == 96


async def test_harvest_cannot_pause_midway_so_it_pauses_after(lab: VirtualLab) -> None:
    run = await lab.start("competition-binding", plate_map=PLATE)
    await lab.freeze_when(run, _in_step("harvest"))
    reply = await lab.client.request("run.pause", {"run": run})
    assert "after the current step" in reply["message"]
    lab.thaw()
    paused = await lab.wait_state(run, {"paused"})
    docs = await lab.documents(run)
    assert _step_phases(docs)[-1] == ("harvest", "finished")
    assert paused["step"] == "harvest"
    await lab.client.request("run.resume", {"run": run})
    assert (await lab.wait_state(run, ENDED))["state"] == "completed"


async def test_pause_at_a_prompt_asks_again_on_resume(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with virtual_lab(tmp_path, broker.port, virtual_operator=False) as lab:
        run = await lab.start("competition-binding", plate_map=PLATE, plate_id="PX1")
        asked = await lab.wait_state(run, {"awaiting-operator"})
        assert asked["prompt"]["action"] == "plate_to_incubator"
        await lab.client.request("run.pause", {"run": run})
        await lab.wait_state(run, {"paused"})
        await lab.client.request("run.resume", {"run": run})
        again = await lab.wait_state(run, {"awaiting-operator"})
        assert again["prompt"]["id"] == asked["prompt"]["id"]
        with pytest.raises(CommandError, match="asks prompt"):
            await lab.client.request("run.answer", {"run": run, "prompt": "99"})
        # the operator does it by hand, then answers from the terminal
        await lab.sim("add_plate", plate_id="PX1", layout="competition",
                      competitors=["progesterone"], location="incubator:incubator")  # fmt: skip
        await lab.client.request("run.answer", {"run": run, "prompt": again["prompt"]["id"]})
        nxt = await lab.wait_state(run, {"awaiting-operator"}, prompt="3")
        assert nxt["step_index"] == 3
        docs = await lab.documents(run)
        assert ("incubate", "finished") in _step_phases(docs)
        answered = [d for d in _kinds(docs, "prompt") if d["phase"] == "answered"]
        assert [(d["prompt_id"], d["by"]) for d in answered] == [("1", "operator")]
        await lab.client.request("run.abort", {"run": run})
        assert (await lab.wait_state(run, ENDED))["state"] == "aborted"


# ---------------------------------------------------------------------------- abort


@pytest.mark.parametrize(
    ("step", "done", "phase"),
    [("incubate", 0, "stabilising"), ("incubate", 900, "timing"), ("harvest", 0, None),
     ("count", 24, None)],
)  # fmt: skip
async def test_abort_mid_step_leaves_instruments_safe(
    lab: VirtualLab, step: str, done: int, phase: str | None
) -> None:
    run = await lab.start("competition-binding", plate_map=PLATE)
    await lab.freeze_when(run, _in_step(step, done=done, phase=phase))
    assert (await lab.client.request("run.abort", {"run": run}))["state"] == "aborting"
    lab.thaw()
    final = await lab.wait_state(run, ENDED)
    assert final["state"] == "aborted"
    docs = await lab.documents(run)
    stops = _kinds(docs, "stop")
    assert len(stops) == 1 and stops[0]["exit_status"] == "abort"
    assert not any(p == (step, "finished") for p in _step_phases(docs))
    await _assert_safe(lab)
    # and the instruments are free for the next run
    insts = await lab.client.request("instruments")
    assert all(i.get("run") is None for i in insts)


async def test_abort_while_awaiting_the_operator(tmp_path: Path, broker: MosquittoBroker) -> None:
    async with virtual_lab(tmp_path, broker.port, virtual_operator=False) as lab:
        run = await lab.start("competition-binding", plate_map=PLATE)
        await lab.wait_state(run, {"awaiting-operator"})
        await lab.client.request("run.abort", {"run": run})
        assert (await lab.wait_state(run, ENDED))["state"] == "aborted"
        again = await lab.client.request("run.abort", {"run": run})
        assert again["state"] == "aborted"


# ------------------------------------------------------------------------- interlocks


@pytest.mark.parametrize("action", ["pause", "abort"])
async def test_incubator_door_opened_trips_the_interlock(lab: VirtualLab, action: str) -> None:
    protocol = SEED.replace('on_excursion = "pause"', f'on_excursion = "{action}"')
    run = await lab.start("door", protocol_toml=protocol, plate_map=PLATE)
    await lab.freeze_when(run, _in_step("incubate", done=1200, phase="timing"))
    await lab.sim("open_incubator_door")
    lab.thaw()
    ended = await lab.wait_state(run, {"paused", *ENDED})
    docs = await lab.documents(run)
    trips = [d for d in _kinds(docs, "interruption") if "excursion" in d["reason"]]
    assert len(trips) == 1 and trips[0]["detail"]["action"] == action
    assert trips[0]["detail"]["out_of_tolerance_s"] >= 120
    if action == "abort":
        assert ended["state"] == "aborted"
        await _assert_safe(lab)
        return
    assert ended["state"] == "paused" and "excursion" in ended["message"]
    elapsed = ended["progress"]["done"]
    await lab.sim("close_incubator_door")
    await lab.client.request("run.resume", {"run": run})
    assert (await lab.wait_state(run, ENDED))["state"] == "completed"
    docs = await lab.documents(run)
    temps = [d["reading"] for d in docs if d["kind"] == "data" and d["stream"] == "temperature"]
    # the timer went on from where it stopped, after stabilising again
    assert max(t["elapsed_s"] for t in temps) == pytest.approx(5400)
    assert elapsed >= 1200


# ------------------------------------------------------------- instrument fault: recovery


async def test_counter_unplugged_mid_count_then_retry_completes(lab: VirtualLab) -> None:
    run = await lab.start("competition-binding", plate_map=PLATE)
    await lab.freeze_when(run, _in_step("count", done=36))
    await lab.sim("fault", instrument="counter", kind="unplug")
    lab.thaw()
    waiting = await lab.wait_state(run, {"awaiting-recovery", *ENDED})
    assert waiting["state"] == "awaiting-recovery", waiting
    assert waiting["prompt"]["options"] == ["retry", "skip", "abort"]
    docs = await lab.documents(run)
    assert _kinds(docs, "interruption")[-1]["detail"]["wells_done"] >= 36
    counted_before = len(_wells(docs))
    # a retry while the cable is still out fails again, and waits again
    await lab.sim("fault", instrument="counter", kind="plug")
    await lab.client.request("run.recover", {"run": run, "action": "retry"})
    final = await lab.wait_state(run, ENDED)
    assert final["state"] == "completed", final
    docs = await lab.documents(run)
    wells = _wells(docs)
    assert len(wells) == 96 and len(set(wells)) == 96 and counted_before >= 36
    assert Counter(p for p in _step_phases(docs))[("count", "resumed")] == 1


async def test_skip_after_a_fault_goes_on_without_inventing_data(lab: VirtualLab) -> None:
    run = await lab.start("competition-binding", plate_map=PLATE)
    await lab.freeze_when(run, _in_step("count", done=48))
    await lab.sim("fault", instrument="counter", kind="door_open")
    lab.thaw()
    await lab.wait_state(run, {"awaiting-recovery"})
    await lab.sim("fault", instrument="counter", kind="door_close")
    await lab.client.request("run.recover", {"run": run, "action": "skip"})
    final = await lab.wait_state(run, ENDED)
    assert final["state"] == "completed"
    docs = await lab.documents(run)
    assert 48 <= len(_wells(docs)) < 96  # what was counted, nothing more
    assert ("count", "skipped") in _step_phases(docs)


# ---------------------------------------------------------------------------- leases


async def test_two_runs_on_one_counter_are_serialised(lab: VirtualLab) -> None:
    count_only = '[[steps]]\ntype = "count"\nisotope = "H3"\ncount_time = "30 s"\n'
    first = await lab.start("count-a", protocol_toml='name = "count-a"\n' + count_only)
    await lab.freeze_when(first, _in_step("count", done=12))
    second = await lab.start("count-b", protocol_toml='name = "count-b"\n' + count_only)
    queued = await lab.wait_state(second, {"queued"})
    assert f"held by run {first}" in (queued["message"] or "")
    lab.thaw()
    assert (await lab.wait_state(first, ENDED))["state"] == "completed"
    assert (await lab.wait_state(second, ENDED))["state"] == "completed"
    first_docs, second_docs = await lab.documents(first), await lab.documents(second)
    first_end = _kinds(first_docs, "stop")[0]["ts"]
    second_start = _kinds(second_docs, "start")[0]["ts"]
    assert second_start >= first_end
    assert len(_wells(first_docs)) == len(_wells(second_docs)) == 96


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({"protocol": "no-such-protocol"}, "no protocol 'no-such-protocol'"),
        ({"protocol": "x", "protocol_toml": 'name = "x"\n[[steps]]\ntype = "wait"\n'
          'duration = "-1 min"\n'}, r"x.toml.*steps\[0\]\.duration"),
        ({"protocol": "competition-binding"}, "give the run a plate map"),
        ({"protocol": "competition-binding", "plate_map": "nope"}, "no plate map 'nope'"),
        ({"protocol": "competition-binding", "plate_map": "bad",
          "plate_map_toml": '[wells."A1:H1"]\nrole = "total"\n'}, "NSB|nsb"),
    ],
)  # fmt: skip
async def test_bad_protocol_or_plate_map_is_refused_clearly(
    lab: VirtualLab, args: dict[str, Any], match: str
) -> None:
    with pytest.raises(CommandError, match=match):
        await lab.client.request("run.start", args)
    assert await lab.client.request("runs") == []


async def test_a_prompt_unanswered_past_its_timeout_pauses_the_run(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    protocol = (
        'name = "ask"\n[[steps]]\ntype = "prompt"\ntext = "label the plate"\ntimeout = "10 min"\n'
        '\n[[steps]]\ntype = "wait"\nduration = "1 min"\n'
    )
    async with virtual_lab(tmp_path, broker.port, virtual_operator=False) as lab:
        run = await lab.start("ask", protocol_toml=protocol)
        paused = await lab.wait_state(run, {"paused"})
        assert "no answer to 'label the plate' within 600 s" in paused["message"]
        docs = await lab.documents(run)
        assert [d["phase"] for d in _kinds(docs, "prompt")] == ["asked", "timed-out"]
        await lab.client.request("run.resume", {"run": run})
        again = await lab.wait_state(run, {"awaiting-operator"})
        with pytest.raises(CommandError, match="one of done, abort"):
            await lab.client.request("run.answer", {"run": run, "answer": "maybe"})
        await lab.client.request("run.answer", {"run": run, "prompt": again["prompt"]["id"]})
        assert (await lab.wait_state(run, ENDED))["state"] == "completed"


async def test_abort_while_queued_ends_the_run_without_starting_it(lab: VirtualLab) -> None:
    count_only = '[[steps]]\ntype = "count"\nisotope = "H3"\ncount_time = "30 s"\n'
    first = await lab.start("count-a", protocol_toml='name = "count-a"\n' + count_only)
    await lab.freeze_when(first, _in_step("count", done=12))
    second = await lab.start("count-b", protocol_toml='name = "count-b"\n' + count_only)
    await lab.wait_state(second, {"queued"})
    await lab.client.request("run.abort", {"run": second})
    assert (await lab.wait_state(second, ENDED))["state"] == "aborted"
    assert [d["kind"] for d in await lab.documents(second)] == ["stop"]
    lab.thaw()
    assert (await lab.wait_state(first, ENDED))["state"] == "completed"


async def test_the_count_refuses_a_plate_that_is_not_this_runs_mat(lab: VirtualLab) -> None:
    # no "move the mat" prompt: the counter still holds the bench's demo plate
    protocol = (
        'name = "forgot-the-mat"\n'
        '[[steps]]\ntype = "prompt"\ntext = "plate in"\naction = "plate_to_incubator"\n'
        '[[steps]]\ntype = "prompt"\ntext = "to the harvester"\naction = "plate_to_harvester"\n'
        '[[steps]]\ntype = "harvest"\nprewet = "10 s"\nwashes = 3\nwash_volume = "1 mL"\n'
        'dry = "30 s"\n'
        '[[steps]]\ntype = "count"\nisotope = "H3"\ncount_time = "30 s"\n'
    )
    run = await lab.start("forgot-the-mat", protocol_toml=protocol, plate_map=PLATE,
                          plate_id="PW1")  # fmt: skip
    # the count's precondition names what to do, and the virtual operator does it
    assert (await lab.wait_state(run, ENDED))["state"] == "completed"
    docs = await lab.documents(run)
    asked = [d for d in _kinds(docs, "prompt")
             if d["prompt_kind"] == "recovery" and d["phase"] == "asked"]  # fmt: skip
    assert len(asked) == 1 and "not a mat of plate PW1" in asked[0]["text"], asked
    assert asked[0]["options"] == ["retry", "skip", "abort"]
    (answer,) = [d for d in _kinds(docs, "prompt")
                 if d["prompt_kind"] == "recovery" and d["phase"] == "answered"]  # fmt: skip
    assert (answer["answer"], answer["by"]) == ("retry", "virtual-operator")
    assert "moved mat PW1-MAT1 to counter:counter" in answer["note"], answer
    counted = {d["reading"]["plate_id"] for d in docs
               if d["kind"] == "data" and d["stream"] == "well"}  # fmt: skip
    assert counted == {"PW1-MAT1"}


# ----------------------------------------------- races between commands, and daemon stops

COUNT_ONLY = 'name = "c"\n[[steps]]\ntype = "count"\nisotope = "H3"\ncount_time = "30 s"\n'


async def _interrupted_run(tmp_path: Path, broker: MosquittoBroker, journal: Path,
                           protocol: str = COUNT_ONLY, at: Any = None) -> str:  # fmt: skip
    """A run stopped (SIGTERM path: the daemon's stop) at ``at`` (default: 24 wells)."""
    async with virtual_lab(tmp_path / "before", broker.port, journal_path=journal) as lab:
        run = await lab.start("c", protocol_toml=protocol, plate_map=PLATE)
        await lab.freeze_when(run, at or _in_step("count", done=24))
    return run


async def test_two_resumes_at_once_start_one_engine(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    journal = tmp_path / "journal.sqlite3"
    run = await _interrupted_run(tmp_path, broker, journal)
    async with virtual_lab(tmp_path / "after", broker.port, journal_path=journal) as lab:
        replies = await asyncio.gather(
            lab.client.request("run.resume", {"run": run}),
            lab.client.request("run.resume", {"run": run}),
            return_exceptions=True,
        )
        refused = [r for r in replies if isinstance(r, CommandError)]
        assert len(refused) == 1 and refused[0].code == "conflict", replies
        assert (await lab.wait_state(run, ENDED))["state"] == "completed"
        docs = await lab.documents(run)
    assert len(_kinds(docs, "stop")) == 1
    wells = _wells(docs)
    assert len(wells) == 96 and len(set(wells)) == 96


async def test_an_abort_racing_a_resume_ends_the_run_once(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    journal = tmp_path / "journal.sqlite3"
    run = await _interrupted_run(tmp_path, broker, journal)
    async with virtual_lab(tmp_path / "after", broker.port, journal_path=journal) as lab:
        resumed, aborted = await asyncio.gather(
            lab.client.request("run.resume", {"run": run}),
            lab.client.request("run.abort", {"run": run}),
            return_exceptions=True,
        )
        if isinstance(aborted, CommandError):  # the resume won: abort the running run
            assert aborted.code == "conflict"
            await lab.client.request("run.abort", {"run": run})
        final = await lab.wait_state(run, ENDED)
        docs = await lab.documents(run)
    assert final["state"] in ("aborted", "completed"), (final, resumed, aborted)
    assert [d["kind"] for d in docs].count("stop") == 1
    assert docs[-1]["kind"] == "stop"


async def test_an_abort_asked_before_the_daemon_stops_is_not_undone(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    journal = tmp_path / "journal.sqlite3"
    async with virtual_lab(tmp_path / "lab", broker.port, journal_path=journal) as lab:
        run = await lab.start("c", protocol_toml=COUNT_ONLY)
        await lab.freeze_when(run, _in_step("count", done=12))
        assert (await lab.client.request("run.abort", {"run": run}))["state"] == "aborting"
        # the lab (and its daemon) stops now, frozen, with the abort under way
    async with virtual_lab(tmp_path / "after", broker.port, journal_path=journal) as lab:
        state = await lab.state(run)
        docs = await lab.documents(run)
    assert state["state"] == "aborted", state
    assert [d["kind"] for d in docs].count("stop") == 1
    assert _kinds(docs, "stop")[0]["exit_status"] == "abort"


async def test_aborting_an_interrupted_run_makes_its_instruments_safe(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    journal = tmp_path / "journal.sqlite3"
    run = await _interrupted_run(tmp_path, broker, journal, protocol=SEED,
                                 at=_in_step("incubate", done=600, phase="timing"))  # fmt: skip
    async with virtual_lab(tmp_path / "after", broker.port, journal_path=journal) as lab:
        assert (await lab.state(run))["state"] == "interrupted"
        reply = await lab.client.request("run.abort", {"run": run})
        assert reply["state"] == "aborted" and "message" not in reply, reply
        inc = await lab.sim("state", instrument="incubator")
        assert inc["target_c"] == pytest.approx(25.0) and not inc["shaker_on"]
        again = await lab.client.request("run.abort", {"run": run})
        assert again["state"] == "aborted"
        docs = await lab.documents(run)
    assert [d["kind"] for d in docs].count("stop") == 1


async def test_a_queued_run_aborted_leaves_the_instruments_of_others_alone(
    lab: VirtualLab,
) -> None:
    incubate = ('name = "warm"\n[[steps]]\ntype = "incubate"\ntemperature = "37 C"\n'
                'duration = "30 min"\n')  # fmt: skip
    count_then_incubate = COUNT_ONLY.replace('name = "c"', 'name = "ci"') + incubate.split(
        "\n", 1)[1]  # fmt: skip
    a = await lab.start("warm", protocol_toml=incubate)
    await lab.freeze_when(a, _in_step("incubate", done=60, phase="timing"))
    b = await lab.start("ci", protocol_toml=count_then_incubate)  # counter free, incubator not
    await lab.wait_state(b, {"queued"})
    c = await lab.start("c", protocol_toml=COUNT_ONLY)
    await lab.wait_state(c, {"running"}, step="count")
    await lab.client.request("run.abort", {"run": b})
    assert (await lab.wait_state(b, ENDED))["state"] == "aborted"
    lab.thaw()
    final_c = await lab.wait_state(c, ENDED)
    assert final_c["state"] == "completed", final_c  # b's abort did not stop c's count
    assert (await lab.wait_state(a, ENDED))["state"] == "completed"


async def test_a_pause_right_after_a_resume_is_kept(lab: VirtualLab) -> None:
    run = await lab.start("c", protocol_toml=COUNT_ONLY)
    await lab.freeze_when(run, _in_step("count", done=12))
    await lab.client.request("run.pause", {"run": run})
    lab.thaw()
    await lab.wait_state(run, {"paused"})
    lab.freeze()
    await lab.client.request("run.resume", {"run": run})
    reply = await lab.client.request("run.pause", {"run": run})
    assert reply["state"] == "pausing", reply
    lab.thaw()
    await lab.wait_state(run, {"paused"})
    docs = await lab.documents(run)
    assert _step_phases(docs).count(("count", "paused")) >= 1
    await lab.client.request("run.resume", {"run": run})
    assert (await lab.wait_state(run, ENDED))["state"] == "completed"


async def test_a_command_delivered_twice_at_once_runs_once(lab: VirtualLab) -> None:
    """QoS1 may deliver a command twice, the copy arriving while the first is handled."""
    import json

    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    client = lab.client
    reply_topic = client.config.topic("replies", "twice")
    start = json.dumps({"verb": "run.start", "args": {"protocol": "c",
                        "protocol_toml": COUNT_ONLY}}).encode()  # fmt: skip
    async with client.subscription(reply_topic) as queue:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = reply_topic
        props.CorrelationData = b"start-twice"
        for _ in range(2):  # back to back: the second arrives before the first is answered
            await client.client.publish(client.config.topic("cmd"), start, qos=1,
                                        properties=props)  # fmt: skip
        replies = []
        async with asyncio.timeout(10):
            while len(replies) < 2:
                msg = await queue.get()
                assert msg is not None and isinstance(msg.payload, bytes)
                replies.append(json.loads(msg.payload))
    assert replies[0] == replies[1] and replies[0]["ok"], replies
    runs = await client.request("runs")
    assert [r["run"] for r in runs] == [replies[0]["result"]["run"]]
    assert (await lab.wait_state(runs[0]["run"], ENDED))["state"] == "completed"


async def test_queued_runs_go_in_order_and_others_do_not_wait_for_them(
    lab: VirtualLab,
) -> None:
    first = await lab.start("c", protocol_toml=COUNT_ONLY)
    await lab.freeze_when(first, _in_step("count", done=12))
    second = await lab.start("c", protocol_toml=COUNT_ONLY)
    await lab.wait_state(second, {"queued"})
    third = await lab.start("c", protocol_toml=COUNT_ONLY)
    queued = await lab.wait_state(third, {"queued"})
    assert "held by run" in queued["message"] or "first in line" in queued["message"]
    # a run that wants only the incubator is not held up by the line for the counter
    warm = await lab.start("warm", protocol_toml='name = "warm"\n[[steps]]\ntype = "incubate"\n'
                           'temperature = "30 C"\nduration = "5 min"\n')  # fmt: skip
    await lab.wait_state(warm, {"running"}, step="incubate")
    lab.thaw()
    for run in (first, second, third, warm):
        assert (await lab.wait_state(run, ENDED))["state"] == "completed"
    starts = [_kinds(await lab.documents(r), "start")[0]["ts"] for r in (second, third)]
    assert starts[0] < starts[1]  # the second came first, so it counted first
