"""The record step when things go wrong, with real processes: the daemon killed
mid-recording and resumed, a frame dropped by the digitizer, an abort mid-recording."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from devtools.mosquitto import MosquittoBroker
from tests.crash_lab import Lab, lab_stack

pytestmark = pytest.mark.slow

KINDS = ("perfusion", "amplifier", "digitizer")
RIG = """
[simulation.rig]
cell = "model_cell"
[simulation.rig.solutions]
3 = { "DHEA-S" = 10e-6 }
"""


def _protocol(sweeps: int, interval: str = "1 s") -> str:
    return f"""
name = "record-{sweeps}"
[[steps]]
type = "perfuse"
valve = 3
solution = "aCSF + DHEA-S 10 uM"
exchange = "50 %"
[[steps]]
type = "record"
stimulus = "membrane-test"
sweeps = {sweeps}
interval = "{interval}"
subject = {{ subject_id = "model-cell-1", species = "Rattus norvegicus", sex = "U", age = "P21D" }}
[steps.waveform]
shape = "step"
step = "-10 mV"
width = "100 ms"
length = "200 ms"
"""


def _sweeps(docs: list[dict[str, Any]]) -> list[int]:
    return [d["reading"]["sweep"] for d in docs
            if d["kind"] == "data" and d.get("stream") == "sweep"]  # fmt: skip


def _recorded(n: int) -> Any:
    def done(state: dict[str, Any]) -> bool:
        progress = state.get("progress") or {}
        return state["step"] == "record" and progress.get("done", 0) >= n
    return done


async def _wait_stalled(lab: Lab) -> None:
    """Until the digitizer has stopped sending mid-sweep (its frame count stands still while
    it is running)."""
    async with asyncio.timeout(10):
        before = -1
        while True:
            state = await lab.sim("state", instrument="digitizer")
            if state["running"] and state["frames_sent"] == before:
                return
            before = state["frames_sent"]
            await asyncio.sleep(0.2)


async def _valve(lab: Lab) -> Any:
    insts = await lab.client.request("instruments")
    return next(i for i in insts if i["kind"] == "perfusion")["readings"]["open_valve"]


def _nwb_sweeps(lab: Lab, docs: list[dict[str, Any]]) -> list[int]:
    from pynwb import NWBHDF5IO

    artifact = [d for d in docs if d["kind"] == "artifact"][-1]
    path = lab.files.journal_path.parent / "data" / artifact["path"]
    with NWBHDF5IO(str(path), "r") as io:
        nwb = io.read()
        return sorted(int(s.sweep_number) for s in nwb.acquisition.values())


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
async def test_a_daemon_stopped_mid_recording_then_resumed_keeps_every_sweep_once(
    tmp_path: Path, broker: MosquittoBroker, sig: signal.Signals
) -> None:
    """SIGKILL mid-sweep: that sweep is lost, named, recorded again. SIGTERM: the daemon
    finishes the sweep in progress before it stops; nothing is lost."""
    async with lab_stack(tmp_path, broker, time_scale=20.0, kinds=KINDS,
                         simulation_extra=RIG) as lab:  # fmt: skip
        run = await lab.start(_protocol(50))
        await lab.wait(run, _recorded(10), "10 sweeps recorded")
        if sig == signal.SIGKILL:  # killed for sure mid-sweep: the next one stalls half-way
            await lab.sim("fault", instrument="digitizer", kind="stall_mid_sweep")
            await _wait_stalled(lab)
        await lab.restart(sig)
        before = _sweeps(lab.documents(run))
        assert before == list(range(1, len(before) + 1)) and 10 <= len(before) < 50
        state = await lab.get(run)
        assert state["state"] == "interrupted", state
        await lab.client.request("run.resume", {"run": run})
        final = await lab.wait_ended(run)
        assert final["state"] == "completed", final
        docs = lab.documents(run)
        sweeps = _sweeps(docs)
        assert sweeps == list(range(1, 51)), Counter(sweeps).most_common(3)  # each once
        assert sweeps[: len(before)] == before  # kept, not redone
        lost = [d for d in docs if d["kind"] == "interruption" and "lost_sweep" in d["detail"]]
        if sig == signal.SIGKILL:
            (named,) = lost
            assert named["detail"]["lost_sweep"] == len(before) + 1
            assert f"sweep {len(before) + 1} was being recorded when the step stopped" in \
                named["reason"]  # fmt: skip
        else:
            assert lost == []
        assert _nwb_sweeps(lab, docs) == list(range(1, 51))


async def test_a_dropped_frame_marks_its_sweep_which_is_recorded_again(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with lab_stack(tmp_path, broker, time_scale=20.0, kinds=KINDS,
                         simulation_extra=RIG) as lab:  # fmt: skip
        run = await lab.start(_protocol(8))
        await lab.wait(run, _recorded(2), "2 sweeps recorded")
        await lab.sim("fault", instrument="digitizer", kind="drop_frame")
        final = await lab.wait_ended(run)
        assert final["state"] == "completed", final
        docs = lab.documents(run)
        assert _sweeps(docs) == list(range(1, 9))
        (loss,) = [d for d in docs if d["kind"] == "interruption"]
        start, stop = loss["detail"]["lost_samples"][0]
        assert stop - start == 200 and "not kept, recorded again" in loss["reason"]
        assert f"samples {start}-{stop - 1} lost" in loss["reason"]
        assert _nwb_sweeps(lab, docs) == list(range(1, 9))


async def test_an_abort_mid_recording_leaves_the_rig_safe(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with lab_stack(tmp_path, broker, time_scale=20.0, kinds=KINDS,
                         simulation_extra=RIG) as lab:  # fmt: skip
        run = await lab.start(_protocol(200))
        await lab.wait(run, _recorded(3), "3 sweeps recorded")
        await lab.sim("fault", instrument="amplifier", kind="split")  # a slow reply meanwhile
        await lab.client.request("run.abort", {"run": run})
        final = await lab.wait_ended(run)
        assert final["state"] == "aborted", final
        amp = (await lab.sim("state", instrument="amplifier"))["channels"]["1"]
        assert (amp["mode"], amp["holding"], amp["holding_enable"], amp["test_enable"]) == \
            ("VC", -0.070, True, False)  # fmt: skip
        assert not (await lab.sim("state", instrument="digitizer"))["running"]
        async with asyncio.timeout(10):  # the control solution, in the next status poll
            while (await _valve(lab)) != 1:
                await asyncio.sleep(0.05)
        sweeps = _sweeps(lab.documents(run))
        assert sweeps == list(range(1, len(sweeps) + 1))  # the one in progress was finished


async def test_a_pause_takes_effect_between_sweeps_and_the_resume_goes_on(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with lab_stack(tmp_path, broker, time_scale=20.0, kinds=KINDS,
                         simulation_extra=RIG) as lab:  # fmt: skip
        run = await lab.start(_protocol(30))
        await lab.wait(run, _recorded(3), "3 sweeps recorded")
        await lab.client.request("run.pause", {"run": run, "when": "now"})
        await lab.wait(run, lambda s: s["state"] == "paused", "paused")
        held = _sweeps(lab.documents(run))
        assert not (await lab.sim("state", instrument="digitizer"))["running"]
        await lab.client.request("run.resume", {"run": run})
        final = await lab.wait_ended(run)
        assert final["state"] == "completed", final
        docs = lab.documents(run)
        assert _sweeps(docs) == list(range(1, 31)) and _sweeps(docs)[: len(held)] == held
        assert [d for d in docs if d["kind"] == "interruption"] == []  # nothing was lost
