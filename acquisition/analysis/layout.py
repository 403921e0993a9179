"""What each well of a competition binding plate is, as the analysis needs it (pure; no I/O).

A :class:`PlateLayout` maps wells (96-well plate, ``A1`` .. ``H12``) to a role -- ``total``
(total binding), ``nsb`` (nonspecific binding), ``competitor`` or ``blank`` (buffer only, for
the background) -- and, for competitor wells, the competitor's name and its log10 molar
concentration. NSB wells may name their displacer and its concentration too (informational).
Wells not in the layout are ignored by the analysis.

Validation (errors name the well): well names must be A1-H12 (``a01`` is read as ``A1``);
each well appears at most once; a competitor well needs a competitor name and a concentration;
total and blank wells carry neither; concentrations must be positive (given as ``conc_m`` in
molar, or as ``log_conc`` = log10 molar, which must lie below 0, i.e. below 1 M, so that a
molar value passed as a log is caught); the layout needs at least one total and one NSB well.

:func:`competition_layout` generates the usual plate: column 1 total binding, column 2 NSB,
columns 3.. a log-spaced dilution of each competitor on its rows. Both plates the simulators
produce can be expressed (acquisition never imports simulators; these calls are checked by
tests/test_run_analysis.py):

* the simulated world's generated layout (``simulators/plate_map.py``, ``competition_layout()``
  with its defaults: progesterone on rows A-C, haloperidol on rows D-F, 1e-5 M in column 3
  down to 1e-11 M in column 12, NSB = haloperidol 1e-5 M, rows G-H of columns 3-12 blank)::

      competition_layout(competitors={"progesterone": "ABC", "haloperidol": "DEF"},
                         blank_rows="GH", nsb_competitor="haloperidol", nsb_m=1e-5)

* the counter simulator's demo plate (``simulators/plates.py``, ``demo_plate()``: the same
  concentrations but ascending, 1e-11 M in column 3 up to 1e-5 M in column 12; rows G-H of
  columns 3-12 are buffer blanks, G12 with a decaying chemiluminescence)::

      competition_layout(competitors={"progesterone-like": "ABC", "haloperidol-like": "DEF"},
                         descending=False, blank_rows="GH")
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from acquisition.errors import AnalysisError
from labware import FORMATS, normalize_well, well_order

__all__ = [
    "COLUMNS",
    "ROWS",
    "LayoutWell",
    "PlateLayout",
    "Role",
    "competition_layout",
    "normalize_well",
    "well_order",
]

Role = Literal["total", "nsb", "competitor", "blank"]
ROWS = FORMATS[96].rows
COLUMNS = FORMATS[96].columns


class LayoutWell(BaseModel):
    """One well: its role, and for a competitor well the competitor and log10 molar
    concentration. Input may give ``conc_m`` (molar, > 0) instead of ``log_conc``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    well: str
    role: Role
    competitor: str | None = None
    log_conc: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _molar(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or "conc_m" not in data:
            return data
        out = dict(data)
        conc = out.pop("conc_m")
        where = f"well {out.get('well', '?')}"
        if "log_conc" in out and out["log_conc"] is not None:
            raise ValueError(f"{where}: give conc_m or log_conc, not both")
        if conc is not None:
            try:
                c = float(conc)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: concentration {conc!r} is not a number") from None
            if not (c > 0 and math.isfinite(c)):
                raise ValueError(f"{where}: concentration must be positive (molar), got {c:g}")
            out["log_conc"] = math.log10(c)
        return out

    @field_validator("well")
    @classmethod
    def _well_name(cls, value: str) -> str:
        canonical = normalize_well(value)
        if canonical is None:
            raise ValueError(f"well {value!r}: not a well of a 96-well plate (A1-H12)")
        return canonical

    @model_validator(mode="after")
    def _check(self) -> LayoutWell:
        where = f"well {self.well}"
        if self.competitor is not None and not self.competitor.strip():
            raise ValueError(f"{where}: competitor name is empty")
        if self.log_conc is not None and not (math.isfinite(self.log_conc) and
                                              -20.0 < self.log_conc < 0.0):
            raise ValueError(
                f"{where}: log_conc {self.log_conc!r} is not a log10 molar concentration of a "
                "positive concentration below 1 M (1 nM is -9)"
            )
        if self.role == "competitor":
            if self.competitor is None:
                raise ValueError(f"{where}: a competitor well needs the competitor's name")
            if self.log_conc is None:
                raise ValueError(f"{where}: a competitor well needs its concentration "
                                 "(log_conc, log10 molar, or conc_m)")
        elif self.role in ("total", "blank"):
            if self.competitor is not None or self.log_conc is not None:
                raise ValueError(f"{where}: a {self.role} well carries no competitor")
        elif self.log_conc is not None and self.competitor is None:  # nsb
            raise ValueError(f"{where}: an NSB concentration needs the displacer's name")
        return self


class PlateLayout(BaseModel):
    """The wells of a plate the analysis should read; see the module docstring."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    wells: tuple[LayoutWell, ...]

    _index: dict[str, LayoutWell] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> PlateLayout:
        index: dict[str, LayoutWell] = {}
        for w in self.wells:
            if w.well in index:
                raise ValueError(f"well {w.well}: listed more than once (each well at most once)")
            index[w.well] = w
        missing = [label for role, label in (("total", "total-binding"), ("nsb", "NSB"))
                   if not any(w.role == role for w in self.wells)]
        if missing:
            raise ValueError(f"the layout has no {' and no '.join(missing)} wells; the assay "
                             "window needs both")
        return self

    def model_post_init(self, context: Any, /) -> None:
        self._index = {w.well: w for w in self.wells}

    @classmethod
    def from_mapping(cls, wells: Mapping[str, Mapping[str, Any]]) -> PlateLayout:
        """From ``{"A1": {"role": "total"}, "A3": {"role": "competitor", "competitor": "x",
        "conc_m": 1e-9}, ...}``; :class:`AnalysisError` naming the well if it is invalid."""
        entries = [{"well": name, **dict(spec)} for name, spec in wells.items()]
        return _validated(cls, {"wells": entries})

    def get(self, well: str) -> LayoutWell | None:
        """The entry of ``well`` (any spelling normalize_well accepts), or None."""
        name = normalize_well(well)
        return None if name is None else self._index.get(name)

    def wells_of(self, role: Role, competitor: str | None = None) -> tuple[str, ...]:
        """Wells of ``role`` (and of ``competitor`` if given), in plate order."""
        return tuple(sorted((w.well for w in self.wells if w.role == role and
                             (competitor is None or w.competitor == competitor)),
                            key=well_order))

    @property
    def competitors(self) -> tuple[str, ...]:
        """Names of the competitors on competitor wells, in order of first appearance."""
        seen: dict[str, None] = {}
        for w in sorted(self.wells, key=lambda e: well_order(e.well)):
            if w.role == "competitor" and w.competitor is not None:
                seen.setdefault(w.competitor, None)
        return tuple(seen)


def _validated(cls: type[PlateLayout], data: Mapping[str, Any]) -> PlateLayout:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        msg = str(first["msg"]).removeprefix("Value error, ")
        raise AnalysisError(f"plate layout: {msg}") from None


def _rows(spec: str, what: str) -> str:
    rows = "".join(ch for ch in spec.upper() if ch not in " ,")
    bad = sorted({r for r in rows if r not in ROWS})
    if bad:
        raise AnalysisError(f"{what}: rows must be letters {ROWS[0]}-{ROWS[-1]}, got {bad}")
    return rows


def competition_layout(
    *,
    competitors: Mapping[str, str],
    top_m: float = 1e-5,
    bottom_m: float = 1e-11,
    points: int = 10,
    first_column: int = 3,
    descending: bool = True,
    total_column: int = 1,
    nsb_column: int = 2,
    blank_rows: str = "",
    nsb_competitor: str | None = None,
    nsb_m: float | None = None,
) -> PlateLayout:
    """The usual competition plate.

    ``competitors`` maps each competitor to its rows (``{"progesterone": "ABC"}``: triplicates
    on rows A-C). Column ``total_column`` (all rows) is total binding, ``nsb_column`` (all rows)
    NSB (optionally ``nsb_competitor`` at ``nsb_m`` molar). Columns ``first_column`` ..
    ``first_column + points - 1`` carry a log-spaced dilution from ``top_m`` to ``bottom_m``
    (molar), the highest concentration first when ``descending``; ``blank_rows`` are buffer
    blanks in those columns. :class:`AnalysisError` for arguments that do not fit a 96-well
    plate.
    """
    if not competitors:
        raise AnalysisError("competitors: name at least one competitor and its rows")
    if not (0 < bottom_m < top_m) or not math.isfinite(top_m):
        raise AnalysisError(f"concentrations: need 0 < bottom_m < top_m, got bottom_m "
                            f"{bottom_m:g} and top_m {top_m:g}")
    if points < 2:
        raise AnalysisError(f"points: a dilution needs at least 2 points, got {points}")
    last_column = first_column + points - 1
    if first_column < 1 or last_column > COLUMNS:
        raise AnalysisError(f"columns: {points} points from column {first_column} do not fit in "
                            f"columns 1-{COLUMNS}")
    for name, col in (("total_column", total_column), ("nsb_column", nsb_column)):
        if not 1 <= col <= COLUMNS:
            raise AnalysisError(f"{name}: must be 1-{COLUMNS}, got {col}")
        if first_column <= col <= last_column:
            raise AnalysisError(f"{name}: column {col} is one of the dilution columns "
                                f"{first_column}-{last_column}")
    if total_column == nsb_column:
        raise AnalysisError(f"total_column and nsb_column: both are column {total_column}")
    if any(not name.strip() for name in competitors):
        raise AnalysisError("competitors: a competitor name is empty")
    used: dict[str, str] = {}
    plan: list[tuple[str, str]] = []
    for name, spec in [*competitors.items(), ("", blank_rows)]:
        what = f"competitors[{name!r}]" if name else "blank_rows"
        rows = _rows(spec, what)
        if name and not rows:
            raise AnalysisError(f"{what}: no rows given")
        for r in rows:
            if r in used:
                raise AnalysisError(f"{what}: row {r} is already used by {used[r]}")
            used[r] = what
            plan.append((name, r))

    log_top, log_bottom = math.log10(top_m), math.log10(bottom_m)
    step = (log_top - log_bottom) / (points - 1)
    logs = [log_top - i * step if descending else log_bottom + i * step for i in range(points)]
    entries: list[dict[str, Any]] = []
    for row in ROWS:
        entries.append({"well": f"{row}{total_column}", "role": "total"})
        nsb: dict[str, Any] = {"well": f"{row}{nsb_column}", "role": "nsb"}
        if nsb_competitor is not None:
            nsb["competitor"] = nsb_competitor
            nsb["conc_m"] = nsb_m
        elif nsb_m is not None:
            raise AnalysisError("nsb_m: give nsb_competitor too")
        entries.append(nsb)
    for name, row in plan:
        for i, lc in enumerate(logs):
            well = f"{row}{first_column + i}"
            if name:
                entries.append({"well": well, "role": "competitor", "competitor": name,
                                "log_conc": lc})
            else:
                entries.append({"well": well, "role": "blank"})
    return _validated(PlateLayout, {"wells": entries})
