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

import tomllib
from typing import Any

from acquisition.analysis.layout import competition_layout
from acquisition.analysis.models import MODELS
from acquisition.commands import RunStartArgs
from acquisition.errors import AnalysisError, CommandError
from acquisition.plate_maps import plate_map_toml

__all__ = ["COUNT_PLATE", "LAYOUT_SOURCE", "SOURCE", "count_plate_protocol"]

COUNT_PLATE = "count-plate"
SOURCE = "count-plate (the run.start arguments)"
LAYOUT_SOURCE = "run.start analysis.layout"
_DESCRIPTION = "Count the plate in the counter now"


def count_plate_protocol(args: RunStartArgs) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The protocol definition (as a protocol file's data) and the plate map (as a plate
    map file's data, or None without analysis). CommandError (bad_request) naming the
    argument that is wrong."""
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
