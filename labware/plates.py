"""Microplate formats and well names.

A well is named by its row letter and column number, ``A1`` ... ``H12`` on a 96-well plate
(8 x 12), ``A1`` ... ``P24`` on a 384-well plate (16 x 24); plate order is row-major (A1,
A2, ... A12, B1, ...). A range is ``"A1"``, a list ``"A1,B3"`` or a rectangle ``"A1:C2"``
(A1 A2 B1 B2 C1 C2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

__all__ = [
    "FORMATS",
    "PlateFormat",
    "expand_wells",
    "normalize_well",
    "plate_format",
    "well_order",
    "wells",
]


@dataclass(frozen=True)
class PlateFormat:
    """A microplate's grid."""

    wells: int
    rows: str  # row letters, top to bottom
    columns: int

    @property
    def last_well(self) -> str:
        return f"{self.rows[-1]}{self.columns}"


FORMATS: dict[int, PlateFormat] = {
    96: PlateFormat(96, "ABCDEFGH", 12),
    384: PlateFormat(384, "ABCDEFGHIJKLMNOP", 24),
}


def plate_format(n_wells: int) -> PlateFormat:
    """ValueError for a format we do not know."""
    try:
        return FORMATS[n_wells]
    except KeyError:
        known = " or ".join(str(n) for n in FORMATS)
        raise ValueError(f"a plate of {known} wells (got {n_wells!r})") from None


@cache
def wells(n_wells: int = 96) -> tuple[str, ...]:
    """Every well of the format in plate order (A1, A2, ..., H12 for 96)."""
    fmt = plate_format(n_wells)
    return tuple(f"{row}{col}" for row in fmt.rows for col in range(1, fmt.columns + 1))


@cache
def _order(n_wells: int) -> dict[str, int]:
    return {w: i for i, w in enumerate(wells(n_wells))}


@cache
def _pattern(n_wells: int) -> re.Pattern[str]:
    fmt = plate_format(n_wells)
    return re.compile(rf"([{fmt.rows[0]}-{fmt.rows[-1]}])0?([1-9][0-9]?)",
                      re.IGNORECASE | re.ASCII)  # fmt: skip


def normalize_well(name: str, n_wells: int = 96) -> str | None:
    """``"a01"`` -> ``"A1"``; None if ``name`` is not a well of the format."""
    m = _pattern(n_wells).fullmatch(name.strip())
    if m is None or not 1 <= int(m[2]) <= plate_format(n_wells).columns:
        return None
    return f"{m[1].upper()}{int(m[2])}"


def well_order(well: str, n_wells: int = 96) -> int:
    """Position of a (normalised) well in plate order; unknown names sort last."""
    order = _order(n_wells)
    return order.get(well, len(order))


def expand_wells(spec: str, n_wells: int = 96) -> tuple[str, ...]:
    """``"A1"``, ``"A1,B3"`` or the rectangle ``"A1:C2"`` to well names, in the order
    written (a rectangle row by row). ValueError naming the part that is not a well."""
    fmt = plate_format(n_wells)
    out: list[str] = []
    for part in spec.replace(" ", "").split(","):
        ends = part.split(":")
        named = [_strict(e, n_wells) for e in ends]
        if len(ends) > 2 or None in named:
            raise ValueError(f"not a well or well range: {part!r} (A1-{fmt.last_well}, A1:H1)")
        (r0, c0), (r1, c1) = ((n[0], int(n[1:])) for n in (named[0], named[-1]) if n)
        i0, i1 = sorted((fmt.rows.index(r0), fmt.rows.index(r1)))
        out += [f"{r}{c}" for r in fmt.rows[i0 : i1 + 1]
                for c in range(min(c0, c1), max(c0, c1) + 1)]  # fmt: skip
    return tuple(out)


def _strict(name: str, n_wells: int) -> str | None:
    """A well written exactly (upper-case row, no leading zero), as plate maps write them."""
    well = normalize_well(name, n_wells)
    return well if well == name else None
