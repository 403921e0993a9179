"""MultiClamp 700B-style patch-clamp amplifier: codec, driver (docs/protocols/amplifier.md)."""

from drivers.amplifier.driver import (
    AmplifierDriver,
    AmplifierError,
    AmplifierIdentity,
    Meter,
    Mode,
    Telegraph,
)  # fmt: skip

__all__ = ["AmplifierDriver", "AmplifierError", "AmplifierIdentity", "Meter", "Mode", "Telegraph"]
