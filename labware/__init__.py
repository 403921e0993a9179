"""Labware, once for the whole product: plate formats (96 and 384 wells), well names and
their order, and the well-range grammar plate maps use ("A1", "A1,B3", "A1:H1"). Pure code
with no dependency on our other packages, so drivers, simulators, the analysis and the
daemon all share it (docs/decisions/0005-labware-once.md)."""

from labware.plates import (
    FORMATS,
    PlateFormat,
    expand_wells,
    normalize_well,
    plate_format,
    well_order,
    wells,
)

__all__ = [
    "FORMATS",
    "PlateFormat",
    "expand_wells",
    "normalize_well",
    "plate_format",
    "well_order",
    "wells",
]
