"""What the daemon needs from every instrument driver, whatever its class or transport.

A driver is an async context manager with ``open``/``close``, a ``connected`` flag, an
``identify()`` and a ``readings()`` snapshot. The daemon's instrument supervisor uses only
this; runs use the driver's own, instrument-specific API (``count_plate``,
``set_temperature``, ``wash``, ``open_valve`` ...).

:class:`SerialInstrument` is the shared lifecycle of the drivers on one
:class:`~drivers.serial_link.SerialLink`, and their one policy for garbled replies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    ClassVar,
    Generic,
    Literal,
    Protocol,
    Self,
    TypeVar,
    runtime_checkable,
)

from drivers.errors import InstrumentReplyError, ProtocolError

if TYPE_CHECKING:
    from drivers.serial_link import SerialLink

__all__ = ["Instrument", "LinkedInstrument", "ReadingValue", "Readings", "SerialInstrument"]

T = TypeVar("T")

ReadingValue = float | int | str | bool | None


@dataclass(frozen=True)
class Readings:
    """One snapshot of an instrument, as the daemon publishes it.

    ``state``: ``idle`` (ready), ``busy`` (doing something), ``fault`` (needs an operator;
    ``fault`` says what). ``values``: the key live readings, with the unit in the key name
    (``temperature_c``, ``vacuum_bar``, ``valve_open``), flat and JSON-able.
    """

    state: Literal["idle", "busy", "fault"]
    fault: str | None = None
    values: Mapping[str, ReadingValue] = field(default_factory=dict)


@runtime_checkable
class Instrument(Protocol):
    """The common surface of every driver."""

    @property
    def connected(self) -> bool: ...

    async def open(self) -> None:
        """Connect; raise :class:`~drivers.errors.LinkError` if unreachable."""
        ...

    async def close(self) -> None:
        """Disconnect; idempotent, never raises for an already-closed link."""
        ...

    async def identify(self) -> object:
        """Vendor, model, serial, firmware and the like: a Mapping, or a dataclass whose
        fields are str or int (the daemon publishes those fields)."""
        ...

    async def readings(self) -> Readings:
        """The current state and key readings (one short exchange with the instrument)."""
        ...


class _Link(Protocol):
    """What :class:`LinkedInstrument` needs of a link (serial, tagged TCP lines, frames)."""

    @property
    def connected(self) -> bool: ...
    @property
    def reconnects(self) -> int: ...
    async def open(self) -> None: ...
    async def close(self) -> None: ...


L = TypeVar("L", bound=_Link)


class LinkedInstrument(Generic[L]):
    """The lifecycle of a driver on one link: ``open`` (the link, then :meth:`_probe`, the
    one exchange proving the right instrument answers; the link closed again if it does
    not), ``close``, the async context manager, ``connected`` and ``reconnects``."""

    _link: L

    async def _probe(self) -> None:
        """One exchange that proves the right instrument answers (run by :meth:`open`)."""
        raise NotImplementedError

    async def open(self) -> None:
        """Open the link and check the instrument answers; raises
        :class:`~drivers.errors.LinkError` (and closes the link again) if it does not."""
        await self._link.open()
        try:
            await self._probe()
        except BaseException:
            await self._link.close()
            raise

    async def close(self) -> None:
        await self._link.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._link.connected

    @property
    def reconnects(self) -> int:
        return self._link.reconnects


class SerialInstrument(LinkedInstrument["SerialLink"]):
    """Base of a driver speaking lines over one :class:`~drivers.serial_link.SerialLink`:
    the lifecycle of :class:`LinkedInstrument`, and :meth:`_request`, the one garbled-reply
    policy of the serial drivers.

    The policy: a reply that is not a well-formed answer to the command (``decode`` raises
    :class:`ProtocolError`: line noise, a bad checksum, the wrong kind of reply) makes the
    link drain its input until quiet and the command is sent once more, if it is
    ``repeatable`` (a query, or a command whose repeat does nothing more: each driver
    documents which). A second garbled reply raises :class:`InstrumentReplyError` with
    ``code=None``. An instrument error in :attr:`resend_codes` (the instrument saying *our*
    command arrived garbled) is resent once too, then raised as it is.
    """

    resend_codes: ClassVar[frozenset[int]] = frozenset()

    def __init__(self, link: SerialLink, instrument_id: str) -> None:
        self._link = link
        self.instrument_id = instrument_id
        self.retries = 0
        """Commands sent a second time after a garbled exchange."""

    async def _request(
        self,
        wire: bytes,
        decode: Callable[[bytes], T],
        *,
        accept: Callable[[bytes], bool] | None = None,
        repeatable: bool = True,
    ) -> T:
        """Send ``wire``, return ``decode(reply line)``, applying the policy above.
        ``accept`` is passed to the link (noise lines before the reply are skipped)."""
        for attempt in (1, 2):
            last = attempt == 2 or not repeatable
            line = await self._link.request(wire, accept=accept)
            try:
                return decode(line)
            except ProtocolError as exc:
                self._link.mark_resync()  # the reply may be a late one: drain before next
                if last:
                    raise InstrumentReplyError(
                        f"garbled reply to {wire[:40].decode('ascii', 'replace')!r}: {exc}",
                        instrument=self.instrument_id,
                    ) from exc
            except InstrumentReplyError as exc:
                if last or exc.code not in self.resend_codes:
                    raise
            self.retries += 1
        raise AssertionError("unreachable")
