"""The simulated-instrument registry: for each kind, how ``assay-sim bench`` checks an
address and starts the simulator behind it. One entry per kind, registered by the module
that builds that simulator (the shipped ones: :mod:`simulators.bench_kinds`); the bench and
its config check iterate the registry and name no kind."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["BenchError", "SimHandle", "SimKind", "register_sim_kind", "sim_kind", "spec_from"]

_SHIPPED = "simulators.bench_kinds"


class BenchError(ValueError):
    """A setting the bench cannot use; ``str()`` is ``<field>: <what was expected>``."""


class SimHandle(Protocol):
    """A started simulator as the bench holds it."""

    @property
    def address(self) -> str: ...

    def describe(self) -> str: ...

    async def stop(self) -> None: ...


@dataclass(frozen=True)
class SimKind:
    name: str
    address_problem: Callable[[str], str | None]
    """What the address should have been, or None if the bench can serve it."""
    start: Callable[[Any, Any, Any, Any], Awaitable[tuple[SimHandle, object]]]
    """``(instrument entry, bench config, clock, world)`` -> its handle and simulator."""


_KINDS: dict[str, SimKind] = {}


def register_sim_kind(entry: SimKind) -> SimKind:
    _KINDS[entry.name] = entry
    return entry


def sim_kind(name: str) -> SimKind | None:
    """The entry of ``name``, or None if no simulator of that kind is registered."""
    importlib.import_module(_SHIPPED)  # the shipped simulators register themselves
    return _KINDS.get(name)


def spec_from(spec_type: type[Any], section: str, settings: Mapping[str, Any],
              **fixed: Any) -> Any:  # fmt: skip
    """A simulator spec from ``[simulation.<section>]``; unknown keys are an error."""
    names = {f.name for f in dataclasses.fields(spec_type)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise BenchError(f"simulation.{section}.{unknown[0]}: no such setting")
    return spec_type(**{**settings, **fixed})
