"""What is in each well of a 96-well binding plate: parsed from a TOML/JSON plate map, or
generated for the usual competition layout.

A plate map (TOML shown; the JSON/dict form has the same shape)::

    [defaults]                    # applied to every well listed under [wells]
    membrane_ug = 100.0           # membrane protein per well
    radioligand = "[3H](+)-pentazocine"
    radioligand_nm = 5.0          # final concentration in the well
    specific_activity_ci_per_mmol = 26.6
    volume_ul = 250.0

    [wells."A1:H1"]               # one well "A1", a list "A1,B1" or a rectangle "A1:H1"
    role = "total"
    [wells."A2:H2"]
    role = "nsb"
    competitor = "haloperidol"
    competitor_m = 1e-5           # molar
    [wells.A3]
    role = "competitor"
    competitor = "progesterone"
    competitor_m = 1e-9
    [wells."G3:H12"]
    role = "blank"
    membrane_ug = 0.0
    radioligand_nm = 0.0

Wells not listed are empty. Each well may be listed once. Roles are labels for the people
and the analysis; the physics only reads the contents (a ``total`` well may not carry a
competitor; ``nsb`` and ``competitor`` wells must).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from labware import FORMATS, expand_wells
from labware import wells as plate_wells

__all__ = [
    "CompetitionLayout",
    "PlateMap",
    "Role",
    "WellContents",
    "competition_layout",
    "expand_wells",
    "parse_plate_map",
    "plate_map_from_toml",
]

Role = Literal["total", "nsb", "competitor", "blank"]
ROWS = FORMATS[96].rows
DEFAULT_RADIOLIGAND = "[3H](+)-pentazocine"


@dataclass(frozen=True)
class WellContents:
    """One well as pipetted. Concentrations are final, in the assay volume."""

    role: Role
    membrane_ug: float = 100.0
    radioligand: str = DEFAULT_RADIOLIGAND
    radioligand_nm: float = 5.0
    specific_activity_ci_per_mmol: float = 26.6
    volume_ul: float = 250.0
    competitor: str | None = None
    competitor_m: float = 0.0

    @property
    def competitor_nm(self) -> float:
        return self.competitor_m * 1e9


@dataclass(frozen=True)
class PlateMap:
    wells: Mapping[str, WellContents]

    def role_wells(self, role: Role) -> tuple[str, ...]:
        """The wells of ``role`` in plate order (A1, A2, ... H12)."""
        return tuple(w for w in plate_wells(96) if w in self.wells and self.wells[w].role == role)


# ----------------------------------------------------------------------------- parsing


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Defaults(_Model):
    membrane_ug: float = Field(100.0, ge=0, le=5000)
    radioligand: str = Field(DEFAULT_RADIOLIGAND, min_length=1, max_length=64)
    radioligand_nm: float = Field(5.0, ge=0, le=1e5)
    specific_activity_ci_per_mmol: float = Field(26.6, gt=0, le=1e5)
    volume_ul: float = Field(250.0, gt=0, le=2000)


class _Well(_Model):
    role: Role
    membrane_ug: float | None = Field(None, ge=0, le=5000)
    radioligand: str | None = Field(None, min_length=1, max_length=64)
    radioligand_nm: float | None = Field(None, ge=0, le=1e5)
    specific_activity_ci_per_mmol: float | None = Field(None, gt=0, le=1e5)
    volume_ul: float | None = Field(None, gt=0, le=2000)
    competitor: str | None = Field(None, min_length=1, max_length=64)
    competitor_m: float = Field(0.0, ge=0, le=1.0)


class _PlateMapModel(_Model):
    defaults: _Defaults = _Defaults()
    wells: dict[str, _Well]


def parse_plate_map(data: Mapping[str, Any]) -> PlateMap:
    """A plate map from its dict form (as read from TOML or JSON); ``ValueError`` naming the
    offending field if it is malformed."""
    try:
        model = _PlateMapModel.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "plate map"
        raise ValueError(f"{where}: {first['msg']}") from None
    d = model.defaults
    wells: dict[str, WellContents] = {}
    for spec, w in model.wells.items():
        try:
            names = expand_wells(spec)
        except ValueError as exc:
            raise ValueError(f"wells.{spec}: {exc}") from None
        contents = WellContents(
            role=w.role,
            membrane_ug=d.membrane_ug if w.membrane_ug is None else w.membrane_ug,
            radioligand=w.radioligand or d.radioligand,
            radioligand_nm=d.radioligand_nm if w.radioligand_nm is None else w.radioligand_nm,
            specific_activity_ci_per_mmol=(
                w.specific_activity_ci_per_mmol or d.specific_activity_ci_per_mmol
            ),
            volume_ul=w.volume_ul or d.volume_ul,
            competitor=w.competitor,
            competitor_m=w.competitor_m if w.competitor else 0.0,
        )
        _check_role(spec, contents)
        for name in names:
            if name in wells:
                raise ValueError(f"wells.{spec}: well {name} is listed twice")
            wells[name] = contents
    if not wells:
        raise ValueError("wells: a plate map needs at least one well")
    return PlateMap(MappingProxyType(wells))


def plate_map_from_toml(text: str) -> PlateMap:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"plate map: not TOML ({exc})") from None
    return parse_plate_map(data)


def _check_role(spec: str, w: WellContents) -> None:
    if w.role == "total" and w.competitor is not None:
        raise ValueError(f"wells.{spec}: a total-binding well has no competitor")
    if w.role in ("nsb", "competitor") and (w.competitor is None or w.competitor_m <= 0):
        raise ValueError(f"wells.{spec}: a {w.role} well needs competitor and competitor_m > 0")


# ----------------------------------------------------------------------------- generator


class CompetitionLayout(_Model):
    """The usual competition plate (the arguments of the control channel's
    ``{"op": "add_plate", "layout": "competition", ...}``).

    Column 1 total binding, column 2 NSB (``nsb_competitor`` at ``nsb_m``), columns 3.. a
    log-spaced dilution of each competitor from ``top_m`` down to ``bottom_m`` (``points``
    columns, highest concentration in column 3), each competitor on ``replicates`` rows
    starting at row A; the rows left over in columns 3-12 are buffer blanks (no membranes,
    no radioligand).
    """

    competitors: tuple[str, ...] = ("progesterone", "haloperidol")
    replicates: int = Field(3, ge=1, le=8)
    top_m: float = Field(1e-5, gt=0, le=1.0)
    bottom_m: float = Field(1e-11, gt=0, le=1.0)
    points: int = Field(10, ge=2, le=10)
    membrane_ug: float = Field(100.0, ge=0, le=5000)
    radioligand: str = Field(DEFAULT_RADIOLIGAND, min_length=1, max_length=64)
    radioligand_nm: float = Field(5.0, ge=0, le=1e5)
    specific_activity_ci_per_mmol: float = Field(26.6, gt=0, le=1e5)
    volume_ul: float = Field(250.0, gt=0, le=2000)
    nsb_competitor: str = "haloperidol"
    nsb_m: float = Field(1e-5, gt=0, le=1.0)

    def build(self) -> PlateMap:
        if len(self.competitors) * self.replicates > len(ROWS):
            raise ValueError(
                f"competitors: {len(self.competitors)} x {self.replicates} replicates do not"
                f" fit in {len(ROWS)} rows"
            )
        if self.bottom_m >= self.top_m:
            raise ValueError("bottom_m: must be below top_m")
        base = WellContents(
            role="total", membrane_ug=self.membrane_ug, radioligand=self.radioligand,
            radioligand_nm=self.radioligand_nm,
            specific_activity_ci_per_mmol=self.specific_activity_ci_per_mmol,
            volume_ul=self.volume_ul,
        )
        wells: dict[str, WellContents] = {}
        for row in ROWS:
            wells[f"{row}1"] = base
            wells[f"{row}2"] = replace(base, role="nsb", competitor=self.nsb_competitor,
                                           competitor_m=self.nsb_m)
        log_top, log_bottom = math.log10(self.top_m), math.log10(self.bottom_m)
        step = (log_top - log_bottom) / (self.points - 1)
        blank = WellContents(role="blank", membrane_ug=0.0, radioligand=self.radioligand,
                             radioligand_nm=0.0, volume_ul=self.volume_ul)
        used = 0
        for name in self.competitors:
            for row in ROWS[used : used + self.replicates]:
                for i in range(self.points):
                    wells[f"{row}{i + 3}"] = replace(
                        base, role="competitor", competitor=name,
                        competitor_m=10 ** (log_top - i * step),
                    )
            used += self.replicates
        for row in ROWS[used:]:
            for col in range(3, 3 + self.points):
                wells[f"{row}{col}"] = blank
        return PlateMap(MappingProxyType(wells))


def competition_layout(**kwargs: Any) -> PlateMap:
    """:class:`CompetitionLayout` ``(**kwargs).build()``; ``ValueError`` on bad arguments."""
    try:
        layout = CompetitionLayout.model_validate(kwargs)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "layout"
        raise ValueError(f"{where}: {first['msg']}") from None
    return layout.build()

