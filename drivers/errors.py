"""The one exception tree of the product.

Every error we raise on purpose derives from :class:`AssayError`. Layers translate
foreign exceptions (``OSError``, ``pyvisa.VisaIOError``, pydantic's ``ValidationError``,
``aiomqtt.MqttError``) into this tree at their boundary with ``raise ... from exc``.
``retryable`` tells a caller whether trying the same thing again may succeed.

::

    AssayError
    ├── ProtocolError            bytes that do not follow a wire protocol (codec layer)
    │   └── FrameTooLongError    a frame exceeded the codec's buffer bound
    ├── InstrumentError          anything an instrument driver reports      [instrument]
    │   ├── LinkError            transport failed: refused, reset, closed   retryable
    │   │   └── InstrumentTimeoutError  no reply in time                    retryable
    │   ├── InstrumentReplyError the instrument answered with an error code or nonsense
    │   ├── DataLossError        samples of an acquisition were lost (a gap, an overrun)
    │   └── InstrumentFaultError the instrument is in a fault state (door open, jam, ...)
    │       └── PreconditionError  a step's needs are not in place     (acquisition)
    ├── ConfigError              a config file or override is invalid      (acquisition)
    │   └── ProtocolFileError    an assay protocol file is invalid     (acquisition.protocols)
    ├── CommandError             an MQTT command was malformed or refused  (acquisition)
    ├── JournalError             the local journal could not be written    (acquisition)
    ├── BrokerError              the MQTT broker refused or dropped us     (acquisition)
    ├── InstanceError            another daemon holds our journal or node  (acquisition)
    ├── AnalysisError            data that cannot be fitted or analysed    (acquisition)
    └── InterlockError           a run interlock tripped (pause or abort)  (acquisition)

The acquisition-layer classes live in :mod:`acquisition.errors`; they are listed here so
the whole tree is drawn in one place.
"""

from __future__ import annotations

__all__ = [
    "AssayError",
    "DataLossError",
    "FrameTooLongError",
    "InstrumentError",
    "InstrumentFaultError",
    "InstrumentReplyError",
    "InstrumentTimeoutError",
    "LinkError",
    "ProtocolError",
]


class AssayError(Exception):
    """Root of every error the product raises on purpose."""

    retryable: bool = False


class ProtocolError(AssayError):
    """Bytes that do not follow the wire protocol."""


class FrameTooLongError(ProtocolError):
    """A frame grew past the codec's bound; the buffer must be resynchronised."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"frame of {length} bytes exceeds the {limit}-byte limit")
        self.length = length
        self.limit = limit


class InstrumentError(AssayError):
    """An error reported by or about one instrument."""

    def __init__(self, message: str, *, instrument: str | None = None) -> None:
        super().__init__(message if instrument is None else f"{instrument}: {message}")
        self.instrument = instrument


class LinkError(InstrumentError):
    """The transport to the instrument failed (refused, reset, closed)."""

    retryable = True


class InstrumentTimeoutError(LinkError):
    """The instrument did not answer in time."""


class InstrumentReplyError(InstrumentError):
    """The instrument answered, but with an error code or a reply we cannot parse."""

    def __init__(
        self, message: str, *, instrument: str | None = None, code: int | None = None
    ) -> None:
        super().__init__(message, instrument=instrument)
        self.code = code


class InstrumentFaultError(InstrumentError):
    """The instrument is in a fault state that needs an operator (door open, jam, ...)."""

    def __init__(self, message: str, *, instrument: str | None = None, fault: str = "") -> None:
        super().__init__(message, instrument=instrument)
        self.fault = fault


class DataLossError(InstrumentError):
    """Samples of an acquisition never arrived intact: a missing frame, a checksum error or
    an overrun. ``lost`` names the sample ranges (per channel, ``[start, stop)``) that are
    gone; nothing was interpolated. What did arrive is not returned: the sweep is marked."""

    def __init__(
        self, message: str, *, instrument: str | None = None, acquisition: int = 0,
        lost: tuple[tuple[int, int], ...] = (), reasons: tuple[str, ...] = (),
    ) -> None:  # fmt: skip
        super().__init__(message, instrument=instrument)
        self.acquisition = acquisition
        self.lost = lost
        self.reasons = reasons
