"""The virtual operator: on a simulated bench, the daemon does the physical steps a prompt
asks for (put the plate in the incubator, move it to the harvester, the mat to the counter)
through the bench's control channel, then answers the prompt. Never on a real bench.
"""

from __future__ import annotations

from typing import Any

import structlog

from acquisition.config import SimulationConfig
from acquisition.sim_control import SimControl

__all__ = ["VirtualOperator"]

log = structlog.get_logger("acquisition.engine")


class VirtualOperator:
    """Performs a prompt's ``action`` for one plate; ``instruments`` maps kind -> id."""

    def __init__(
        self,
        sim: SimulationConfig,
        plate_id: str,
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
        for a person)."""
        needed = {"plate_to_incubator": "incubator", "plate_to_harvester": "harvester",
                  "mat_to_counter": "counter"}.get(action)  # fmt: skip
        if needed is not None and needed not in self._instruments:
            raise LookupError(f"the lab config has no {needed}")
        async with SimControl(self._host, self._port) as sim:
            match action:
                case "plate_to_incubator":
                    world = (await sim.request("world"))["world"]
                    if self._plate_id not in world.get("plates", {}):
                        extra: dict[str, Any] = (
                            {"plate_map": self._plate_map}
                            if self._plate_map is not None
                            else {"layout": "competition", "competitors": ["progesterone"]}
                        )
                        await sim.request("add_plate", plate_id=self._plate_id, **extra)
                    where = f"incubator:{self._instruments['incubator']}"
                    await sim.request("place_plate", plate_id=self._plate_id, location=where)
                case "plate_to_harvester":
                    where = f"harvester:{self._instruments['harvester']}"
                    await sim.request("place_plate", plate_id=self._plate_id, location=where)
                case "mat_to_counter":
                    world = (await sim.request("world"))["world"]
                    mats = [m for m, v in world.get("mats", {}).items()
                            if v.get("plate_id") == self._plate_id]  # fmt: skip
                    if not mats:
                        raise LookupError(f"no filter mat from plate {self._plate_id} yet")
                    await sim.request("place_plate", plate_id=self._plate_id, location="bench")
                    where = f"counter:{self._instruments['counter']}"
                    for old, v in world.get("mats", {}).items():  # the last run's mat out
                        if v.get("location") == where and old != mats[-1]:
                            await sim.request("place_mat", mat_id=old, location="bench")
                    await sim.request("place_mat", mat_id=mats[-1], location=where)
                    return f"moved mat {mats[-1]} to {where}"
                case _:
                    raise LookupError(f"the virtual operator cannot {action!r}")
        log.info("virtual operator", action=action, plate=self._plate_id)
        return f"{action.replace('_', ' ')} ({self._plate_id})"
