"""count-plate: the shipped protocol that counts the plate in the counter now.

``run.start`` without a protocol name (or with ``protocol = "count-plate"``) carries
:class:`~acquisition.commands.RunStartArgs`; :func:`count_plate_protocol` turns them into an
ordinary protocol definition, one ``count`` step and, when the arguments ask for analysis,
an ``analyze`` step with the plate map the analysis layout describes. The engine runs it
like any protocol file, so a count-plate run pauses, resumes, survives a daemon crash and
records its definition in its start document (a resume runs exactly the same protocol).

The arguments are checked here in the command's own terms (``args.analysis.competitor``
...), before anything is leased or counted.
"""

from __future__ import annotations

import math
import tomllib
from typing import Any

from acquisition.analysis.layout import competition_layout
from acquisition.analysis.models import MODELS
from acquisition.commands import RunStartArgs
from acquisition.config import LabConfig
from acquisition.errors import AnalysisError, CommandError
from acquisition.kinds import role_of
from acquisition.plate_maps import plate_map_toml

__all__ = ["COUNTER_ROLE", "COUNT_PLATE", "LAYOUT_SOURCE", "SOURCE", "count_plate_protocol"]

COUNT_PLATE = "count-plate"
COUNTER_ROLE = "counter"  # the role its count step needs (``args.instrument`` must play it)
SOURCE = "count-plate (the run.start arguments)"
LAYOUT_SOURCE = "run.start analysis.layout"
_DESCRIPTION = "Count the plate in the counter now"


def count_plate_protocol(
    args: RunStartArgs, config: LabConfig | None = None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The protocol definition (as a protocol file's data) and the plate map (as a plate
    map file's data, or None without analysis). CommandError naming the argument that is
    wrong (``not_found``: no such instrument in ``config``; else ``bad_request``)."""
    if config is not None:
        _check_instrument(config, args.instrument)
    count: dict[str, Any] = {
        "type": "count",
        "instrument": args.instrument,
        "isotope": args.isotope,
        "count_time": f"{args.count_time_s!r} s",  # repr: the exact float comes back
    }
    if args.precision_pct is not None:
        count["precision"] = f"{args.precision_pct!r} %"
    if args.wells:
        count["wells"] = list(args.wells)
    steps: list[dict[str, Any]] = [count]
    plate_map: dict[str, Any] | None = None
    spec = args.analysis
    if spec is not None:
        try:
            layout = competition_layout(**spec.layout)
        except (AnalysisError, TypeError, ValueError) as exc:
            raise CommandError("bad_request", f"args.analysis.layout: {exc}") from exc
        if spec.competitor not in layout.competitors:
            raise CommandError(
                "bad_request",
                f"args.analysis.competitor: one of {sorted(layout.competitors)} "
                f"(got {spec.competitor!r})",
            )
        needed = MODELS[spec.model].constants
        missing = [c for c in needed if c not in spec.constants]
        if missing:
            raise CommandError(
                "bad_request", f"args.analysis.constants: {', '.join(missing)} needed"
            )
        bad = [f"{k} = {v!r}" for k, v in spec.constants.items()
               if not (math.isfinite(v) and v > 0)]  # fmt: skip
        if bad:
            raise CommandError("bad_request", f"args.analysis.constants: positive numbers "
                                              f"(got {', '.join(bad)})")  # fmt: skip
        unknown = [c for c in spec.constants if c not in needed]
        if unknown:
            raise CommandError(
                "bad_request",
                f"args.analysis.constants: {', '.join(unknown)} is not a constant of "
                f"{spec.model} (known: {', '.join(needed) or 'none'})",
            )
        plate_map = tomllib.loads(plate_map_toml(layout))
        analyze: dict[str, Any] = {
            "type": "analyze",
            "model": spec.model,
            "competitor": spec.competitor,
            "constants": {k: float(v) for k, v in spec.constants.items()},
            "rate": spec.rate,
            "subtract_blanks": spec.subtract_blanks,
        }
        for name in ("efficiency", "specific_activity_ci_per_mmol", "protein_mg", "added_cpm"):
            value = getattr(spec, name)
            if value is not None:
                analyze[name] = value
        steps.append(analyze)
    return {"name": COUNT_PLATE, "description": _DESCRIPTION, "steps": steps}, plate_map


def _check_instrument(config: LabConfig, wanted: str) -> None:
    match = next((c for c in config.instruments if c.id == wanted), None)
    if match is None:
        raise CommandError("not_found", f"no instrument '{wanted}' in the config")
    if role_of(match.kind) != COUNTER_ROLE:
        raise CommandError("bad_request", f"args.instrument: '{wanted}' is a {match.kind}, "
                                          f"not a {COUNTER_ROLE}")  # fmt: skip
