"""Where the labware is: what the instruments sense, and on a simulated bench what its world
says.

Read at a run's first prompt (labware left in an instrument by an earlier run is named to
the operator), when a harvest is checked before it starts, and when a run skips or aborts
a step that held labware (the whereabouts go into an interruption document). The
instruments' own sensors come first (the harvester's plate sensor and mat report, the
counter's plate barcode); the world is asked only on a simulated bench, through its
control channel, never by importing simulator code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import structlog

from acquisition.instruments import InstrumentHandle
from acquisition.sim_control import SimControl
from drivers.errors import InstrumentError
from drivers.roles import Counter, Harvester

__all__ = ["BenchView", "strays", "survey"]

log = structlog.get_logger("acquisition.engine")


class BenchView:
    """Read-only look at a simulated bench's world (plates and mats and where they are)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    async def world(self) -> dict[str, Any]:
        async with SimControl(self.host, self.port) as sim:
            world: dict[str, Any] = (await sim.request("world"))["world"]
            return world

    async def plate_at(self, location: str) -> str | None:
        """The plate the world has at ``location`` (the last one placed there)."""
        here = [pid for pid, p in (await self.world()).get("plates", {}).items()
                if p.get("location") == location]  # fmt: skip
        return here[-1] if here else None


async def survey(
    handles: Mapping[str, InstrumentHandle], bench: BenchView | None
) -> dict[str, Any]:
    """What each leased instrument holds, by instrument id; ``world`` (simulation): the
    plates and mats that sit in an instrument. Never raises: an instrument that cannot be
    read says so under ``error``."""
    out: dict[str, Any] = {}
    for handle in handles.values():
        driver, iid = handle.driver, handle.config.id
        try:
            if isinstance(driver, Harvester):
                st, mat = await driver.status(), await driver.mat()
                out[iid] = {"kind": "harvester", "state": st.state, "step": st.step,
                            "plate_present": st.plate_present, "mat": asdict(mat),
                            "waste_pct": st.waste_pct, "buffer_pct": st.buffer_pct}  # fmt: skip
            elif isinstance(driver, Counter):
                cst = await driver.status()
                out[iid] = {"kind": "counter", "state": cst.state, "plate_id": cst.plate_id}
        except (InstrumentError, OSError) as exc:
            out[iid] = {"kind": handle.config.kind, "error": str(exc)}
    if bench is not None:
        try:
            world = await bench.world()
        except (InstrumentError, OSError) as exc:
            out["world"] = {"error": str(exc)}
        else:
            out["world"] = {
                "plates": {pid: p.get("location") for pid, p in world.get("plates", {}).items()
                           if str(p.get("location", "bench")) != "bench"},
                "mats": {mid: m.get("location") for mid, m in world.get("mats", {}).items()
                         if str(m.get("location", "bench")) != "bench"},
            }  # fmt: skip
    return out


def strays(found: Mapping[str, Any], plate_id: str | None) -> list[str]:
    """Labware that is not this run's and sits where the run will need the place, in
    words: a plate in the harvester, a used mat seated in it, another plate's mat in the
    counter."""
    world = found.get("world") or {}
    plates: dict[str, str] = world.get("plates") or {}
    out: list[str] = []
    for iid, info in found.items():
        if iid == "world" or "error" in info:
            continue
        if info["kind"] == "harvester":
            held = [p for p, where in plates.items() if where == f"harvester:{iid}"]
            if held and held[-1] != plate_id:
                out.append(f"{_the('harvester', iid)} holds plate {held[-1]}")
            elif info["plate_present"] and not held and not world:
                out.append(f"{_the('harvester', iid)} holds a plate")
            mat = info["mat"]
            if mat["seated"] and (mat.get("began") or mat["aspirated"] or mat["dried"]):
                out.append(f"{_the('harvester', iid)}'s seated filter mat holds an earlier harvest")
        elif info["kind"] == "counter":
            held_id = info.get("plate_id")
            if held_id and held_id != plate_id and not str(held_id).startswith(f"{plate_id}-"):
                out.append(f"{_the('counter', iid)} holds {held_id}")
    return out


def _the(kind: str, iid: str) -> str:
    """"the counter" for the instrument whose id is its kind, else "the counter c2"."""
    return f"the {kind}" if iid == kind else f"the {kind} {iid}"
