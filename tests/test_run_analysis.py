"""Analysis of a finished count run (acquisition.analysis.run_analysis) and plate layouts
(acquisition.analysis.layout): the documents a count run publishes -> a result document with
parameters, QC verdicts, the per-well table, CSV and PNG; degenerate runs -> failing QC and no
parameters instead of an exception."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from acquisition.analysis import qc
from acquisition.analysis.layout import PlateLayout, competition_layout
from acquisition.analysis.run_analysis import (
    RunResult,
    analyze_count_run,
    run_result_csv,
    run_result_plot,
)
from acquisition.errors import AnalysisError
from acquisition.payloads import (
    DataDocument,
    StartDocument,
    StepDocument,
    StopDocument,
    WellReading,
)
from acquisition.schemas import SCHEMA_DIR, render_schemas
from labware import wells as plate_wells

RUN = "run-20240604-0001"
HOT = {"HotNM": 5.0, "HotKdNM": 5.0}
KI_M = {"progesterone": 100e-9, "haloperidol": 3e-9}
TOTAL_CPM = 4400.0  # specific 4000 + NSB 400
NSB_CPM = 400.0
COUNT_MIN = 2.0


def world_layout() -> PlateLayout:
    """The simulated world's default layout (simulators/plate_map.py competition_layout)."""
    return competition_layout(competitors={"progesterone": "ABC", "haloperidol": "DEF"},
                              blank_rows="GH", nsb_competitor="haloperidol", nsb_m=1e-5)


def true_rate(layout: PlateLayout, well: str) -> float:
    entry = layout.get(well)
    assert entry is not None
    if entry.role == "total":
        return TOTAL_CPM
    if entry.role == "nsb":
        return NSB_CPM
    if entry.role == "blank":
        return 0.0
    assert entry.competitor is not None and entry.log_conc is not None
    log_ec50 = math.log10(KI_M[entry.competitor]) + math.log10(1 + HOT["HotNM"] / HOT["HotKdNM"])
    return NSB_CPM + (TOTAL_CPM - NSB_CPM) / (1 + 10 ** (entry.log_conc - log_ec50))


def count_run_documents(
    *,
    seed: int = 7,
    layout: PlateLayout | None = None,
    skip: frozenset[str] = frozenset(),
    rate_of: Callable[[str], float] | None = None,
) -> list[dict[str, Any]]:
    """start, step started, one data document per counted well, step finished, stop -- as
    the daemon publishes them (pydantic payloads dumped to JSON-ready dicts)."""
    layout = layout or world_layout()
    rng = np.random.default_rng(seed)
    t0 = datetime(2024, 6, 4, 9, 0, tzinfo=UTC)
    seq = iter(range(1, 10_000))

    def base(ts: datetime) -> dict[str, Any]:
        n = next(seq)
        return {"id": f"{RUN}-{n}", "run": RUN, "node": "bench-1", "seq": n, "ts": ts}

    docs: list[Any] = [
        StartDocument(**base(t0), protocol={"name": "count-plate"}, plate={"plate_id": "P-1"},
                      instruments={"counter": "counter-1"}, config={}, simulated=True),
        StepDocument(**base(t0), step="count", phase="started"),
    ]
    wells = [w for w in plate_wells(96) if w not in skip]
    for i, well in enumerate(wells):
        rate = rate_of(well) if rate_of else true_rate(layout, well)
        counts = int(rng.poisson(rate * COUNT_MIN)) if math.isfinite(rate) else 0
        cpm = counts / COUNT_MIN if math.isfinite(rate) else rate
        reading = WellReading(
            index=i, well=well, plate_id="P-1", detector=1 + i % 6, counts=counts,
            count_time_s=60 * COUNT_MIN, cpm=cpm, ccpm=cpm,
            sigma2_pct=round(200 / math.sqrt(counts), 2) if counts else None, flags=[],
            counted_at=t0 + timedelta(seconds=i),
        )
        docs.append(DataDocument(**base(t0 + timedelta(seconds=i)), reading=reading))
    end = t0 + timedelta(minutes=5)
    docs.append(StepDocument(**base(end), step="count", phase="finished"))
    docs.append(StopDocument(**base(end), exit_status="success", reason="done",
                             counts={"data": len(wells)}))
    return [d.model_dump(mode="json", by_alias=True) for d in docs]


def analyze(docs: list[dict[str, Any]], **kwargs: Any) -> RunResult:
    options: dict[str, Any] = {"constants": HOT, "competitor": "progesterone"}
    options.update(kwargs)
    return analyze_count_run(docs, world_layout(), **options)


def param(result: RunResult, name: str, *, derived: bool = False) -> Any:
    values = result.derived if derived else result.parameters
    assert values is not None
    return next(p for p in values if p.name == name)


# ------------------------------------------------------------------------------- layouts


def test_world_layout_matches_the_simulated_world_plate_map() -> None:
    layout = world_layout()
    assert len(layout.wells) == 96
    assert layout.competitors == ("progesterone", "haloperidol")
    assert layout.wells_of("total") == tuple(f"{r}1" for r in "ABCDEFGH")
    assert layout.wells_of("nsb") == tuple(f"{r}2" for r in "ABCDEFGH")
    a3, a12 = layout.get("A3"), layout.get("A12")
    assert a3 is not None and a12 is not None
    assert a3.log_conc == pytest.approx(-5.0) and a12.log_conc == pytest.approx(-11.0)
    assert layout.wells_of("competitor", "haloperidol")[0] == "D3"
    assert len(layout.wells_of("blank")) == 20
    b2 = layout.get("b02")
    assert b2 is not None and b2.competitor == "haloperidol"
    assert b2.log_conc == pytest.approx(-5.0)


def test_demo_plate_layout_is_ascending_with_blank_rows() -> None:
    # simulators/plates.py: 1e-11 M in column 3 up to 1e-5 M in column 12, rows G-H blank
    layout = competition_layout(
        competitors={"progesterone-like": "ABC", "haloperidol-like": "DEF"},
        descending=False, blank_rows="GH",
    )
    demo = [10 ** (-11 + 6 * i / 9) for i in range(10)]
    for i, conc in enumerate(demo):
        entry = layout.get(f"E{i + 3}")
        assert entry is not None and entry.competitor == "haloperidol-like"
        assert entry.log_conc == pytest.approx(math.log10(conc), abs=1e-12)
    g12 = layout.get("G12")
    assert g12 is not None and g12.role == "blank"


def test_layouts_match_the_simulators_plates_well_by_well() -> None:
    # tests may import simulators (acquisition may not): check the docstring's claims
    from simulators.plate_map import competition_layout as world_plate_map
    from simulators.plates import COMPETITORS, demo_plate

    world = world_plate_map()
    layout = world_layout()
    assert {w.well for w in layout.wells} == set(world.wells)
    for name, contents in world.wells.items():
        entry = layout.get(name)
        assert entry is not None and entry.role == contents.role, name
        if contents.role in ("competitor", "nsb"):
            assert entry.competitor == contents.competitor, name
            assert entry.log_conc == pytest.approx(math.log10(contents.competitor_m)), name

    demo = demo_plate()
    layout = competition_layout(competitors={name: rows for name, _ki, rows in COMPETITORS},
                                descending=False, blank_rows="GH")
    assert {w.well for w in layout.wells} == set(demo.dpm_by_well)
    assert set(layout.wells_of("competitor")) == set(demo.concentration_m_by_well)
    for name, conc in demo.concentration_m_by_well.items():
        entry = layout.get(name)
        assert entry is not None
        assert entry.log_conc == pytest.approx(math.log10(conc), abs=1e-12), name
    assert set(layout.wells_of("blank")) == {w for w, v in demo.dpm_by_well.items()
                                             if v == 0.0}


@pytest.mark.parametrize(
    ("wells", "match"),
    [
        ({"A1": {"role": "total"}, "A2": {"role": "nsb"},
          "C5": {"role": "competitor", "competitor": "x", "conc_m": 0.0}},
         r"well C5: concentration must be positive"),
        ({"A1": {"role": "total"}, "A2": {"role": "nsb"},
          "C5": {"role": "competitor", "competitor": "x", "conc_m": -1e-9}},
         r"well C5: concentration must be positive"),
        ({"A1": {"role": "total"}, "A2": {"role": "nsb"},
          "C5": {"role": "competitor", "competitor": "x", "log_conc": 1e-9}},
         r"well C5: log_conc"),
        ({"A1": {"role": "total"}, "A2": {"role": "nsb"},
          "D7": {"role": "competitor", "competitor": "x"}},
         r"well D7: a competitor well needs its concentration"),
        ({"A1": {"role": "total"}, "A2": {"role": "nsb"},
          "D7": {"role": "competitor", "log_conc": -8}},
         r"well D7: a competitor well needs the competitor's name"),
        ({"A1": {"role": "total"}, "B01": {"role": "nsb"}, "b1": {"role": "blank"}},
         r"well B1: listed more than once"),
        ({"A1": {"role": "total", "competitor": "x", "conc_m": 1e-9}, "A2": {"role": "nsb"}},
         r"well A1: a total well carries no competitor"),
        ({"A1": {"role": "total"}, "A2": {"role": "nsb"}, "J4": {"role": "blank"}},
         r"well 'J4': not a well"),
        ({"A1": {"role": "total"}, "A3": {"role": "competitor", "competitor": "x",
                                          "log_conc": -8}},
         r"no NSB wells"),
        ({"A2": {"role": "nsb"}}, r"no total-binding wells"),
    ],
)
def test_layout_validation_names_the_well(wells: Mapping[str, Mapping[str, Any]],
                                          match: str) -> None:
    with pytest.raises(AnalysisError, match=match):
        PlateLayout.from_mapping(wells)


def test_layout_constructed_directly_validates_too() -> None:
    with pytest.raises(ValueError, match="well A1: listed more than once"):
        PlateLayout.model_validate({"wells": [{"well": "A1", "role": "total"},
                                              {"well": "A01", "role": "nsb"}]})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"competitors": {"a": "ABC", "b": "CDE"}}, "row C is already used"),
        ({"competitors": {"a": "ABC"}, "blank_rows": "AH"}, "row A is already used"),
        ({"competitors": {"a": "AXZ"}}, "rows must be letters"),
        ({"competitors": {"a": "A"}, "points": 11}, "do not fit"),
        ({"competitors": {"a": "A"}, "top_m": 1e-11, "bottom_m": 1e-5}, "bottom_m < top_m"),
        ({"competitors": {"a": "A"}, "nsb_column": 5}, "dilution columns"),
        ({"competitors": {}}, "at least one competitor"),
    ],
)
def test_competition_layout_rejects_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(AnalysisError, match=match):
        competition_layout(**kwargs)


# ---------------------------------------------------------------------- a good count run


@pytest.fixture(scope="module")
def good() -> RunResult:
    return analyze(count_run_documents())


def test_count_run_gives_ki_within_its_ci_and_passing_qc(good: RunResult) -> None:
    assert good.schema_ == "assay.result/1"
    assert good.run == RUN and good.plate_id == "P-1" and good.exit_status == "success"
    assert good.model == "one-site-fit-ki" and good.constants == HOT
    ki = param(good, "Ki", derived=True)
    assert ki.profile_low < KI_M["progesterone"] < ki.profile_high
    assert ki.ci_low < KI_M["progesterone"] < ki.ci_high
    assert ki.estimate == pytest.approx(KI_M["progesterone"], rel=0.15)
    assert param(good, "logKi").se is not None
    failed = [v for v in good.qc if not v.passed]
    assert good.passed, failed
    codes = {v.code for v in good.qc}
    assert {"fit", "spans-50", "z-prime", "nsb-fraction", "top-vs-total",
            "bottom-vs-nsb", "hill-slope", "counting-error", "luminescence"} <= codes
    assert good.n == 30 and good.dof == 27
    assert good.r2 is not None and good.r2 > 0.99
    assert good.log_ic50 == pytest.approx(param(good, "logKi").estimate + math.log10(2))
    s = good.reduction
    assert s.total.n == 8 and s.nsb.n == 8
    assert s.total.mean == pytest.approx(TOTAL_CPM, rel=0.02)
    assert s.nsb.mean == pytest.approx(NSB_CPM, rel=0.05)
    assert s.z_prime is not None and s.z_prime > 0.8
    assert s.fraction_bound is None  # no added_cpm given
    assert good.missing_wells == [] and good.ignored_wells == []


def test_the_other_competitor_and_the_result_document_round_trips() -> None:
    result = analyze(count_run_documents(seed=11), competitor="haloperidol")
    ki = param(result, "Ki", derived=True)
    assert ki.profile_low < KI_M["haloperidol"] < ki.profile_high
    text = result.model_dump_json(by_alias=True)
    assert '"schema":"assay.result/1"' in text
    assert RunResult.model_validate_json(text) == result


def test_a_few_missing_wells_still_give_the_answer() -> None:
    skip = frozenset({"A1", "C2", "B5", "A9", "C12", "G7"})
    result = analyze(count_run_documents(seed=3, skip=skip))
    assert result.passed, [v for v in result.qc if not v.passed]
    ki = param(result, "Ki", derived=True)
    assert ki.profile_low < KI_M["progesterone"] < ki.profile_high
    assert result.n == 27
    assert result.missing_wells == sorted(skip, key=plate_wells(96).index)
    assert result.reduction.total.n == 7 and result.reduction.nsb.n == 7
    assert len(result.wells) == 90


def test_duplicate_deliveries_and_foreign_wells_are_handled() -> None:
    docs = count_run_documents(seed=7)
    # a redelivered document (same id) counts once; a well outside the layout is ignored
    layout = competition_layout(competitors={"progesterone": "ABC"})
    result = analyze_count_run([*docs, docs[10]], layout, constants=HOT,
                               competitor="progesterone")
    assert result.passed, [v for v in result.qc if not v.passed]
    assert len(result.wells) == 16 + 30
    assert "D3" in result.ignored_wells and "H12" in result.ignored_wells
    assert result.n == 30


def test_pydantic_documents_are_accepted_too(good: RunResult) -> None:
    docs = count_run_documents()
    from acquisition.payloads import run_document_adapter

    models = [run_document_adapter.validate_python(d) for d in docs]
    assert analyze(models).parameters == good.parameters  # type: ignore[arg-type]


def test_derived_values_when_efficiency_and_specific_activity_are_given() -> None:
    result = analyze(count_run_documents(), efficiency=0.4, specific_activity_ci_per_mmol=26.6,
                     protein_mg=0.1, added_cpm=80_000.0)
    s = result.reduction
    assert s.specific_cpm is not None and s.specific_fmol is not None
    assert s.total.mean is not None and s.fraction_bound is not None
    assert s.specific_dpm == pytest.approx(s.specific_cpm / 0.4)
    assert s.specific_fmol == pytest.approx(s.specific_cpm / 0.4 / (26.6 * 2.22))
    assert s.specific_fmol_per_mg == pytest.approx(s.specific_fmol / 0.1)
    assert s.fraction_bound == pytest.approx(s.total.mean / 80_000.0)
    depletion = next(v for v in result.qc if v.code == "ligand-depletion")
    assert depletion.passed and depletion.value == pytest.approx(100 * s.fraction_bound)
    row = next(w for w in result.wells if w.well == "A3")
    assert row.net_cpm is not None
    assert row.dpm == pytest.approx(row.net_cpm / 0.4)
    assert row.specific_fmol_per_mg is not None


def test_too_much_radioligand_bound_fails_the_depletion_verdict() -> None:
    result = analyze(count_run_documents(), added_cpm=20_000.0)
    depletion = next(v for v in result.qc if v.code == "ligand-depletion")
    assert not depletion.passed and depletion.value == pytest.approx(22, rel=0.05)
    assert not result.passed and result.parameters is not None  # the numbers are still there


def test_background_from_the_blank_wells() -> None:
    layout = world_layout()
    docs = count_run_documents(rate_of=lambda w: true_rate(layout, w) + 25.0)
    result = analyze(docs, background_cpm=None)
    assert result.reduction.background_cpm == pytest.approx(25.0, abs=3.0)
    assert result.reduction.nsb.mean == pytest.approx(NSB_CPM, rel=0.05)
    assert result.passed, [v for v in result.qc if not v.passed]


def test_other_competition_models() -> None:
    docs = count_run_documents()
    r4 = analyze(docs, model="four-param-logistic", constants={})
    assert r4.parameters is not None and param(r4, "HillSlope").estimate == pytest.approx(
        -1.0, abs=0.3)
    assert any(v.code == "hill-slope" and v.passed for v in r4.qc)
    r1 = analyze(docs, model="one-site-fit-logic50", constants={})
    assert r1.log_ic50 == pytest.approx(param(r1, "LogIC50").estimate)


# --------------------------------------------------------------------- degenerate runs


def assert_failed_without_parameters(result: RunResult, code: str) -> None:
    assert not result.passed
    assert result.parameters is None and result.derived is None
    assert result.dof is None and result.ss is None and result.r2 is None
    assert result.log_ic50 is None
    failing = {v.code for v in result.qc if not v.passed}
    assert code in failing, failing


def test_no_data_documents() -> None:
    docs = [d for d in count_run_documents() if d["kind"] != "data"]
    result = analyze(docs)
    assert_failed_without_parameters(result, "no-data")
    assert result.run == RUN and result.wells == [] and len(result.missing_wells) == 96
    assert_failed_without_parameters(analyze([]), "no-data")
    assert analyze([]).run is None


def test_all_wells_equal() -> None:
    flat = count_run_documents(seed=1)
    for d in flat:
        if d["kind"] == "data":
            d["reading"] = {**d["reading"], "cpm": 1000.0, "ccpm": 1000.0}
    assert_failed_without_parameters(analyze(flat), "all-equal")


def test_one_rate_with_counting_noise_fails_the_window_verdicts() -> None:
    # Poisson noise around one rate: a curve can be fitted to the noise, but the plate fails
    result = analyze(count_run_documents(rate_of=lambda w: 1000.0, seed=1))
    assert not result.passed
    failing = {v.code for v in result.qc if not v.passed}
    assert {"nsb-fraction", "z-prime"} <= failing


def test_a_single_concentration() -> None:
    keep = {f"{r}{c}" for r in "ABCDEFGH" for c in (1, 2, 3)}
    result = analyze(count_run_documents(skip=frozenset(set(plate_wells(96)) - keep)))
    assert_failed_without_parameters(result, "single-concentration")


def test_nan_readings() -> None:
    docs = count_run_documents()
    for d in docs:
        if d["kind"] == "data" and d["reading"]["well"] in ("B4", "A1"):
            d["reading"] = {**d["reading"], "ccpm": math.nan}
    result = analyze(docs)
    assert_failed_without_parameters(result, "nan-values")
    nan = next(v for v in result.qc if v.code == "nan-values")
    assert "A1" in nan.message and "B4" in nan.message
    row = next(w for w in result.wells if w.well == "B4")
    assert row.rate is None and row.net_cpm is None
    json.loads(result.model_dump_json(), parse_constant=pytest.fail)  # strict JSON: no NaN


def test_a_failing_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AnalysisError("the fit did not reach finite estimates")

    monkeypatch.setattr(qc, "fit", boom)
    result = analyze(count_run_documents())
    assert_failed_without_parameters(result, "fit")
    assert "finite" in next(v for v in result.qc if v.code == "fit").message


def test_no_specific_binding() -> None:
    layout = world_layout()

    def inverted(well: str) -> float:
        entry = layout.get(well)
        assert entry is not None
        return {"total": NSB_CPM, "nsb": TOTAL_CPM}.get(entry.role, true_rate(layout, well))

    assert_failed_without_parameters(analyze(count_run_documents(rate_of=inverted)),
                                     "negative-specific")


# ------------------------------------------------------------------- invalid arguments


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"model": "one-site-fit-kj"}, "unknown model"),
        ({"model": "saturation-specific"}, "does not fit a competition plate"),
        ({"constants": {"HotNM": 5.0}}, "needs HotKdNM"),
        ({"constants": {"HotNM": 5.0, "HotKdNM": math.nan}}, "not finite"),
        ({"competitor": "pregnenolone"}, "not in the plate layout"),
        ({"efficiency": 1.5}, "efficiency"),
        ({"added_cpm": 0.0}, "added_cpm"),
    ],
)
def test_invalid_arguments_raise_analysis_error(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(AnalysisError, match=match):
        analyze([], **kwargs)


def test_documents_of_two_runs_are_refused() -> None:
    docs = count_run_documents()
    other = {**docs[5], "run": "another-run", "id": "x"}
    with pytest.raises(AnalysisError, match="2 runs"):
        analyze([*docs, other])


# --------------------------------------------------------------------------- outputs


def test_csv_has_every_well_with_derived_columns() -> None:
    result = analyze(count_run_documents(), efficiency=0.4, specific_activity_ci_per_mmol=26.6,
                     protein_mg=0.1)
    rows = list(csv.DictReader(io.StringIO(run_result_csv(result))))
    assert len(rows) == 96
    assert [r["well"] for r in rows] == list(plate_wells(96))
    assert {"ccpm", "net_cpm", "specific_cpm", "percent_specific", "dpm", "specific_fmol",
            "specific_fmol_per_mg", "log_conc", "fitted"} <= set(rows[0])
    a3 = next(r for r in rows if r["well"] == "A3")
    assert a3["role"] == "competitor" and a3["fitted"] == "true"
    assert float(a3["log_conc"]) == pytest.approx(-5.0)
    assert float(a3["dpm"]) == pytest.approx(float(a3["net_cpm"]) / 0.4)
    assert sum(r["fitted"] == "true" for r in rows) == 30
    total = [float(r["percent_specific"]) for r in rows if r["role"] == "total"]
    assert np.mean(total) == pytest.approx(100.0)
    # without the efficiency there is no DPM: empty cells, not made-up numbers
    plain = list(csv.DictReader(io.StringIO(run_result_csv(analyze(count_run_documents())))))
    assert plain[0]["dpm"] == "" and plain[0]["specific_fmol"] == ""


def test_plot_writes_a_png(good: RunResult, tmp_path: Path) -> None:
    out = run_result_plot(good, tmp_path / "plots" / "result.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 5_000


def test_plot_without_a_fit_is_an_analysis_error(tmp_path: Path) -> None:
    with pytest.raises(AnalysisError, match="no fitted curve"):
        run_result_plot(analyze([]), tmp_path / "x.png")


def test_result_schema_file_exists_and_is_current() -> None:
    path = SCHEMA_DIR / "assay.result-1.json"
    assert path.exists()
    assert path.read_text(encoding="utf-8") == render_schemas()["assay.result-1.json"]
    assert '"assay.result/1"' in path.read_text(encoding="utf-8")
