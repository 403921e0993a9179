"""``assay analyze FILE.csv --model MODEL``: fit offline, no daemon, no broker needed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run_analyze"]

MODEL_NAMES = (
    "one-site-fit-ki",
    "one-site-fit-logic50",
    "four-param-logistic",
    "two-sites-fit-ki",
    "saturation-specific",
    "saturation-total-nonspecific",
    "heterologous-depletion",
)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "analyze",
        help="fit a dose-response or saturation CSV offline (Prism's models)",
        description="Fit FILE.csv (columns x, y, and dataset=total|nsb for the global "
        "saturation fit; one row per replicate). x is log10 molar competitor concentration, "
        "or the radioligand concentration in nM for the saturation models.",
    )
    p.add_argument("file", type=Path)
    p.add_argument("--model", required=True, choices=MODEL_NAMES)
    p.add_argument(
        "--constant", action="append", default=[], metavar="NAME=VALUE",
        help="a model constant with Prism's name, e.g. HotNM=5 HotKdNM=5.13",
    )  # fmt: skip
    p.add_argument(
        "--fix", action="append", default=[], metavar="NAME=VALUE",
        help="constrain a parameter to a constant (Prism's 'constant equal to'), e.g. Bottom=0",
    )  # fmt: skip
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument("--no-profile", action="store_true", help="skip profile-likelihood CIs")
    p.add_argument(
        "--compare", choices=MODEL_NAMES, metavar="MODEL",
        help="also fit MODEL and compare the two by the extra-sum-of-squares F test",
    )  # fmt: skip
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="also draw the fit as a PNG")


def _constants(pairs: list[str], what: str = "--constant") -> dict[str, float]:
    out: dict[str, float] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        number = _float(value) if sep and name.strip() else None
        if number is None:
            raise SystemExit(f"assay: {what}: NAME=VALUE with a number (got {pair!r})")
        out[name.strip()] = number
    return out


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def run_analyze(args: argparse.Namespace) -> int:
    from acquisition.analysis.csv_input import read_xy_csv
    from acquisition.analysis.fit import fit
    from acquisition.analysis.models import MODELS
    from acquisition.analysis.qc import undetermined
    from acquisition.analysis.report import fit_to_dict
    from acquisition.errors import AnalysisError

    model = MODELS[args.model]
    try:
        data = read_xy_csv(args.file, datasets=model.datasets)
        result = fit(
            model,
            data.x,
            data.y,
            constants=_constants(args.constant),
            fixed=_constants(args.fix, what="--fix") or None,
            dataset=data.dataset,
            profile=not args.no_profile,
        )
    except AnalysisError as exc:
        print(f"assay: {exc}", file=sys.stderr)
        return 2
    why = undetermined(result)
    if why is not None:  # Prism's "ambiguous": no numbers rather than made-up ones
        print(f"assay: {args.model}: ambiguous fit: {why}", file=sys.stderr)
        return 1
    report = fit_to_dict(result)
    if args.compare:
        report["comparison"] = _compare(args, data, result)
    if args.plot is not None:
        from acquisition.analysis.plot import fit_plot_png

        saturation = args.model.startswith("saturation")
        fit_plot_png(
            args.plot, data.x, data.y, result,
            title=f"{args.file.name}: {args.model}",
            xlabel="[radioligand] (nM)" if saturation else "log[competitor] (M)",
            mark_x=None if saturation else _log_ic50(result),
        )  # fmt: skip
        print(f"plot: {args.plot}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps(report, indent=2))
    else:
        _print_table(report)
    return 0 if result.converged else 1


def _compare(args: argparse.Namespace, data: Any, first: Any) -> dict[str, Any]:
    """Extra-sum-of-squares F test between ``--model`` and ``--compare`` (simpler first)."""
    from acquisition.analysis.fit import extra_sum_of_squares, fit
    from acquisition.analysis.models import MODELS
    from acquisition.errors import AnalysisError

    other = MODELS[args.compare]
    try:
        second = fit(other, data.x, data.y, constants=_constants(args.constant),
                     dataset=data.dataset, profile=False)  # fmt: skip
        simple, complex_ = sorted((first, second), key=lambda r: -r.dof)
        test = extra_sum_of_squares(simple, complex_)
    except AnalysisError as exc:
        return {"with": args.compare, "error": str(exc)}
    return {
        "simple": simple.model, "complex": complex_.model, "f": test.f, "dfn": test.dfn,
        "dfd": test.dfd, "p": test.p, "preferred": test.preferred,
    }  # fmt: skip


def _log_ic50(result: Any) -> float | None:
    """log10 IC50: fitted directly, or from Ki by Cheng-Prusoff for the Fit Ki model."""
    import math

    params = result.params
    if "LogIC50" in params:
        return float(params["LogIC50"].estimate)
    if "logKi" in params and {"HotNM", "HotKdNM"} <= set(result.constants):
        c = result.constants
        return float(params["logKi"].estimate) + math.log10(1 + c["HotNM"] / c["HotKdNM"])
    return None


def _print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report['model']}  (n={report['n']}, DF={report['dof']})")
    for col in ("parameter", "estimate", "SE", "95% CI (asymptotic)", "95% CI (profile)"):
        table.add_column(col, justify="left" if col == "parameter" else "right")
    for p in [*report["parameters"], *report["derived"]]:
        table.add_row(
            p["name"],
            _g(p["estimate"]),
            _g(p["se"]),
            _ci(p["ci_low"], p["ci_high"]),
            _ci(p["profile_low"], p["profile_high"]),
        )
    console = Console()
    console.print(table)
    if cmp := report.get("comparison"):
        if "error" in cmp:
            console.print(f"comparison with {cmp['with']}: {cmp['error']}")
        else:
            console.print(
                f"F test {cmp['simple']} vs {cmp['complex']}: F({cmp['dfn']},{cmp['dfd']}) = "
                f"{cmp['f']:.4g}, P = {cmp['p']:.3g}: prefer {cmp['preferred']}"
            )
    console.print(
        f"SS {_g(report['ss'])}   R² {_g(report['r2'])}   Sy.x {_g(report['sy_x'])}"
        + ("" if report["converged"] else f"   [red]not converged: {report['message']}[/red]")
    )


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _ci(low: float | None, high: float | None) -> str:
    if low is None and high is None:
        return "-"
    return f"{_g(low)} to {_g(high)}"
