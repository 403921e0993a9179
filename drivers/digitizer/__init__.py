"""Streaming patch-clamp digitizer: codec, link, driver (docs/protocols/digitizer.md)."""

from drivers.digitizer.driver import DigitizerDriver, DigitizerIdentity, Sweep, to_codes

__all__ = ["DigitizerDriver", "DigitizerIdentity", "Sweep", "to_codes"]
