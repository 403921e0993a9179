"""A second vendor's counter, kind ``acme-counter``, defined only here: its own config, its
own driver class (nothing inherited from the shipped one: it holds a link to the counter and
forwards what the ``Counter`` role asks), and ``plays = "counter"``, so the shipped count
step drives it with no step edited. Loaded with ``plugins = ["tests.plugin_counter"]``.

The simulated bench has no ``acme-counter`` simulator; it speaks the shipped counter's wire
here, so the test points it at the bench's simulated counter."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal

from acquisition.config import CounterConfig
from acquisition.kinds import InstrumentKind, register_kind
from drivers.base import Readings
from drivers.counter import CounterDriver, CounterStatus, WellCount
from drivers.roles import Counter


class AcmeCounterConfig(CounterConfig):
    kind: Literal["acme-counter"]  # type: ignore[assignment]


class AcmeCounterDriver:
    """The role's methods, each forwarded to the link it holds."""

    def __init__(self, config: AcmeCounterConfig, clock: Any) -> None:
        self._wire = CounterDriver(config.address, instrument_id=config.id, clock=clock,
                                   timeout_s=config.timeout_s,
                                   poll_interval_s=config.poll_interval_s)  # fmt: skip
        self.calls: list[str] = []

    @property
    def instrument_id(self) -> str:
        return self._wire.instrument_id

    @property
    def connected(self) -> bool:
        return self._wire.connected

    async def open(self) -> None:
        await self._wire.open()

    async def close(self) -> None:
        await self._wire.close()

    async def identify(self) -> object:
        return {"vendor": "Acme", "model": "AC-12", "via": "shipped counter wire"}

    async def readings(self) -> Readings:
        return await self._wire.readings()

    async def status(self) -> CounterStatus:
        return await self._wire.status()

    async def count_plate(
        self, *, count_time_s: float, precision_pct: float | None = None, isotope: str = "H3",
        wells: Sequence[str] | None = None, resume_from: int | None = None,
    ) -> AsyncIterator[WellCount]:  # fmt: skip
        self.calls.append("count_plate")
        async for count in self._wire.count_plate(
            count_time_s=count_time_s, precision_pct=precision_pct, isotope=isotope,
            wells=wells, resume_from=resume_from,
        ):  # fmt: skip
            yield count

    async def abort(self) -> None:
        await self._wire.abort()

    async def clear_fault(self) -> None:
        await self._wire.clear_fault()


def _make(config: AcmeCounterConfig, clock: Any) -> AcmeCounterDriver:
    return AcmeCounterDriver(config, clock)


register_kind(InstrumentKind("acme-counter", AcmeCounterConfig, _make, Counter,
                             "a second vendor's counter (test plug-in)",
                             plays="counter"))  # fmt: skip
