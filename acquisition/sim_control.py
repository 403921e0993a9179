"""A client for the simulated bench's control channel (the virtual operator's hands).

In simulation the physical steps an operator does at a real bench (load a plate into the
incubator, move it to the harvester, put the filter mat in the counter, open a door) go to
``assay-sim``'s control channel: JSON lines over TCP (docs/protocols/simulation.md). The
daemon reaches it over the wire, like the instruments, and never imports simulator code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from types import TracebackType
from typing import Any

from drivers.errors import InstrumentReplyError, LinkError

__all__ = ["SimControl"]

MAX_REPLY = 1 << 22


class SimControl:
    """``async with SimControl(host, port) as sim: await sim.request("place_plate", ...)``."""

    def __init__(self, host: str, port: int, *, timeout_s: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> SimControl:
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, limit=MAX_REPLY), self.timeout_s
            )
        except (OSError, TimeoutError) as exc:
            raise LinkError(
                f"cannot reach the simulator control channel at {self.host}:{self.port}: {exc}",
                instrument="sim-control",
            ) from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()

    async def request(self, op: str, **args: Any) -> dict[str, Any]:
        """Send one operation; its reply, or InstrumentReplyError with the simulator's words."""
        if self._reader is None or self._writer is None:
            raise LinkError("the control channel is not open", instrument="sim-control")
        async with self._lock:
            self._writer.write(json.dumps({"op": op, **args}).encode() + b"\n")
            try:
                await self._writer.drain()
                line = await asyncio.wait_for(self._reader.readline(), self.timeout_s)
            except (OSError, TimeoutError) as exc:
                raise LinkError(f"control channel: {exc}", instrument="sim-control") from exc
        if not line:
            raise LinkError("the control channel closed", instrument="sim-control")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise InstrumentReplyError(
                f"simulator refused '{op}': {reply.get('error', reply)}", instrument="sim-control"
            )
        return reply
