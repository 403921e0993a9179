"""What the engine needs of the daemon, as a narrow interface: the engine's modules take a
:class:`RunServices` (the daemon is one), never the daemon itself, so the engine does not
depend on the daemon that uses it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from acquisition.config import LabConfig
from acquisition.instruments import InstrumentManager
from acquisition.journal import Journal
from acquisition.run_recorder import RunRecorder
from drivers.clock import Clock

if TYPE_CHECKING:
    from acquisition.engine.runner import ProtocolRun

__all__ = ["ActiveEntry", "Notifier", "RunServices"]


class Notifier(Protocol):
    def notify(self) -> None:
        """Wake the MQTT link: the outbox has something new."""


class ActiveEntry(Protocol):
    @property
    def engine(self) -> ProtocolRun: ...


class RunServices(Protocol):
    @property
    def config(self) -> LabConfig: ...
    @property
    def journal(self) -> Journal: ...
    @property
    def instruments(self) -> InstrumentManager: ...
    @property
    def link(self) -> Notifier: ...
    @property
    def clock(self) -> Clock:
        """The run clock (virtual in simulation: time-scaled)."""
    @property
    def wall(self) -> Clock:
        """Real time (timestamps, throttles)."""
    @property
    def active(self) -> Mapping[str, ActiveEntry]:
        """Runs this daemon is running, by run id."""

    def resuming(self, run: str) -> bool:
        """A resume of ``run`` is under way."""

    async def resume_run(self, run: str) -> RunRecorder: ...
