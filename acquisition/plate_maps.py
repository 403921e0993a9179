"""Plate maps as files (config/plates/*.toml) and the generator for the usual layouts.

The file format is the simulated bench's plate-map format (``simulators/plate_map.py``), so
one file describes the plate to both the analysis and the simulated world::

    # comments are free
    [defaults]                    # optional; read by the simulated bench only
    membrane_ug = 100.0

    [wells."A1:H1"]               # a well "A1", a list "A1,B1" or a rectangle "A1:H1"
    role = "total"                # total | nsb | competitor | blank
    [wells."A2:H2"]
    role = "nsb"
    competitor = "haloperidol"    # the NSB displacer (optional for nsb wells)
    competitor_m = 1e-05          # molar, > 0 and < 1
    [wells."A3:C3"]
    role = "competitor"
    competitor = "progesterone"   # required for competitor wells, with competitor_m
    competitor_m = 1e-05
    [wells."G3:H12"]
    role = "blank"                # buffer blank: carries no competitor
    membrane_ug = 0.0
    radioligand_nm = 0.0

Top-level keys are ``defaults`` and ``wells``; a well table takes ``role``, ``competitor``,
``competitor_m`` and the bench's physical keys (``membrane_ug``, ``radioligand``,
``radioligand_nm``, ``specific_activity_ci_per_mmol``, ``volume_ul``), which are checked
(non-negative numbers, a name) but are not part of the :class:`PlateLayout`. Well names are
A1-H12 exactly as the bench writes them. Wells not listed are empty and ignored.

:func:`load_plate_map` returns a validated
:class:`~acquisition.analysis.layout.PlateLayout`: every well defined once (across ranges
too), at least one total and one NSB well, concentrations positive, well names valid, no
unknown key. Errors are :class:`PlateMapError` whose ``str`` is one line,
``<file>: <location>: <what was expected>``, e.g.
``config/plates/x.toml: wells.A3: defined once (also in "A1:C3")``.

:func:`plate_map_toml` writes a layout in this format (vertical runs of identical wells are
merged into rectangles), and ``load_plate_map`` of that text gives back the same layout (the
concentrations to 12 significant digits). :func:`plate_map_competition_command` generates
the usual competition plate with
:func:`~acquisition.analysis.layout.competition_layout`: column 1 total binding (rows from A),
column 2 NSB (the displacer, haloperidol 10 uM by default), columns 3.. the dilution series
(the top concentration in column 3, each next column ``dilution`` times lower), each
competitor (``competitor`` may list several, comma-separated) on ``replicates`` rows from row
A in turn; the rows left over in the dilution columns are buffer blanks.
"""

from __future__ import annotations

import math
import re
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from acquisition.analysis.layout import (
    COLUMNS,
    ROWS,
    LayoutWell,
    PlateLayout,
    competition_layout,
    well_order,
)
from acquisition.errors import AnalysisError, ConfigError
from labware import expand_wells

__all__ = [
    "PlateMapError",
    "competition_plate_map",
    "layout_from_data",
    "load_plate_map",
    "parse_plate_map",
    "plate_map_competition_command",
    "plate_map_toml",
]

_ROLES = ("total", "nsb", "competitor", "blank")
_TOP_KEYS = ("defaults", "wells")
# The simulated bench's physical keys: checked here, read by the simulator only.
_POSITIVE = ("specific_activity_ci_per_mmol", "volume_ul")
_NON_NEGATIVE = ("membrane_ug", "radioligand_nm")
_PHYSICAL = (*_NON_NEGATIVE, *_POSITIVE, "radioligand")
_WELL_KEYS = ("role", "competitor", "competitor_m", *_PHYSICAL)
_DIGITS = 12  # significant digits of the concentrations written


class PlateMapError(ConfigError):
    """A plate map file is invalid; ``str(err)`` is ``<file>: <location>: <expected>``."""


# ----------------------------------------------------------------------------- loading


def load_plate_map(path: Path) -> PlateLayout:
    """Read and validate a plate map file; :class:`PlateMapError` (one line) if invalid."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlateMapError(source, "(file)", "an existing TOML file (not found)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PlateMapError(source, "(file)", f"a readable UTF-8 text file ({exc})") from None
    return parse_plate_map(text, source=source)


def parse_plate_map(text: str, *, source: str = "plate map") -> PlateLayout:
    """:func:`load_plate_map` of ``text``; ``source`` names it in the errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(source, text, exc) from None
    return _layout(source, data)


def layout_from_data(data: Mapping[str, Any], *, source: str = "plate map") -> PlateLayout:
    """:func:`parse_plate_map` of already-parsed TOML data (a run's start document)."""
    return _layout(source, data)


def _syntax_error(source: str, text: str, exc: tomllib.TOMLDecodeError) -> PlateMapError:
    msg = str(exc)
    line = re.search(r"at line (\d+)", msg)
    where = f"line {line[1]}" if line else "(syntax)"
    if "twice" in msg or "overwrite" in msg:
        # A key (a well) given twice: name it, tomllib only gives the line.
        key = re.search(r"Cannot declare \((.*)\) twice", msg)
        name = None
        if key:
            name = ".".join(part.strip().strip("'\"") for part in key[1].split(","))
        elif line:
            lines = text.splitlines()
            n = int(line[1])
            if 0 < n <= len(lines):
                m = re.match(r"\s*([^=\s]+)\s*=", lines[n - 1])
                name = m[1] if m else None
        if name:
            return PlateMapError(source, f"{where}: {name}",
                                 f"each well and key defined once (TOML: {msg})")
    return PlateMapError(source, where, f"valid TOML ({msg})")


def _layout(source: str, data: Mapping[str, Any]) -> PlateLayout:
    def fail(where: str, expected: str) -> PlateMapError:
        return PlateMapError(source, where, expected)

    for key in data:
        if key not in _TOP_KEYS:
            raise fail(key, f"no such key (expected {', '.join(_TOP_KEYS)})")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, Mapping):
        raise fail("defaults", "a table of the bench's physical defaults")
    for key, value in defaults.items():
        if key not in _PHYSICAL:
            raise fail(f"defaults.{key}", f"no such key (expected one of {', '.join(_PHYSICAL)})")
        _check_physical(fail, f"defaults.{key}", key, value)
    wells = data.get("wells")
    if wells is None:
        raise fail("wells", 'a [wells."A1:H1"] table per well or range of wells (none given)')
    if not isinstance(wells, Mapping):
        raise fail("wells", 'a table of wells ([wells."A1:H1"], [wells.A3], ...)')

    entries: list[LayoutWell] = []
    defined_in: dict[str, str] = {}
    for spec, spec_table in wells.items():
        where = f"wells.{spec}"
        names = _expand(spec)
        if names is None:
            raise fail(where, "a well A1-H12, a list A1,B1 or a rectangle A1:H1 "
                              f"(got {spec!r})")
        if not isinstance(spec_table, Mapping):
            raise fail(where, "a table with role = total | nsb | competitor | blank")
        entry = _entry(fail, where, spec_table)
        for name in names:
            if name in defined_in:
                other = defined_in[name]
                also = "" if other == spec else f" (also in {other!r})"
                raise fail(f"wells.{name}", f"defined once{also}")
            defined_in[name] = spec
            try:
                entries.append(LayoutWell.model_validate({"well": name, **entry}))
            except ValidationError as exc:
                msg = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
                raise fail(where, re.sub(r"^well \w+: ", "", msg)) from None
    missing = [label for role, label in (("total", "total-binding"), ("nsb", "NSB"))
               if not any(w.role == role for w in entries)]
    if missing:
        raise fail("wells", "at least one total-binding and one NSB well (no "
                            f"{' and no '.join(missing)} well)")
    entries.sort(key=lambda w: well_order(w.well))
    try:
        return PlateLayout(wells=tuple(entries))
    except ValidationError as exc:  # pragma: no cover - checked above
        raise fail("wells", str(exc.errors()[0]["msg"]).removeprefix("Value error, ")) from None


def _expand(spec: str) -> tuple[str, ...] | None:
    """``"A1"``, ``"A1,B3"`` or the rectangle ``"A1:C2"`` to well names; None if malformed."""
    try:
        return expand_wells(spec)
    except ValueError:
        return None


def _entry(fail: Any, where: str, table: Mapping[str, Any]) -> dict[str, Any]:
    for key in table:
        if key not in _WELL_KEYS:
            raise fail(f"{where}.{key}", f"no such key (expected one of {', '.join(_WELL_KEYS)})")
    role = table.get("role")
    if role not in _ROLES:
        got = "none given" if role is None else f"got {role!r}"
        raise fail(f"{where}.role", f"one of {', '.join(_ROLES)} ({got})")
    for key in _PHYSICAL:
        if key in table:
            _check_physical(fail, f"{where}.{key}", key, table[key])
    competitor = table.get("competitor")
    if competitor is not None and (not isinstance(competitor, str) or not competitor.strip()):
        raise fail(f"{where}.competitor", f"the competitor's name (got {competitor!r})")
    conc = table.get("competitor_m")
    if conc is not None:
        if isinstance(conc, bool) or not isinstance(conc, int | float):
            raise fail(f"{where}.competitor_m", f"a number, molar (got {conc!r})")
        if not (math.isfinite(conc) and 0 < conc < 1):
            raise fail(f"{where}.competitor_m", "a positive molar concentration below 1 M "
                                                f"(1 nM is 1e-9; got {conc!r})")
    if role in ("total", "blank") and (competitor is not None or conc is not None):
        raise fail(where, f"a {role} well without competitor or competitor_m")
    if role == "competitor" and (competitor is None or conc is None):
        raise fail(where, "a competitor well with competitor (name) and competitor_m (molar)")
    if role == "nsb" and conc is not None and competitor is None:
        raise fail(where, "the NSB displacer's name (competitor) with its competitor_m")
    return {"role": role, "competitor": competitor, "conc_m": conc}


def _check_physical(fail: Any, where: str, key: str, value: Any) -> None:
    if key == "radioligand":
        if not isinstance(value, str) or not value.strip():
            raise fail(where, f"the radioligand's name (got {value!r})")
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise fail(where, f"a number (got {value!r})")
    if key in _POSITIVE and value <= 0:
        raise fail(where, f"a positive number (got {value!r})")
    if value < 0:
        raise fail(where, f"a number >= 0 (got {value!r})")


# ----------------------------------------------------------------------------- writing


def _toml_str(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _molar(log_conc: float) -> str:
    text = f"{10 ** log_conc:.{_DIGITS}g}"
    return text if any(c in text for c in ".e") else text + ".0"


def plate_map_toml(layout: PlateLayout, *, header: str = "") -> str:
    """``layout`` as a plate map file (see the module docstring); ``header`` lines become
    comments at the top. Identical wells in vertical runs, and runs of the same rows in
    consecutive columns, are written as one rectangle."""
    def key(w: LayoutWell) -> tuple[str, str | None, str | None]:
        conc = None if w.log_conc is None else _molar(w.log_conc)
        return (w.role, w.competitor, conc)

    index = {w.well: w for w in layout.wells}
    # Vertical runs per column: (column, first row, last row, contents).
    runs: list[tuple[int, int, int, tuple[str, str | None, str | None]]] = []
    for col in range(1, COLUMNS + 1):
        r = 0
        while r < len(ROWS):
            w = index.get(f"{ROWS[r]}{col}")
            if w is None:
                r += 1
                continue
            end = r
            while end + 1 < len(ROWS) and (nxt := index.get(f"{ROWS[end + 1]}{col}")) is not None \
                    and key(nxt) == key(w):
                end += 1
            runs.append((col, r, end, key(w)))
            r = end + 1
    # Merge runs over consecutive columns: [first col, last col, first row, last row, contents].
    blocks: list[list[Any]] = []
    for col, r0, r1, contents in runs:
        for b in blocks:
            if b[1] == col - 1 and b[2] == r0 and b[3] == r1 and b[4] == contents:
                b[1] = col
                break
        else:
            blocks.append([col, col, r0, r1, contents])
    blocks.sort(key=lambda b: (b[0], b[2]))

    lines = [f"# {h}".rstrip() for h in header.splitlines()]
    if lines:
        lines.append("")
    for c0, c1, r0, r1, (role, competitor, conc) in blocks:
        first, last = f"{ROWS[r0]}{c0}", f"{ROWS[r1]}{c1}"
        spec = first if first == last else f"{first}:{last}"
        lines.append(f"[wells.{_toml_str(spec) if ':' in spec else spec}]")
        lines.append(f"role = {_toml_str(role)}")
        if competitor is not None:
            lines.append(f"competitor = {_toml_str(competitor)}")
        if conc is not None:
            lines.append(f"competitor_m = {conc}")
        if role == "blank":  # a buffer blank for the simulated bench: no membranes, no ligand
            lines += ["membrane_ug = 0.0", "radioligand_nm = 0.0"]
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- generator


def competition_plate_map(
    *,
    top_m: float,
    dilution: float,
    points: int,
    replicates: int,
    competitor: str,
    total_wells: int = len(ROWS),
    nsb_wells: int = len(ROWS),
    nsb_competitor: str | None = "haloperidol",
    nsb_m: float = 1e-5,
) -> PlateLayout:
    """The usual competition plate (see the module docstring); :class:`AnalysisError` whose
    message is ``<argument>: <what was expected>`` for a request the plate cannot hold."""
    if not (math.isfinite(top_m) and 0 < top_m < 1):
        raise AnalysisError(f"top_m: a molar concentration above 0 and below 1 M, got {top_m:g}")
    if not (math.isfinite(dilution) and dilution > 1):
        raise AnalysisError(f"dilution: a factor above 1 (3.16 for half-log, 10 for log), "
                            f"got {dilution:g}")
    first_column = 3
    max_points = COLUMNS - first_column + 1
    if not 2 <= points <= max_points:
        raise AnalysisError(f"points: 2-{max_points} (columns {first_column}-{COLUMNS} hold the "
                            f"dilution), got {points}")
    log_bottom = math.log10(top_m) - (points - 1) * math.log10(dilution)
    if log_bottom <= -20:
        raise AnalysisError(f"dilution: {points} points of {dilution:g}-fold from {top_m:g} M go "
                            f"down to 1e{log_bottom:.0f} M (lowest allowed 1e-20 M)")
    names = [n.strip() for n in competitor.split(",")]
    if not competitor.strip() or any(not n for n in names):
        raise AnalysisError(f"competitor: one name or a comma-separated list, got {competitor!r}")
    if len(set(names)) != len(names):
        raise AnalysisError(f"competitor: each competitor once, got {competitor!r}")
    if replicates < 1:
        raise AnalysisError(f"replicates: at least 1, got {replicates}")
    rows_needed = len(names) * replicates
    if rows_needed > len(ROWS):
        raise AnalysisError(f"replicates: {len(names)} competitor(s) x {replicates} replicates "
                            f"need {rows_needed} rows; the plate has {len(ROWS)}")
    for label, n in (("total_wells", total_wells), ("nsb_wells", nsb_wells)):
        if not 1 <= n <= len(ROWS):
            column = 1 if label == "total_wells" else 2
            raise AnalysisError(f"{label}: 1-{len(ROWS)} (column {column} from row A), got {n}")
    if nsb_competitor is not None and not (math.isfinite(nsb_m) and 0 < nsb_m < 1):
        raise AnalysisError(f"nsb_m: a molar concentration above 0 and below 1 M, got {nsb_m:g}")

    rows = iter(ROWS)
    competitors = {n: "".join(next(rows) for _ in range(replicates)) for n in names}
    full = competition_layout(
        competitors=competitors,
        top_m=top_m,
        bottom_m=10 ** log_bottom,
        points=points,
        first_column=first_column,
        blank_rows="".join(rows),
        nsb_competitor=nsb_competitor,
        nsb_m=nsb_m if nsb_competitor is not None else None,
    )
    keep_total, keep_nsb = set(ROWS[:total_wells]), set(ROWS[:nsb_wells])
    wells = tuple(w for w in full.wells
                  if (w.role != "total" or w.well[0] in keep_total)
                  and (w.role != "nsb" or w.well[0] in keep_nsb))
    return PlateLayout(wells=tuple(sorted(wells, key=lambda w: well_order(w.well))))


def plate_map_competition_command(
    *,
    top_m: float,
    dilution: float,
    points: int,
    replicates: int,
    competitor: str,
    total_wells: int,
    nsb_wells: int,
    output: Path | None,
    nsb_competitor: str | None = "haloperidol",
    nsb_m: float = 1e-5,
) -> int:
    """``assay plate-map competition``: write the plate map to ``output`` (or print it).

    0 on success; a one-line error on stderr and 2 for a request the plate cannot hold or an
    output that cannot be written."""
    try:
        layout = competition_plate_map(
            top_m=top_m, dilution=dilution, points=points, replicates=replicates,
            competitor=competitor, total_wells=total_wells, nsb_wells=nsb_wells,
            nsb_competitor=nsb_competitor, nsb_m=nsb_m,
        )
    except AnalysisError as exc:
        print(f"assay plate-map competition: {exc}", file=sys.stderr)
        return 2
    bottom = top_m / dilution ** (points - 1)
    nsb = (f"{nsb_competitor} {nsb_m:g} M" if nsb_competitor is not None
           else "no displacer named")
    header = "\n".join([
        "Competition binding plate map, written by `assay plate-map competition`",
        f"(top_m={top_m!r}, dilution={dilution!r}, points={points}, replicates={replicates},",
        f" competitor={competitor!r}, total_wells={total_wells}, nsb_wells={nsb_wells},",
        f" nsb_competitor={nsb_competitor!r}, nsb_m={nsb_m!r}).",
        f"Column 1 rows A-{ROWS[total_wells - 1]}: total binding. Column 2 rows "
        f"A-{ROWS[nsb_wells - 1]}: NSB ({nsb}).",
        f"Columns 3-{2 + points}: {top_m:g} M down to {bottom:.3g} M, {dilution:g}-fold "
        f"steps; each competitor on {replicates} row(s) from row A,",
        "the rows left over are buffer blanks. Format: acquisition/plate_maps.py.",
    ])
    text = plate_map_toml(layout, header=header)
    if output is None:
        sys.stdout.write(text)
        return 0
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"assay plate-map competition: {output}: a writable file ({exc.strerror})",
              file=sys.stderr)
        return 2
    print(f"{output}: {len(layout.wells)} wells ({', '.join(layout.competitors)})")
    return 0
