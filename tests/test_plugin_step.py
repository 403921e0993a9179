"""A step type defined only in a test module (tests/plugin_steps.py) runs through the engine
with real processes: loaded by the lab config's ``plugins``, planned, run, paused mid-way
and resumed, then after a daemon SIGKILL resumed by its own declared policy (it asks the
operator). No engine file names it."""

from __future__ import annotations

import importlib
import signal
from pathlib import Path

import pytest

from acquisition.protocols import format_plan, parse_protocol, plan
from devtools.mosquitto import MosquittoBroker
from tests.crash_lab import ENDED, _kinds, _phases, lab_stack

pytestmark = pytest.mark.slow

SOAK_THEN_COUNT = """\
name = "plugin-soak"

[[steps]]
type = "soak"
duration = "5 min"

[[steps]]
type = "count"
isotope = "H3"
count_time = "10 s"
"""
PLUGINS = 'plugins = ["tests.plugin_steps"]'


def test_the_plug_in_is_planned_like_any_step() -> None:
    # registers "soak", as the config's plugins do (again: the registry is restored after
    # each test, and a module already imported would not register anew)
    importlib.reload(importlib.import_module("tests.plugin_steps"))

    protocol, _ = parse_protocol(SOAK_THEN_COUNT, source="plugin-soak.toml")
    text = format_plan(plan(protocol), "plugin-soak.toml")
    assert " 1. soak   stand 5 min" in text, text
    assert plan(protocol).steps[0].duration_s == 300.0


async def test_a_plug_in_step_pauses_survives_a_sigkill_and_resumes_by_its_policy(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with lab_stack(tmp_path, broker, time_scale=50.0, top_extra=PLUGINS) as lab:
        run = await lab.start(SOAK_THEN_COUNT)  # the count: the demo plate in the counter
        await lab.wait(run, lambda s: s["step"] == "soak" and (s["progress"] or {}).get(
            "done", 0) >= 30, "the soak under way")  # fmt: skip
        await lab.client.request("run.pause", {"run": run, "when": "now"})
        paused = await lab.wait(run, lambda s: s["state"] in {"paused", *ENDED}, "paused")
        assert paused["state"] == "paused", paused  # mid-way: the plug-in said it may
        stood = paused["progress"]["done"]
        await lab.client.request("run.resume", {"run": run})
        await lab.wait(run, lambda s: s["state"] == "running"
                       and (s["progress"] or {}).get("done", 0) > stood, "going on")  # fmt: skip

        await lab.restart(signal.SIGKILL)
        await lab.wait(run, lambda s: s["state"] == "interrupted", "interrupted")
        await lab.client.request("run.resume", {"run": run})
        asked = await lab.wait(run, lambda s: s["state"] in {"awaiting-recovery", *ENDED},
                               "the plug-in's question")  # fmt: skip
        assert asked["state"] == "awaiting-recovery", asked
        assert asked["message"].startswith("step 1 (soak) was interrupted by a daemon restart")
        await lab.client.request("run.recover", {"run": run, "action": "retry"})
        final = await lab.wait_ended(run)
        assert final["state"] == "completed", (final, lab.daemon.tail())

        docs = lab.documents(run)
        soak = [p for p in _phases(docs) if p[0] == "soak"]
        assert soak[0] == ("soak", "started") and soak[-1] == ("soak", "finished"), soak
        assert ("soak", "paused") in soak and ("soak", "resumed") in soak, soak
        assert len([d for d in _kinds(docs, "data")]) == 96  # the count after it, in full
