"""Analyse a finished counting run: its published documents -> a result document (pure; no I/O
except :func:`run_result_plot`, which writes the PNG it is asked for).

:func:`analyze_count_run` takes the run's documents as a count run publishes them (``kind``
start / step / data / stop; each data document carries ``reading`` = a
:class:`~acquisition.payloads.WellReading` as a dict) and a :class:`PlateLayout`, and

1. turns every data document whose well is in the layout into a
   :class:`~acquisition.analysis.reduce.WellRecord` (role and log10 molar concentration from
   the layout; wells not in the layout are ignored and listed; a duplicate delivery -- the same
   document ``id`` -- counts once; a well read twice keeps its later reading, by ``seq``);
2. reduces the plate (:func:`~acquisition.analysis.reduce.reduce_plate`) on the total and NSB
   wells and the chosen competitor's wells (plus the blank wells when the background is taken
   from them), and every layout well again with the same background for the per-well table;
3. fits the competitor's points (x = log10 M, y = the chosen rate net of background,
   replicates as individual points) unless the data are degenerate
   (:func:`~acquisition.analysis.qc.check_data`); for the one-site models also the
   variable-slope (4PL) curve, for the Hill-slope verdict;
4. evaluates the QC verdicts (:func:`~acquisition.analysis.qc.evaluate`, plus the fit's own
   ``fit`` verdict) and returns a :class:`RunResult` (schema ``assay.result/1``,
   docs/schemas/assay.result-1.json).

Degenerate data (no data documents, all wells equal, a single concentration, NaN, a fit that
fails) give a result with failing verdicts and no parameters (``parameters`` ``None``);
:class:`~acquisition.errors.AnalysisError` is raised only for invalid arguments (an unknown or
non-competition model, missing or non-finite constants, a competitor not in the layout, bad
reduction inputs, documents of several runs or a data document without a reading).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from acquisition.analysis import qc
from acquisition.analysis.fit import FitResult, Model, ParamEstimate
from acquisition.analysis.layout import PlateLayout, normalize_well, well_order
from acquisition.analysis.models import FOUR_PARAM_LOGISTIC, get_model
from acquisition.analysis.reduce import Reduction, ReplicateStats, WellRecord, reduce_plate
from acquisition.analysis.report import fit_to_dict
from acquisition.errors import AnalysisError

__all__ = [
    "COMPETITION_MODELS",
    "ParameterValue",
    "QcVerdict",
    "ReductionSummary",
    "ReplicateSummary",
    "RunResult",
    "WellRow",
    "analyze_count_run",
    "run_result_csv",
    "run_result_plot",
]

COMPETITION_MODELS: Final = (
    "one-site-fit-ki",
    "one-site-fit-logic50",
    "four-param-logistic",
    "two-sites-fit-ki",
    "heterologous-depletion",
)
"""Models whose x is the log10 molar competitor concentration: the ones a competition plate
can be fitted with."""

_HILL_CHECKED: Final = frozenset({"one-site-fit-ki", "one-site-fit-logic50",
                                  "four-param-logistic"})
"""Models that assume (or measure) a single site: the Hill-slope verdict applies to them."""

Rate = Literal["ccpm", "cpm"]


def _num(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


# ------------------------------------------------------------------------- result document


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParameterValue(_Frozen):
    """A fitted (or back-transformed) parameter, as :func:`report.fit_to_dict` reports it."""

    name: str
    estimate: float | None
    se: float | None = None
    ci_low: float | None = Field(None, description="asymptotic CI")
    ci_high: float | None = None
    profile_low: float | None = Field(None, description="profile-likelihood CI")
    profile_high: float | None = None


class QcVerdict(_Frozen):
    """One QC check: ``value`` is the number that decided it, ``threshold`` its limit."""

    code: str
    passed: bool
    value: float | None
    threshold: float | None
    message: str


class ReplicateSummary(_Frozen):
    n: int = Field(ge=0)
    mean: float | None
    sd: float | None = Field(description="sample SD (ddof=1); null for fewer than 2 wells")


class ReductionSummary(_Frozen):
    """The control wells and the assay window (rates net of background, in the chosen rate)."""

    background_cpm: float | None
    total: ReplicateSummary
    nsb: ReplicateSummary
    specific_cpm: float | None = Field(description="mean(total) - mean(NSB): the window")
    specific_percent_of_total: float | None
    nsb_percent_of_total: float | None
    z_prime: float | None
    fraction_bound: float | None = Field(
        description="bound in the total wells / added radioligand (needs added_cpm)")
    efficiency: float | None
    specific_activity_ci_per_mmol: float | None
    protein_mg: float | None
    added_cpm: float | None
    total_dpm: float | None
    specific_dpm: float | None
    specific_fmol: float | None
    specific_fmol_per_mg: float | None
    notes: list[str] = Field(default_factory=list)


class WellRow(_Frozen):
    """One layout well that was read, with its derived values (null where not computable)."""

    well: str
    role: Literal["total", "nsb", "competitor", "blank"]
    competitor: str | None
    log_conc: float | None = Field(description="log10 molar concentration (layout)")
    fitted: bool = Field(description="a point of the competitor's curve")
    rate: float | None = Field(description="the rate the counter reported (ccpm or cpm)")
    net_cpm: float | None = Field(description="rate - background")
    specific_cpm: float | None = Field(description="net - mean(NSB)")
    percent_specific: float | None
    dpm: float | None
    specific_fmol: float | None
    specific_fmol_per_mg: float | None
    counts: float | None
    sigma2_pct: float | None
    flags: list[str] = Field(default_factory=list)


class RunResult(_Frozen):
    """The analysis of one counting run (``assay.result/1``).

    ``parameters``/``derived`` and the fit statistics are null when the data are degenerate or
    the fit failed; ``qc`` then says why. ``passed`` is true when every verdict passed.
    """

    schema_: Literal["assay.result/1"] = Field("assay.result/1", alias="schema")
    run: str | None
    plate_id: str | None = None
    exit_status: str | None = Field(None, description="the run's stop document, if any")
    model: str
    competitor: str
    rate: Rate
    constants: dict[str, float]
    level: float = 0.95
    n: int | None = Field(None, description="points fitted (replicates individually)")
    dof: int | None = None
    ss: float | None = None
    r2: float | None = None
    sy_x: float | None = None
    converged: bool | None = None
    fit_message: str | None = None
    parameters: list[ParameterValue] | None = None
    derived: list[ParameterValue] | None = None
    log_ic50: float | None = Field(None, description="log10 molar IC50 of the fitted curve")
    passed: bool
    qc: list[QcVerdict]
    reduction: ReductionSummary
    wells: list[WellRow]
    missing_wells: list[str] = Field(default_factory=list,
                                     description="layout wells without a reading")
    ignored_wells: list[str] = Field(default_factory=list,
                                     description="wells read but not in the layout")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# ------------------------------------------------------------------------------- documents


def _mapping(doc: Any, i: int) -> Mapping[str, Any]:
    if isinstance(doc, BaseModel):
        dumped: dict[str, Any] = doc.model_dump(mode="json", by_alias=True)
        return dumped
    if isinstance(doc, Mapping):
        return doc
    raise AnalysisError(f"documents[{i}]: not a run document (a mapping), got "
                        f"{type(doc).__name__}")


class _Run:
    """What the analysis needs from a run's documents."""

    def __init__(self, documents: Sequence[Any], rate: Rate) -> None:
        self.run: str | None = None
        self.plate_id: str | None = None
        self.exit_status: str | None = None
        self.readings: dict[str, Mapping[str, Any]] = {}
        self.unreadable: list[str] = []
        runs: set[str] = set()
        seen_ids: set[str] = set()
        latest_seq: dict[str, float] = {}
        for i, raw in enumerate(documents):
            doc = _mapping(raw, i)
            doc_id = doc.get("id")
            if isinstance(doc_id, str):
                if doc_id in seen_ids:
                    continue
                seen_ids.add(doc_id)
            if doc.get("run") is not None:
                runs.add(str(doc["run"]))
            kind = doc.get("kind")
            if kind == "stop":
                status = doc.get("exit_status")
                self.exit_status = None if status is None else str(status)
            elif kind == "start" and self.plate_id is None:
                plate = doc.get("plate")
                if isinstance(plate, Mapping) and plate.get("plate_id") is not None:
                    self.plate_id = str(plate["plate_id"])
            elif kind == "data" and doc.get("stream", "well") == "well":
                self._data(doc, i, rate, latest_seq)
        if len(runs) > 1:
            raise AnalysisError(f"documents: they belong to {len(runs)} runs "
                                f"({', '.join(sorted(runs))}); analyse one run at a time")
        self.run = next(iter(runs), None)

    def _data(self, doc: Mapping[str, Any], i: int, rate: Rate,
              latest_seq: dict[str, float]) -> None:
        where = f"documents[{i}] (seq {doc.get('seq', '?')})"
        reading = doc.get("reading")
        if not isinstance(reading, Mapping) or not isinstance(reading.get("well"), str):
            raise AnalysisError(f"{where}: a data document without a well reading")
        value = reading.get(rate)
        if isinstance(value, bool) or not isinstance(value, int | float):
            # A reading without a usable rate is data the QC must report (nan-values),
            # not a reason to publish no result at all.
            value = math.nan
        well = normalize_well(reading["well"])
        if well is None:
            self.unreadable.append(str(reading["well"]))
            return
        seq_raw = doc.get("seq")
        seq = float(seq_raw) if isinstance(seq_raw, int | float) else float(i)
        if well in latest_seq and seq < latest_seq[well]:
            return
        latest_seq[well] = seq
        self.readings[well] = reading
        if self.plate_id is None and reading.get("plate_id") is not None:
            self.plate_id = str(reading["plate_id"])


# -------------------------------------------------------------------------------- analysis


def _check_arguments(
    model_name: str,
    *,
    constants: Mapping[str, float],
    layout: PlateLayout,
    competitor: str,
    rate: str,
    background_cpm: float | None,
    added_cpm: float | None,
) -> tuple[Model, dict[str, float]]:
    model = get_model(model_name)
    if model.name not in COMPETITION_MODELS:
        raise AnalysisError(f"model {model.name!r} does not fit a competition plate; use one of "
                            f"{', '.join(COMPETITION_MODELS)}")
    missing = [c for c in model.constants if c not in constants]
    if missing:
        raise AnalysisError(f"constants: {model.name!r} needs {', '.join(missing)} "
                            f"(required: {', '.join(model.constants)})")
    consts: dict[str, float] = {}
    for name, value in constants.items():
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise AnalysisError(f"constants: {name} is not a number ({value!r})") from None
        if not math.isfinite(v):
            raise AnalysisError(f"constants: {name} is not finite ({v})")
        consts[name] = v
    if competitor not in layout.competitors:
        known = ", ".join(layout.competitors) or "none"
        raise AnalysisError(f"competitor {competitor!r} is not in the plate layout "
                            f"(competitors: {known})")
    if rate not in ("ccpm", "cpm"):
        raise AnalysisError(f"rate: must be 'ccpm' or 'cpm', got {rate!r}")
    if background_cpm is not None and not math.isfinite(background_cpm):
        raise AnalysisError(f"background_cpm: must be finite, got {background_cpm}")
    if added_cpm is not None and not (added_cpm > 0 and math.isfinite(added_cpm)):
        raise AnalysisError(f"added_cpm: must be a positive number, got {added_cpm}")
    return model, consts


def _try_fit(model: Model, x: Any, y: Any, constants: Mapping[str, float],
             profile: bool) -> tuple[FitResult | None, qc.Verdict]:
    """qc.try_fit, and a failed fit (never a crash) for anything numerical it lets through."""
    try:
        result, verdict = qc.try_fit(model, x, y, constants=constants, profile=profile)
    except (ValueError, ArithmeticError) as exc:
        return None, qc.Verdict("fit", False, None, None, f"{model.name}: {exc}")
    if result is not None and not all(
        math.isfinite(p.estimate) for p in result.params.values()
    ):
        return None, qc.Verdict("fit", False, None, None,
                                f"{model.name}: estimates are not finite")
    return (result if verdict.passed else None), verdict


def _log_ic50(result: FitResult) -> float | None:
    if "LogIC50" in result.params:
        return _num(result.params["LogIC50"].estimate)
    if result.model == "one-site-fit-ki":
        hot, kd = result.constants["HotNM"], result.constants["HotKdNM"]
        if kd > 0 and hot >= 0:
            return _num(result.params["logKi"].estimate + math.log10(1.0 + hot / kd))
    return None


def _ic50_from_ki(result: FitResult) -> list[ParameterValue]:
    """IC50 = Ki (1 + [hot]/Kd) for the Fit-Ki model, as Prism reports it beside Ki: the
    shift is a constant, so logKi's CIs (asymptotic and profile) carry over exactly."""
    if result.model != "one-site-fit-ki" or "logKi" not in result.params:
        return []
    hot, kd = result.constants["HotNM"], result.constants["HotKdNM"]
    if not (kd > 0 and hot >= 0):
        return []
    shift = math.log10(1.0 + hot / kd)
    p = result.params["logKi"]

    def m(v: float | None) -> float | None:
        return None if v is None or not math.isfinite(v) else _num(10.0 ** (v + shift))

    return [ParameterValue(name="IC50", estimate=m(p.estimate), ci_low=m(p.ci_low),
                           ci_high=m(p.ci_high), profile_low=m(p.profile_low),
                           profile_high=m(p.profile_high))]  # fmt: skip


def _replicates(s: ReplicateStats) -> ReplicateSummary:
    return ReplicateSummary(n=s.n, mean=_num(s.mean), sd=_num(s.sd))


def _summary(r: Reduction, added_cpm: float | None) -> ReductionSummary:
    t, n = r.total, r.nsb
    z = qc.z_prime(t.mean, t.sd, n.mean, n.sd) if t.n >= 2 and n.n >= 2 else None
    return ReductionSummary(
        background_cpm=_num(r.background_cpm),
        total=_replicates(t),
        nsb=_replicates(n),
        specific_cpm=_num(r.specific_cpm),
        specific_percent_of_total=_num(r.percent_specific_of_total),
        nsb_percent_of_total=_num(r.nsb_percent_of_total),
        z_prime=_num(z),
        fraction_bound=_num(r.fraction_bound),
        efficiency=r.efficiency,
        specific_activity_ci_per_mmol=r.specific_activity,
        protein_mg=r.protein_mg,
        added_cpm=added_cpm,
        total_dpm=_num(r.total_dpm),
        specific_dpm=_num(r.specific_dpm),
        specific_fmol=_num(r.specific_fmol),
        specific_fmol_per_mg=_num(r.specific_fmol_per_mg),
        notes=list(r.notes),
    )


def _verdict(v: qc.Verdict) -> QcVerdict:
    return QcVerdict(code=v.code, passed=v.passed, value=_num(v.value),
                     threshold=_num(v.threshold), message=v.message)


def analyze_count_run(
    documents: Sequence[Mapping[str, Any]],
    layout: PlateLayout,
    *,
    model: str = "one-site-fit-ki",
    constants: Mapping[str, float],
    competitor: str,
    rate: Rate = "ccpm",
    background_cpm: float | None = 0.0,
    efficiency: float | None = None,
    specific_activity_ci_per_mmol: float | None = None,
    protein_mg: float | None = None,
    added_cpm: float | None = None,
    profile: bool = True,
    hill_slope_check: bool = True,
) -> RunResult:
    """Analyse one competitor of a finished count run; see the module docstring.

    ``background_cpm``: subtracted from every rate (0: the rates are used as reported);
    ``None`` takes the mean of the layout's blank wells (0 without blank wells).
    ``efficiency`` (fraction) gives DPM; with ``specific_activity_ci_per_mmol`` fmol; with
    ``protein_mg`` (per well) fmol/mg. ``added_cpm`` (a counted aliquot of the radioligand
    added per well) gives the fraction bound and the ligand-depletion verdict.
    ``hill_slope_check``: also fit the variable-slope curve for the ``hill-slope`` verdict
    (one-site models only).
    """
    fit_model, consts = _check_arguments(
        model, constants=constants, layout=layout, competitor=competitor, rate=rate,
        background_cpm=background_cpm, added_cpm=added_cpm,
    )
    run = _Run(documents, rate)

    records: list[WellRecord] = []
    fitted_wells: set[str] = set()
    ignored = sorted(run.unreadable)
    for well, reading in sorted(run.readings.items(), key=lambda kv: well_order(kv[0])):
        entry = layout.get(well)
        if entry is None:
            ignored.append(well)
            continue
        log_conc = entry.log_conc if entry.role == "competitor" else None
        records.append(WellRecord.from_reading({**reading, "well": entry.well}, entry.role,
                                               log_conc, rate=rate))
        if entry.role == "competitor" and entry.competitor == competitor:
            fitted_wells.add(entry.well)
    missing = [w.well for w in sorted(layout.wells, key=lambda e: well_order(e.well))
               if w.well not in run.readings]

    def in_fit(r: WellRecord) -> bool:
        return (r.role in ("total", "nsb") or r.well in fitted_wells
                or (r.role == "blank" and background_cpm is None))

    common: dict[str, Any] = {
        "efficiency": efficiency,
        "specific_activity": specific_activity_ci_per_mmol,
        "protein_mg": protein_mg,
        "added_cpm": added_cpm,
    }
    reduction = reduce_plate([r for r in records if in_fit(r)], background_cpm=background_cpm,
                             **common)
    table = reduce_plate(records, background_cpm=reduction.background_cpm, **common)

    data_verdicts = qc.check_data(reduction)
    blocked = any(v.code in qc.BLOCKING_CODES for v in data_verdicts)
    result: FitResult | None = None
    extra: list[qc.Verdict] = []
    hill_fit: FitResult | None = None
    if not blocked:
        result, fit_verdict = _try_fit(fit_model, reduction.x, reduction.y, consts, profile)
        extra.append(fit_verdict)
        if result is not None and hill_slope_check and fit_model.name in _HILL_CHECKED:
            if fit_model.name == FOUR_PARAM_LOGISTIC.name:
                hill_fit = result
            else:
                hill_fit, hill_verdict = _try_fit(FOUR_PARAM_LOGISTIC, reduction.x, reduction.y,
                                                  {}, profile)
                if hill_fit is None:
                    extra.append(qc.Verdict(
                        "hill-slope", False, None, -1.0,
                        f"the variable-slope fit for the Hill-slope check failed: "
                        f"{hill_verdict.message}"))
    evaluated = qc.evaluate(reduction, result, hill_fit=hill_fit)
    k = len(data_verdicts)
    verdicts = evaluated[:k] + extra + evaluated[k:]

    fit_fields: dict[str, Any] = {}
    if result is not None:
        d = fit_to_dict(result)
        fit_fields = {
            "level": d["level"],
            "n": d["n"],
            "dof": d["dof"],
            "ss": d["ss"],
            "r2": d["r2"],
            "sy_x": d["sy_x"],
            "converged": d["converged"],
            "fit_message": d["message"],
            "parameters": [ParameterValue(**p) for p in d["parameters"]],
            "derived": [ParameterValue(**p) for p in d["derived"]] + _ic50_from_ki(result),
            "log_ic50": _log_ic50(result),
        }

    rows = []
    for rw in table.wells:
        rec = rw.record
        entry = layout.get(rec.well)
        assert entry is not None
        rows.append(WellRow(
            well=rec.well,
            role=rec.role,
            competitor=entry.competitor,
            log_conc=entry.log_conc,
            fitted=rec.well in fitted_wells,
            rate=_num(rec.cpm),
            net_cpm=_num(rw.net_cpm),
            specific_cpm=_num(rw.specific_cpm),
            percent_specific=_num(rw.percent_specific),
            dpm=_num(rw.dpm),
            specific_fmol=_num(rw.specific_fmol),
            specific_fmol_per_mg=_num(rw.specific_fmol_per_mg),
            counts=_num(rec.counts),
            sigma2_pct=_num(rec.sigma2_pct),
            flags=list(rec.flags),
        ))

    return RunResult(
        run=run.run,
        plate_id=run.plate_id,
        exit_status=run.exit_status,
        model=fit_model.name,
        competitor=competitor,
        rate=rate,
        constants=consts,
        passed=qc.all_passed(verdicts),
        qc=[_verdict(v) for v in verdicts],
        reduction=_summary(reduction, added_cpm),
        wells=rows,
        missing_wells=missing,
        ignored_wells=ignored,
        **fit_fields,
    )


# --------------------------------------------------------------------------------- outputs

CSV_COLUMNS: Final = ("well", "role", "competitor", "log_conc", "fitted", "rate", "net_cpm",
                      "specific_cpm", "percent_specific", "dpm", "specific_fmol",
                      "specific_fmol_per_mg", "counts", "sigma2_pct", "flags")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


def run_result_csv(result: RunResult) -> str:
    """The per-well table as CSV (plate order, one row per well read): the ``rate`` column
    is named after the rate (``ccpm`` or ``cpm``); empty cells where a value is not
    computable; ``flags`` space-separated."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([result.rate if c == "rate" else c for c in CSV_COLUMNS])
    for row in result.wells:
        writer.writerow([_cell(getattr(row, c)) for c in CSV_COLUMNS])
    return buf.getvalue()


def _fit_of(result: RunResult) -> FitResult:
    if result.parameters is None:
        raise AnalysisError(f"run {result.run}: no fitted curve to plot "
                            f"({'; '.join(v.message for v in result.qc if not v.passed)})")
    model = get_model(result.model)
    params: dict[str, ParamEstimate] = {}
    for p in result.parameters:
        if p.estimate is None:
            raise AnalysisError(f"run {result.run}: parameter {p.name} has no estimate")
        params[p.name] = ParamEstimate(p.name, p.estimate, p.se, p.ci_low, p.ci_high,
                                       p.profile_low, p.profile_high)
    return FitResult(
        model=result.model,
        params=params,
        derived={},
        constants=dict(result.constants),
        n=result.n or 0,
        dof=result.dof or 0,
        ss=math.nan if result.ss is None else result.ss,
        r2=math.nan if result.r2 is None else result.r2,
        sy_x=math.nan if result.sy_x is None else result.sy_x,
        converged=bool(result.converged),
        message=result.fit_message or "",
        model_def=model,
    )


def run_result_plot(result: RunResult, path: Path) -> Path:
    """Dose-response PNG of the fitted competitor: replicate means +- SD of the fitted wells,
    the fitted curve and the IC50 marked. :class:`AnalysisError` when there is no fit."""
    from acquisition.analysis.plot import fit_plot_png

    fitted = _fit_of(result)
    points = [(w.log_conc, w.net_cpm) for w in result.wells
              if w.fitted and w.log_conc is not None and w.net_cpm is not None]
    if not points:
        raise AnalysisError(f"run {result.run}: no fitted wells to plot")
    x, y = zip(*points, strict=True)
    title = f"{result.competitor}: {result.model}" + (f" (run {result.run})" if result.run
                                                      else "")
    return fit_plot_png(path, list(x), list(y), fitted, title=title,
                        ylabel=f"{result.rate.upper()} (net of background)",
                        mark_x=result.log_ic50, mark_label="IC50")
