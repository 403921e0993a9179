"""The drug-effect analysis on sweep summaries with known values: the condition means,
percent of baseline with Fieller's CI, QC-flagged sweeps left out, paired statistics
across cells."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from acquisition.analysis.drug_effect import analyze_effect, paired_across_cells
from acquisition.errors import AnalysisError

T0 = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)


def _sweeps(levels: dict[str, float], *, n: int = 20, sd: float = 5e-12, seed: int = 1,
            flag: set[int] = frozenset()) -> list[dict[str, Any]]:  # type: ignore[assignment]
    rng = np.random.default_rng(seed)
    out, k = [], 0
    for condition, level in levels.items():
        for _ in range(n):
            k += 1
            out.append({"sweep": k, "started_at": (T0 + timedelta(seconds=10 * k)).isoformat(),
                        "condition": condition, "inap_a": level + rng.normal(0, sd),
                        "ra_ohm": 10e6, "rm_ohm": 500e6, "cm_f": 33e-12,
                        "qc": ["access changed +25 % from the first sweep"] if k in flag
                        else []})  # fmt: skip
    return out


LEVELS = {"baseline": -180e-12, "DHEA-S": -120e-12, "DHEA-S + NE-100": -180e-12,
          "washout": -178e-12}  # fmt: skip


def test_the_effect_table_of_one_cell() -> None:
    result = analyze_effect("R1", _sweeps(LEVELS, flag={75, 80}), last=10)
    by = {c.condition: c for c in result.conditions}
    assert list(by) == list(LEVELS)
    assert by["baseline"].pct_of_baseline == pytest.approx(100.0)
    dheas = by["DHEA-S"]
    assert dheas.n == 10 and dheas.mean == pytest.approx(-120e-12, abs=4e-12)
    assert dheas.pct_of_baseline == pytest.approx(66.7, abs=2.5)
    assert dheas.pct_ci_low < dheas.pct_of_baseline < dheas.pct_ci_high  # type: ignore[operator]
    assert dheas.p_vs_baseline is not None and dheas.p_vs_baseline < 1e-6
    assert by["DHEA-S + NE-100"].p_vs_baseline > 0.01  # type: ignore[operator]
    washout = by["washout"]  # sweeps 61-80: 75 and 80 flagged, in its last 10: n is 8
    assert (washout.sweeps, washout.flagged, washout.n) == (20, 2, 8)
    assert result.qc_flagged == 2 and result.qc_reasons == {"access changed": 2}
    assert result.comparison == "sweep-wise within one cell"
    assert len(result.time_course) == 80 and result.time_course[74]["qc_ok"] is False


def test_fieller_covers_the_true_ratio_about_95_percent_of_the_time() -> None:
    covered = 0
    for seed in range(200):
        r = analyze_effect("R", _sweeps({"baseline": -100e-12, "drug": -60e-12}, n=10,
                                        sd=20e-12, seed=seed), last=10)  # fmt: skip
        drug = r.conditions[1]
        covered += drug.pct_ci_low <= 60.0 <= drug.pct_ci_high  # type: ignore[operator]
    assert 180 <= covered <= 199


def test_no_baseline_is_an_analysis_error() -> None:
    with pytest.raises(AnalysisError, match="no sweeps of the baseline condition 'baseline'"):
        analyze_effect("R", _sweeps({"control": -1e-10}))


def test_paired_statistics_across_cells_find_an_effect_and_no_false_one() -> None:
    cells = [analyze_effect(f"R{i}", _sweeps({"baseline": b, "DHEA-S": 0.67 * b,
                                              "NE-100": b * (1 + 0.02 * (i % 3 - 1))},
                                             seed=i))
             for i, b in enumerate((-150e-12, -180e-12, -210e-12, -170e-12, -190e-12, -160e-12))]
    drug, antagonist = paired_across_cells(cells)
    assert drug.n_cells == 6 and drug.mean_pct_of_baseline == pytest.approx(67.0, abs=2)
    assert drug.t_p < 0.001 and drug.wilcoxon_p == pytest.approx(0.03125)  # type: ignore[operator]
    assert abs(drug.cohens_dz) > 3  # type: ignore[arg-type]
    assert antagonist.t_p > 0.05  # type: ignore[operator]
    assert drug.comparison == "paired across cells (one cell a run)"


def test_the_paired_test_finds_an_effect_where_there_is_none_about_5_percent_of_the_time() -> None:
    """200 seeded experiments of 6 cells, each cell's drug condition drawn like its baseline
    (no true effect, cell-to-cell variation and sweep noise): the paired t test at 0.05."""
    rng = np.random.default_rng(11)
    hits = 0
    for trial in range(200):
        cells = []
        for i in range(6):
            level = -180e-12 * rng.lognormal(0, 0.2)
            cells.append(analyze_effect(f"R{trial}-{i}", _sweeps(
                {"baseline": level, "drug": level * (1 + rng.normal(0, 0.05))}, n=10,
                sd=10e-12, seed=trial * 10 + i), last=10))  # fmt: skip
        (drug,) = paired_across_cells(cells)
        hits += drug.t_p is not None and drug.t_p < 0.05
    assert 3 <= hits <= 20  # 10 expected


def test_the_baseline_row_has_no_ratio_ci_it_is_100_by_definition() -> None:
    result = analyze_effect("R1", _sweeps(LEVELS), last=10)
    base = result.conditions[0]
    assert base.pct_of_baseline == pytest.approx(100.0) and base.pct_ci_low is None
