"""An instrument kind defined only here (tests/test_instrument_kinds.py): a balance that
plays no role the shipped steps use. A lab config loads it with
``plugins = ["tests.plugin_kinds"]``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from acquisition.config import InstrumentSettings
from acquisition.kinds import InstrumentKind, register_kind
from drivers.base import Readings


class BalanceConfig(InstrumentSettings):
    kind: Literal["balance"]
    address: str = Field(pattern=r"^tcp://")
    resolution_mg: float = Field(0.1, gt=0)


class BalanceDriver:
    """Stands in for a driver package's driver (no wire needed to test the registry)."""

    def __init__(self, config: BalanceConfig, clock: Any) -> None:
        self.config, self.clock, self.instrument_id = config, clock, config.id
        self._open = False

    @property
    def connected(self) -> bool:
        return self._open

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    async def identify(self) -> dict[str, str]:
        return {"vendor": "Test", "model": "B-1"}

    async def readings(self) -> Readings:
        return Readings(state="idle", values={"mass_mg": 0.0})


class Balance:
    """Its role: what a weighing step would ask for."""


register_kind(InstrumentKind("balance", BalanceConfig, BalanceDriver, Balance, "a balance"))
