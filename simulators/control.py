"""The simulator control channel: JSON lines over TCP (documented in
``docs/protocols/counter.md``, section "Simulator control channel").

One JSON object per line in, one JSON object per line out: ``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}``. ``instrument`` selects a simulator by id and may be left
out when only one is served.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import asdict
from typing import Annotated, Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from simulators.counter import CounterSimulator, FaultKind

__all__ = ["ControlServer"]

_MAX_REQUEST = 1 << 20
_log = structlog.get_logger()


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instrument: str | None = None


class StateRequest(_Request):
    op: Literal["state"]


class FaultRequest(_Request):
    op: Literal["fault"]
    kind: FaultKind


class LoadPlateRequest(_Request):
    op: Literal["load_plate"]
    plate_id: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    dpm: dict[str, Annotated[float, Field(ge=0)]]
    luminescence_cpm: dict[str, Annotated[float, Field(ge=0)]] = {}
    quench: dict[str, Annotated[float, Field(ge=0, le=1)]] = {}
    medium: Literal["filtermat", "liquid"] = "filtermat"


class LoadDemoRequest(_Request):
    op: Literal["load_demo_plate"]
    plate_id: str = Field("DEMO-0001", pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    seed: int = 1


class RecordsRequest(_Request):
    op: Literal["records"]
    start: int = Field(0, ge=0)


_Any = Annotated[
    StateRequest | FaultRequest | LoadPlateRequest | LoadDemoRequest | RecordsRequest,
    Field(discriminator="op"),
]
_REQUEST = TypeAdapter[Any](_Any)


class ControlServer:
    """Serves the control channel for one or more simulators keyed by instrument id."""

    def __init__(self, simulators: Mapping[str, CounterSimulator]) -> None:
        self._sims = dict(simulators)
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
            where = ".".join(str(p) for p in first["loc"]) or "request"
            return {"ok": False, "error": f"{where}: {first['msg']}"}
        sim = self._sims.get(request.instrument or "", None)
        if sim is None and request.instrument is None and len(self._sims) == 1:
            sim = next(iter(self._sims.values()))
        if sim is None:
            return {"ok": False, "error": f"unknown instrument {request.instrument!r}"}
        try:
            return {"ok": True, **self._apply(sim, request)}
        except (RuntimeError, ValueError) as exc:
            return {"ok": False, "error": str(exc)}

    @staticmethod
    def _apply(sim: CounterSimulator, request: Any) -> dict[str, Any]:
        match request:
            case FaultRequest(kind=kind):
                sim.inject_fault(kind)
            case LoadPlateRequest():
                sim.load_plate(
                    request.plate_id, request.dpm, request.luminescence_cpm,
                    medium=request.medium, quench_by_well=request.quench,
                )
            case LoadDemoRequest(seed=seed, plate_id=plate_id):
                sim.load_demo_plate(seed, plate_id)
            case RecordsRequest(start=start):
                return {"records": [asdict(r) for r in sim.records()[start:]]}
        return sim.snapshot()

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
