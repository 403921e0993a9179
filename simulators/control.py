"""The simulator control channel of a bench: JSON lines over TCP, the virtual operator's hands
(documented in ``docs/protocols/simulation.md``; the counter ops also in
``docs/protocols/counter.md``).

One JSON object per line in, one JSON object per line out: ``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}``. ``instrument`` selects a simulator by id and may be left
out when only one fits the op. Instrument ops: ``state``, ``fault``, ``load_plate``,
``load_demo_plate``, ``records`` (counters), ``open_incubator_door`` /
``close_incubator_door``, ``patch`` (the patch rig's stage: ``bath``, ``cell_attached``,
``whole_cell``). World ops (when a world is served): ``add_plate``, ``place_plate``,
``place_mat``, ``harvest`` (by hand, without a harvester simulator), ``world``, ``truth``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import asdict
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

import structlog
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from simulators.counter import CounterSimulator
from simulators.plate_map import PlateMap, competition_layout, parse_plate_map
from simulators.world import World
from simulators.world_api import HarvestSettings

__all__ = ["ControlServer", "Faultable"]

_MAX_REQUEST = 1 << 20
_ID = r"^[A-Za-z0-9_.\-]{1,64}$"
_log = structlog.get_logger()


@runtime_checkable
class Faultable(Protocol):
    """Any simulator the control channel can reach: it takes injected faults by name."""

    def inject_fault(self, kind: Any, /, **kwargs: Any) -> None: ...


@runtime_checkable
class _Snapshotting(Protocol):
    def snapshot(self) -> dict[str, object]: ...


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instrument: str | None = None


class StateRequest(_Request):
    op: Literal["state"]


class FaultRequest(_Request):
    op: Literal["fault"]
    kind: str = Field(min_length=1, max_length=64)
    wells: list[Annotated[str, Field(pattern=r"^[A-H](?:[1-9]|1[0-2])$")]] | None = Field(
        None, max_length=96, description="for the harvester's clogged_wells fault"
    )


class LoadPlateRequest(_Request):
    op: Literal["load_plate"]
    plate_id: str = Field(pattern=_ID)
    dpm: dict[str, Annotated[float, Field(ge=0)]]
    luminescence_cpm: dict[str, Annotated[float, Field(ge=0)]] = {}
    quench: dict[str, Annotated[float, Field(ge=0, le=1)]] = {}
    medium: Literal["filtermat", "liquid"] = "filtermat"


class LoadDemoRequest(_Request):
    op: Literal["load_demo_plate"]
    plate_id: str = Field("DEMO-0001", pattern=_ID)
    seed: int = 1


class RecordsRequest(_Request):
    op: Literal["records"]
    start: int = Field(0, ge=0)


class DoorRequest(_Request):
    op: Literal["open_incubator_door", "close_incubator_door"]


class AddPlateRequest(BaseModel):
    """A plate map, or ``layout`` with the generator's arguments as further fields."""

    model_config = ConfigDict(extra="allow")
    op: Literal["add_plate"]
    plate_id: str = Field(pattern=_ID)
    location: str = "bench"
    plate_map: dict[str, Any] | None = None
    layout: Literal["competition"] | None = None


class PlacePlateRequest(_Request):
    op: Literal["place_plate"]
    plate_id: str
    location: str


class PlaceMatRequest(_Request):
    op: Literal["place_mat"]
    mat_id: str
    location: str


class HarvestRequest(_Request):
    op: Literal["harvest"]
    location: str
    prewet_pei: bool = True
    washes: int = Field(3, ge=0, le=20)
    wash_volume_ml: float = Field(1.0, ge=0, le=10)
    wash_temperature_c: float = Field(4.0, ge=-5, le=60)
    wash_seconds_per_cycle: float = Field(5.0, ge=0, le=600)
    clogged_wells: list[str] = []


class PatchRequest(_Request):
    """The virtual operator's hands on the patch rig: move the pipette's patch on."""

    op: Literal["patch"]
    stage: Literal["bath", "cell_attached", "whole_cell"]


class WorldRequest(_Request):
    op: Literal["world", "truth"]


_Instrument = (StateRequest | FaultRequest | LoadPlateRequest | LoadDemoRequest | RecordsRequest
               | DoorRequest | PatchRequest)
_WorldOp = AddPlateRequest | PlacePlateRequest | PlaceMatRequest | HarvestRequest | WorldRequest
_REQUEST = TypeAdapter[Any](Annotated[_Instrument | _WorldOp, Field(discriminator="op")])
_COUNTER_OPS = frozenset({"load_plate", "load_demo_plate", "records"})


class ControlServer:
    """Serves the control channel for the simulators of a bench (keyed by instrument id;
    counters are :class:`CounterSimulator`, any other simulator is :class:`Faultable`) and,
    optionally, its world."""

    def __init__(self, simulators: Mapping[str, object], world: World | None = None) -> None:
        self._sims = dict(simulators)
        self._world = world
        self._server: asyncio.Server | None = None
        self._clients: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self.host = "127.0.0.1"
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, host, port, limit=_MAX_REQUEST)
        self.host, self.port = host, self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._clients.values()):
            writer.transport.abort()
        if self._clients:
            await asyncio.gather(*self._clients, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    def handle(self, raw: bytes) -> dict[str, Any]:
        """One request line to one reply object."""
        try:
            request = _REQUEST.validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"][1:]) or "request"
            return {"ok": False, "error": f"{where}: {first['msg']}"}
        try:
            if isinstance(request, _Instrument):
                return {"ok": True, **self._instrument_op(request)}
            if self._world is None:
                return {"ok": False, "error": "op: no simulated world on this bench"}
            return {"ok": True, **self._world_op(self._world, request)}
        except (RuntimeError, ValueError) as exc:
            return {"ok": False, "error": str(exc)}

    # ------------------------------------------------------------------ instruments

    def _instrument_op(self, request: _Instrument) -> dict[str, Any]:
        if isinstance(request, PatchRequest):
            rigs = {id(r): r for s in self._sims.values() if (r := getattr(s, "rig", None))}
            if len(rigs) != 1:
                raise ValueError("op: this bench has no patch rig")
            rig = next(iter(rigs.values()))
            rig.move_to(request.stage)
            return {"rig": rig.truth()}
        if isinstance(request, DoorRequest):
            sim = self._select(request.instrument, self._incubator_ids())
            kind = "door_open" if request.op == "open_incubator_door" else "door_close"
            if self._world is not None:
                self._world.advance()  # the plates were in the closed chamber until now
            _faultable(sim).inject_fault(kind)
            if self._world is not None:
                self._world.advance()  # and sample the chamber as the door moves
            return _state(sim)
        if request.op in _COUNTER_OPS:
            counters = [i for i, s in self._sims.items() if isinstance(s, CounterSimulator)]
            sim = self._select(request.instrument, counters)
        else:
            sim = self._select(request.instrument, list(self._sims))
        if isinstance(request, FaultRequest):
            try:
                if request.wells is not None:
                    _faultable(sim).inject_fault(request.kind, wells=request.wells)
                else:
                    _faultable(sim).inject_fault(request.kind)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"kind: {exc}") from None
            return _state(sim)
        if isinstance(request, StateRequest):
            return _state(sim)
        counter = _counter(sim, request.instrument)
        match request:
            case LoadPlateRequest():
                counter.load_plate(
                    request.plate_id, request.dpm, request.luminescence_cpm,
                    medium=request.medium, quench_by_well=request.quench,
                )
            case LoadDemoRequest(seed=seed, plate_id=plate_id):
                counter.load_demo_plate(seed, plate_id)
            case RecordsRequest(start=start):
                return {"records": [asdict(r) for r in counter.records()[start:]]}
        return counter.snapshot()

    def _select(self, instrument: str | None, candidates: list[str]) -> object:
        if instrument is not None:
            if instrument not in self._sims:
                raise ValueError(f"unknown instrument {instrument!r}")
            return self._sims[instrument]
        if len(candidates) == 1 and candidates[0] in self._sims:
            return self._sims[candidates[0]]
        raise ValueError(
            f"instrument: required, one of {', '.join(sorted(candidates)) or 'none served'}")

    def _incubator_ids(self) -> list[str]:
        if self._world is not None and self._world.incubator_ids():
            return list(self._world.incubator_ids())
        return [i for i, s in self._sims.items() if not isinstance(s, CounterSimulator)]

    # ------------------------------------------------------------------ world

    @staticmethod
    def _world_op(world: World, request: _WorldOp) -> dict[str, Any]:
        match request:
            case AddPlateRequest():
                world.add_plate(request.plate_id, _plate_map(request), request.location)
                return {"plate_id": request.plate_id, **world.plate_summary(request.plate_id)}
            case PlacePlateRequest(plate_id=plate_id, location=location):
                world.place_plate(plate_id, location)
                return {"plate_id": plate_id, **world.plate_summary(plate_id)}
            case PlaceMatRequest(mat_id=mat_id, location=location):
                world.place_mat(mat_id, location)
                return {"mat_id": mat_id, "location": location}
            case HarvestRequest():
                settings = HarvestSettings(**request.model_dump(exclude={"op", "location",
                                                                         "instrument"}))
                mat = world.harvest(request.location, settings)
                return {"mat_id": mat.mat_id, "plate_id": mat.plate_id,
                        "dpm": {w: round(v, 3) for w, v in mat.dpm_by_well.items()}}
            case WorldRequest(op="truth"):
                return {"truth": world.truth_summary()}
        return {"world": world.snapshot()}

    # ------------------------------------------------------------------ wire

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # always inside the server's handler task
        self._clients[task] = writer
        try:
            while line := await reader.readline():
                reply = self.handle(line) if line.strip() else {"ok": False, "error": "empty"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError) as exc:
            _log.debug("control client dropped", error=str(exc))
        finally:
            del self._clients[task]
            writer.transport.abort()


def _faultable(sim: object) -> Faultable:
    if isinstance(sim, Faultable):
        return sim
    raise ValueError(f"instrument: {type(sim).__name__} takes no faults")


def _counter(sim: object, instrument: str | None) -> CounterSimulator:
    if isinstance(sim, CounterSimulator):
        return sim
    raise ValueError(f"instrument: {instrument!r} is not a counter")


def _state(sim: object) -> dict[str, Any]:
    return dict(sim.snapshot()) if isinstance(sim, _Snapshotting) else {}


def _plate_map(request: AddPlateRequest) -> PlateMap:
    extra = dict(request.model_extra or {})
    if (request.plate_map is None) == (request.layout is None):
        raise ValueError("plate_map: give either a plate_map or a layout")
    if request.plate_map is not None:
        if extra:
            raise ValueError(f"{next(iter(extra))}: unexpected with plate_map")
        return parse_plate_map(request.plate_map)
    return competition_layout(**extra)
