"""Acquisition-layer errors; the whole tree is drawn in :mod:`drivers.errors`."""

from __future__ import annotations

from drivers.errors import AssayError, InstrumentFaultError

__all__ = [
    "AnalysisError",
    "BrokerError",
    "CommandError",
    "ConfigError",
    "InstanceError",
    "InterlockError",
    "JournalError",
    "PreconditionError",
]


class ConfigError(AssayError):
    """A configuration file or environment override is invalid.

    ``str(err)`` is the one line the user sees: ``<file>: <field>: <what was expected>``.
    """

    def __init__(self, source: str, field: str, expected: str) -> None:
        super().__init__(f"{source}: {field}: {expected}")
        self.source = source
        self.field = field
        self.expected = expected


class CommandError(AssayError):
    """An MQTT command was malformed or refused. ``code`` is what the reply names."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class JournalError(AssayError):
    """The local journal could not be read or written."""


class BrokerError(AssayError):
    """The MQTT broker refused the connection or dropped it."""

    retryable = True


class InstanceError(AssayError):
    """Another instance of this daemon holds what this one needs: the journal (its lock),
    the node id (its retained status says online), or the node's MQTT session (taken
    over). Not retryable: two daemons would fight; ``assayd`` prints ``str(err)``, the one
    line naming the other instance, and exits with code 2."""


class AnalysisError(AssayError):
    """The data or the request cannot be analysed: bad input, degenerate data, no convergence.

    ``str(err)`` names the input and what is wrong with it, e.g.
    ``y: 3 values are NaN or infinite (rows 4, 7, 9)``.
    """


class InterlockError(AssayError):
    """A run's interlock tripped (e.g. incubation temperature out of tolerance past the
    grace period); ``action`` is what the protocol says to do: ``pause`` or ``abort``."""

    def __init__(self, message: str, action: str) -> None:
        super().__init__(message)
        self.action = action


class PreconditionError(InstrumentFaultError):
    """A step cannot start: what it needs is not in place (no plate in the harvester, a mat
    left from another plate, the waste trap too full for the harvest). The message says
    what to do; the run waits for the operator (retry once done, skip, abort).

    ``action`` names what the virtual operator can do about it on a simulated bench
    (``plate_to_harvester``, ``empty_waste``, ...); None when it takes a person."""

    def __init__(self, message: str, *, instrument: str, action: str | None = None) -> None:
        super().__init__(message, instrument=instrument, fault="precondition")
        self.action = action
