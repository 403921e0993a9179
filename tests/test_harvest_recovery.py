"""Recovery of an interrupted harvest, with real processes (``assay-sim bench``, ``assayd``,
a real Mosquitto): the run reads the harvester's own report before it offers anything, says
which case it is, offers only the choices that make sense, leaves the harvester released
after skip and abort, and the next run harvests its own plate onto a new mat.

Cases (issue 9): the daemon killed during the prewet (the plate untouched: the harvest had
not begun), mid-wash (partly harvested), while drying (the harvester finishes the cycle by
itself); answered retry, abort and skip, each followed by another run. A waste trap filling
mid-wash latches the harvester: emptied, retried, the harvest finishes on the same mat.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from acquisition.errors import CommandError
from devtools.mosquitto import MosquittoBroker
from tests.crash_lab import (
    ENDED,
    HARVEST_THEN_COUNT,
    POLL_S,
    TIMEOUT_S,
    Lab,
    _check_complete,
    _kinds,
    _phases,
    lab_stack,
)

pytestmark = pytest.mark.slow


async def _first_prompt(lab: Lab, run: str) -> None:
    """The virtual operator puts the plate in the incubator and answers."""
    await lab.wait(run, lambda s: (s["step_index"] or 0) > 1 or s["state"] in ENDED,
                   "the first prompt answered")  # fmt: skip


async def _harvester_busy_in(lab: Lab, run: str, steps: set[str]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        state = await lab.get(run)
        if state["state"] == "running" and state["step"] == "harvest":
            har = await lab.harvester()
            if har["state"] == "BUSY" and har["step"] in steps:
                return
        if time.monotonic() > deadline or state["state"] in ENDED:
            raise AssertionError(f"run {run}: harvester never in {steps}: {state}")
        await asyncio.sleep(POLL_S)


async def _harvester_idle(lab: Lab) -> dict[str, Any]:
    """The step the dead daemon had started runs to its end on the harvester."""
    deadline = time.monotonic() + TIMEOUT_S
    while (har := await lab.harvester())["state"] == "BUSY":
        if time.monotonic() > deadline:
            raise AssertionError(f"harvester still busy: {har}")
        await asyncio.sleep(POLL_S)
    return har


def _assert_released(har: dict[str, Any]) -> None:
    """Vacuum off, no latch, a fresh mat seated: what skip and abort leave."""
    assert har["state"] == "IDLE" and har["fault_code"] == 0, har
    assert har["vacuum_bar"] > -0.1, har
    mat = har["mat"]
    assert mat["seated"] and not (mat["prewet"] or mat["aspirated"] or mat["dried"]), har


async def _next_run_harvests_its_own_plate(lab: Lab) -> list[dict[str, Any]]:
    """Another run of the same protocol: its own plate onto a new mat, counted, no person
    needed (every prompt answered by the virtual operator, no recovery)."""
    plate_id = f"PN-{uuid.uuid4().hex[:6]}"
    run = await lab.start(HARVEST_THEN_COUNT, plate_id=plate_id)
    final = await lab.wait_ended(run)
    assert final["state"] == "completed", (final, lab.daemon.tail())
    docs = lab.documents(run)
    _check_complete(docs)
    mats = await lab.mats_of(plate_id)
    assert len(mats) == 1, mats
    counted = {d["reading"]["plate_id"] for d in _kinds(docs, "data")}
    assert counted == {mats[0]}, counted
    (harvested,) = [d for d in _kinds(docs, "step")
                    if d["step"] == "harvest" and d["phase"] == "finished"]  # fmt: skip
    assert harvested["detail"]["mat"]["dried"], harvested
    prompts = _kinds(docs, "prompt")
    assert not [p for p in prompts if p["prompt_kind"] == "recovery"], prompts
    assert {p["by"] for p in prompts if p["phase"] == "answered"} == {"virtual-operator"}
    return docs


@pytest.mark.parametrize(
    ("killed_during", "case", "options", "action", "words"),
    [
        # the prewet runs to its end by itself; the plate is untouched
        ({"PW"}, "not-begun", ["retry", "abort"], "retry", "had not begun"),
        # the wash runs to its end by itself: aspirated, 3 washes, not dried
        ({"WS"}, "partly", ["retry", "abort"], "abort", "3 of 3 washes done, not dried"),
        # the dry runs to its end by itself: the mat is made, still seated
        ({"DR"}, "finished", ["skip", "abort"], "skip", "the mat is dried, not released"),
    ],
    ids=["killed-before-it-began-then-retry", "killed-mid-wash-then-abort",
         "killed-drying-then-skip"],
)
async def test_an_interrupted_harvest_is_judged_from_the_harvester_and_the_next_run_is_clean(
    tmp_path: Path, broker: MosquittoBroker, killed_during: set[str], case: str,
    options: list[str], action: str, words: str,
) -> None:  # fmt: skip
    plate_id = f"PC-{uuid.uuid4().hex[:6]}"
    async with lab_stack(tmp_path, broker, time_scale=50.0) as lab:
        run = await lab.start(HARVEST_THEN_COUNT, plate_id=plate_id)
        await _first_prompt(lab, run)
        await _harvester_busy_in(lab, run, killed_during)
        await lab.restart(signal.SIGKILL)
        await _harvester_idle(lab)
        restarted_at = len(lab.documents(run))
        mats = await lab.mats_of(plate_id)
        assert len(mats) == (1 if case == "finished" else 0), mats

        await lab.client.request("run.resume", {"run": run})
        waiting = await lab.wait(run, lambda s: s["state"] not in ("interrupted", "running"),
                                 "the recovery prompt")  # fmt: skip
        assert waiting["state"] == "awaiting-recovery", waiting
        prompt = waiting["prompt"]
        assert prompt["options"] == options, prompt
        assert words in prompt["text"] and "restart" in prompt["text"], prompt["text"]
        assert (await lab.harvester())["state"] != "BUSY"  # nothing started again
        after = lab.documents(run)[restarted_at:]
        assert not [p for p in _phases(after) if p[0] == "harvest"], after
        judged = [d for d in _kinds(after, "interruption") if d["detail"].get("case")]
        assert [d["detail"]["case"] for d in judged] == [case], judged
        refused = next(o for o in ("skip", "retry") if o not in options)
        with pytest.raises(CommandError, match=f"not {refused}") as err:
            await lab.client.request("run.recover", {"run": run, "action": refused})
        assert err.value.code == "conflict"

        await lab.client.request("run.recover", {"run": run, "action": action})
        final = await lab.wait_ended(run)
        docs = lab.documents(run)
        if action == "abort":
            assert final["state"] == "aborted", final
            _assert_released(await lab.harvester())
            (left,) = [d for d in _kinds(docs, "interruption")
                       if d["reason"].startswith("labware at the end")]  # fmt: skip
            assert f"holds plate {plate_id}" in left["reason"], left
        else:
            assert final["state"] == "completed", final
            _check_complete(docs)
            now_mats = await lab.mats_of(plate_id)
            assert len(now_mats) == 1, now_mats  # retry: the new one; skip: the one made
            counted = {d["reading"]["plate_id"] for d in _kinds(docs, "data")}
            assert counted == {now_mats[0]}
            harvest = [p for p in _phases(docs[restarted_at:]) if p[0] == "harvest"]
            # skip of a cycle the harvester finished: the step is its harvest, finished
            assert harvest == ([("harvest", "resumed"), ("harvest", "finished")]
                               if action == "retry" else [("harvest", "finished")])  # fmt: skip
            if action == "skip":
                (done,) = [d for d in _kinds(docs[restarted_at:], "step")
                           if d["step"] == "harvest"]  # fmt: skip
                assert done["detail"]["finished_by_harvester"] and done["detail"]["mat"]["dried"]
        if action == "skip":
            (released,) = [d for d in _kinds(docs, "interruption")
                           if "skipped" in d["reason"]]  # fmt: skip
            assert released["detail"]["released"]["mat"]["aspirated"] is False

        nxt = await _next_run_harvests_its_own_plate(lab)
        if action == "abort":  # the aborted run's plate was still in the harvester
            first = next(d for d in _kinds(nxt, "prompt") if d["phase"] == "asked")
            assert f"the harvester holds plate {plate_id}" in first["text"], first
            moved = [d["note"] for d in _kinds(nxt, "prompt") if d["phase"] == "answered"
                     and f"moved plate {plate_id}" in (d["note"] or "")]  # fmt: skip
            assert moved, _kinds(nxt, "prompt")


async def test_waste_full_mid_wash_is_cleared_and_the_retry_finishes_on_the_same_mat(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    plate_id = f"PW-{uuid.uuid4().hex[:6]}"
    async with lab_stack(tmp_path, broker, time_scale=50.0) as lab:
        run = await lab.start(HARVEST_THEN_COUNT, plate_id=plate_id)
        await _first_prompt(lab, run)
        await _harvester_busy_in(lab, run, {"WS"})
        await lab.sim("fault", instrument="harvester", kind="waste_full")
        waiting = await lab.wait(run, lambda s: s["state"] == "awaiting-recovery",
                                 "the recovery prompt")  # fmt: skip
        prompt = waiting["prompt"]
        assert prompt["options"] == ["retry", "abort"], prompt
        assert "waste_full" in prompt["text"] and "partly harvested" in prompt["text"]
        assert "clear the fault" in prompt["text"], prompt["text"]
        assert (await lab.harvester())["fault_code"] == 13  # latched

        await lab.sim("fault", instrument="harvester", kind="empty_waste")  # the operator
        await lab.client.request("run.recover", {"run": run, "action": "retry"})
        final = await lab.wait_ended(run)
        assert final["state"] == "completed", (final, lab.daemon.tail())
        docs = lab.documents(run)
        _check_complete(docs)
        assert len(await lab.mats_of(plate_id)) == 1
        (finished,) = [d for d in _kinds(docs, "step")
                       if d["step"] == "harvest" and d["phase"] == "finished"]  # fmt: skip
        assert finished["detail"]["finished_from"]["aspirated"], finished  # not re-aspirated
        await _next_run_harvests_its_own_plate(lab)


async def test_a_harvest_another_run_made_meanwhile_is_not_taken_for_this_plates(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """Killed mid-wash, not resumed; another run then releases the half-done mat and
    harvests its own plate, so the harvester's count of mats grows by one, as if this
    run's cycle had finished. The resumed run must not say so: the journal shows the other
    run's harvest, and the prompt says it cannot tell."""
    plate_id = f"PA-{uuid.uuid4().hex[:6]}"
    async with lab_stack(tmp_path, broker, time_scale=50.0) as lab:
        run = await lab.start(HARVEST_THEN_COUNT, plate_id=plate_id)
        await _first_prompt(lab, run)
        await _harvester_busy_in(lab, run, {"WS"})
        await lab.restart(signal.SIGKILL)
        await _harvester_idle(lab)
        other = await lab.start(HARVEST_THEN_COUNT, plate_id=f"PB-{uuid.uuid4().hex[:6]}")
        assert (await lab.wait_ended(other))["state"] == "completed", lab.daemon.tail()

        await lab.client.request("run.resume", {"run": run})
        waiting = await lab.wait(run, lambda s: s["state"] not in ("interrupted", "running"),
                                 "the recovery prompt")  # fmt: skip
        assert waiting["state"] == "awaiting-recovery", waiting
        prompt = waiting["prompt"]
        assert prompt["options"] == ["retry", "skip", "abort"], prompt
        assert "cannot tell" in prompt["text"] and other in prompt["text"], prompt["text"]
        (judged,) = [d for d in _kinds(lab.documents(run), "interruption")
                     if d["detail"].get("case")]  # fmt: skip
        assert judged["detail"]["case"] == "unknown"
        assert judged["detail"]["harvester"]["harvested_since_by"] == [other], judged
        await lab.client.request("run.recover", {"run": run, "action": "abort"})
        assert (await lab.wait_ended(run))["state"] == "aborted"
