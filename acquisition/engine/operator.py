"""The virtual operator: on a simulated bench, the daemon does the physical steps a prompt
asks for (put the plate in the incubator, move it to the harvester, the mat to the counter)
or a patch-clamp step needs done by hand (approach a cell and seal onto it, rupture the
patch) through the bench's control channel. Never on a real bench.
"""

from __future__ import annotations

from typing import Any

import structlog

from acquisition.config import SimulationConfig
from acquisition.sim_control import SimControl

__all__ = ["VirtualOperator"]

log = structlog.get_logger("acquisition.engine")


class VirtualOperator:
    """Performs a prompt's ``action`` for the run's plate (None: a run without one, whose
    plate actions then cannot be done); ``instruments`` maps kind -> id."""

    def __init__(
        self,
        sim: SimulationConfig,
        plate_id: str | None,
        plate_map: dict[str, Any] | None,
        instruments: dict[str, str],
    ) -> None:
        assert sim.control_port is not None
        self._host, self._port = sim.control_host, sim.control_port
        self._plate_id = plate_id
        self._plate_map = plate_map
        self._instruments = instruments

    async def perform(self, action: str) -> str:
        """Do ``action``; return what was done, in words. LinkError / InstrumentReplyError
        when the bench refuses, LookupError when it cannot be done (the prompt then stays
        for a person). Labware an earlier run left where this action needs the place (a
        plate in the harvester, another plate's mat in the counter) is moved to the bench
        first, as a person would, and said."""
        needed = _NEEDS.get(action)
        if needed is not None and needed not in self._instruments:
            raise LookupError(f"the lab config has no {needed}")
        async with SimControl(self._host, self._port) as sim:
            did = await self._act(sim, action)
        log.info("virtual operator", action=action, plate=self._plate_id, did=did)
        return did

    async def _act(self, sim: SimControl, action: str) -> str:
        if action in _HANDS_ON_THE_PIPETTE:
            stages = _HANDS_ON_THE_PIPETTE[action]
            for stage in stages:
                await sim.request("patch", stage=stage)
            return {"approach_cell": "moved the pipette onto a new cell (cell-attached)",
                    "break_in": "ruptured the patch with suction (whole cell)"}[action]
        plate = self._plate_id
        if plate is None:
            raise LookupError(f"this run has no plate to {action.replace('_', ' ')}")
        match action:
            case "plate_to_incubator":
                world = (await sim.request("world"))["world"]
                if plate not in world.get("plates", {}):
                    extra: dict[str, Any] = (
                        {"plate_map": self._plate_map}
                        if self._plate_map is not None
                        else {"layout": "competition", "competitors": ["progesterone"]}
                    )
                    await sim.request("add_plate", plate_id=plate, **extra)
                where = f"incubator:{self._instruments['incubator']}"
                await sim.request("place_plate", plate_id=plate, location=where)
                moved = await self._aside(sim, world)
                return _said(moved, f"put plate {plate} in {where}")
            case "plate_to_harvester":
                where = f"harvester:{self._instruments['harvester']}"
                moved = await self._aside(sim, (await sim.request("world"))["world"])
                await sim.request("place_plate", plate_id=plate, location=where)
                return _said(moved, f"put plate {plate} in {where}")
            case "mat_to_counter":
                world = (await sim.request("world"))["world"]
                mats = [m for m, v in world.get("mats", {}).items()
                        if v.get("plate_id") == plate]  # fmt: skip
                if not mats:
                    raise LookupError(f"no filter mat from plate {plate} yet")
                await sim.request("place_plate", plate_id=plate, location="bench")
                moved = await self._aside(sim, world, keep=mats[-1])
                where = f"counter:{self._instruments['counter']}"
                await sim.request("place_mat", mat_id=mats[-1], location=where)
                return _said(moved, f"moved mat {mats[-1]} to {where}")
            case "empty_waste" | "refill_buffer" | "seat_mat":
                harvester = self._instruments["harvester"]
                await sim.request("fault", instrument=harvester, kind=action)
                return f"{action.replace('_', ' ')} at the harvester {harvester}"
            case "release_mat":  # the harvester releases it on retry; take the mat away
                moved = await self._aside(sim, (await sim.request("world"))["world"])
                return _said(moved, "took the earlier mat out of the harvester")
        raise LookupError(f"the virtual operator cannot {action!r}")

    async def _aside(
        self, sim: SimControl, world: dict[str, Any], keep: str | None = None
    ) -> list[str]:
        """To the bench: another plate in the harvester, another plate's mat in the
        harvester, any mat but ``keep`` in the counter. What was moved, in words."""
        inst = self._instruments
        harvester = f"harvester:{inst['harvester']}" if "harvester" in inst else None
        counter = f"counter:{inst['counter']}" if "counter" in inst else None
        moved: list[str] = []
        for pid, info in world.get("plates", {}).items():
            if pid != self._plate_id and info.get("location") == harvester:
                await sim.request("place_plate", plate_id=pid, location="bench")
                moved.append(f"moved plate {pid} from {harvester} to the bench")
        for mid, info in world.get("mats", {}).items():
            where = info.get("location")
            stray = (where == harvester and info.get("plate_id") != self._plate_id) or (
                where == counter and mid != keep)
            if stray:
                await sim.request("place_mat", mat_id=mid, location="bench")
                moved.append(f"moved mat {mid} from {where} to the bench")
        return moved


_HANDS_ON_THE_PIPETTE = {"approach_cell": ("bath", "cell_attached"), "break_in": ("whole_cell",)}
_NEEDS = {"approach_cell": "amplifier", "break_in": "amplifier",
          "plate_to_incubator": "incubator", "plate_to_harvester": "harvester",
          "mat_to_counter": "counter", "empty_waste": "harvester", "refill_buffer": "harvester",
          "seat_mat": "harvester", "release_mat": "harvester"}  # fmt: skip


def _said(moved: list[str], did: str) -> str:
    return "; ".join([*moved, did])
