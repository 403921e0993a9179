"""`assay analyze` reproduces published and certified answers from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REF = Path(__file__).resolve().parent / "data" / "reference"  # copied from shared/reference-data
ASSAY = str(Path(sys.executable).parent / "assay")


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ASSAY, "analyze", *args], capture_output=True, text=True, timeout=60, check=False
    )


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in [*report["parameters"], *report["derived"]]}


def test_puromycin_to_every_printed_digit(tmp_path: Path) -> None:
    rows = (REF / "puromycin_treated.csv").read_text().splitlines()[1:]
    csv_path = tmp_path / "puromycin.csv"
    csv_path.write_text("x,y\n" + "\n".join(rows) + "\n")
    out = analyze(str(csv_path), "--model", "saturation-specific", "--format", "json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    p = by_name(report)
    # R's nls, "An Introduction to R": Vm 212.6837 (SE 6.947), K 0.06412 (SE 0.008281),
    # residual standard error 10.93 on 10 degrees of freedom.
    assert round(p["Bmax"]["estimate"], 4) == 212.6837
    assert round(p["Bmax"]["se"], 3) == 6.947
    assert round(p["Kd"]["estimate"], 5) == 0.06412
    assert round(p["Kd"]["se"], 6) == 0.008281
    assert round(report["sy_x"], 2) == 10.93 and report["dof"] == 10


def test_prism_golden_one_site_fit_ki_with_a_plot(tmp_path: Path) -> None:
    case = json.loads((REF / "synthetic_prism_equation_golden.json").read_text())["one_site_fit_Ki"]
    csv_path = tmp_path / "ki.csv"
    csv_path.write_text(
        "x,y\n" + "".join(f"{x},{y}\n" for x, y in zip(case["X"], case["Y"], strict=True))
    )
    png = tmp_path / "ki.png"
    consts = [f"--constant={k}={v}" for k, v in case["constants"].items()]
    out = analyze(str(csv_path), "--model", "one-site-fit-ki", *consts, "--format", "json",
                  "--plot", str(png))  # fmt: skip
    assert out.returncode == 0, out.stderr
    p = by_name(json.loads(out.stdout))
    assert p["logKi"]["estimate"] == pytest.approx(case["true"]["logKi"], abs=1e-9)
    assert p["Ki"]["estimate"] == pytest.approx(10 ** case["true"]["logKi"], rel=1e-8)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("text", "args", "words"),
    [
        ("a,b\n1,2\n", [], "no 'x' column"),
        ("x,y\n1,two\n", [], "line 2: y: a number (got 'two')"),
        ("x,y\n-9,100\n-8,50\n-7,10\n-6,5\n", ["--model", "one-site-fit-ki"], "HotNM"),
    ],
)
def test_bad_input_is_one_clear_line(
    tmp_path: Path, text: str, args: list[str], words: str
) -> None:
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text(text)
    out = analyze(str(csv_path), *(args or ["--model", "one-site-fit-logic50"]))
    assert out.returncode == 2, out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], out.stderr
    assert "Traceback" not in out.stderr


GOLDEN = REF / "synthetic_prism_equation_golden.json"


def _golden_csv(tmp_path: Path, case: str) -> tuple[Path, list[str], dict[str, float]]:
    """The golden case as the CSV a user would write, its --constant flags and its truth."""
    c = json.loads(GOLDEN.read_text())[case]
    path = tmp_path / f"{case}.csv"
    if case == "one_site_total_and_nonspecific":
        rows = [f"{x},{y},total" for x, y in zip(c["X_nM"], c["total"], strict=True)]
        rows += [f"{x},{y},nsb" for x, y in zip(c["X_nM"], c["nonspecific"], strict=True)]
        path.write_text("x,y,dataset\n" + "\n".join(rows) + "\n")
        return path, [], c["true"]
    ys = c.get("Y", c.get("Y_cpm"))
    path.write_text("x,y\n" + "".join(f"{x},{y}\n" for x, y in zip(c["X"], ys, strict=True)))
    names = {"Hot_cpm": "Hot", "SpAct_cpm_per_fmol": "SpAct", "Vol_mL": "Vol"}
    flags = [f"--constant={names.get(k, k)}={v}" for k, v in c.get("constants", {}).items()]
    return path, flags, c["true"]


@pytest.mark.parametrize(
    ("case", "model"),
    [
        ("two_sites_fit_Ki", "two-sites-fit-ki"),
        ("one_site_total_and_nonspecific", "saturation-total-nonspecific"),
        ("one_site_heterologous_with_depletion", "heterologous-depletion"),
    ],
)
def test_every_golden_prism_case_from_the_command_line(
    tmp_path: Path, case: str, model: str
) -> None:
    path, flags, truth = _golden_csv(tmp_path, case)
    out = analyze(str(path), "--model", model, *flags, "--format", "json", "--no-profile")
    assert out.returncode == 0, out.stderr
    fitted = by_name(json.loads(out.stdout))
    for name, value in truth.items():
        assert fitted[name]["estimate"] == pytest.approx(value, rel=1e-6, abs=1e-9), name


def test_nist_rat42_certified_values_from_the_command_line() -> None:
    """NIST StRD Rat42, y = b1/(1+exp(b2-b3 x)), is Prism's 4PL with Bottom constrained to 0:
    Top = b1, HillSlope = b3/ln 10, LogIC50 = b2/b3. Certified to 11 digits by NIST."""
    import math

    cert = json.loads((REF / "nist_rat42.json").read_text())
    b1, b2, b3 = cert["certified_values"]
    sd1 = cert["certified_sd"][0]
    out = analyze(str(REF / "nist_rat42.csv"), "--model", "four-param-logistic",
                  "--fix", "Bottom=0", "--format", "json", "--no-profile")  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    p = by_name(report)
    assert p["Top"]["estimate"] == pytest.approx(b1, rel=1e-6)
    assert p["Top"]["se"] == pytest.approx(sd1, rel=1e-6)
    assert p["HillSlope"]["estimate"] == pytest.approx(b3 / math.log(10), rel=1e-6)
    assert p["LogIC50"]["estimate"] == pytest.approx(b2 / b3, rel=1e-6)
    # Certified SD of b3 by the delta method: b3 = ln10 * HillSlope.
    assert p["HillSlope"]["se"] * math.log(10) == pytest.approx(cert["certified_sd"][2], rel=1e-6)
    assert report["ss"] == pytest.approx(cert["residual_sum_of_squares"], rel=1e-6)
    assert report["dof"] == cert["dof"]


@pytest.mark.parametrize(
    "rows",
    [
        ["-7,100", "-7,120", "-7,90", "-7,110", "-7,105", "-7,95"],  # one concentration
        ["-8,1000", "-8,1010", "-8,990", "-6,100", "-6,110", "-6,90"],  # two: no curve shape
        [f"{x},{y}" for x in (-10, -9, -8, -7, -6, -5) for y in (1000, 1003, 997)],  # flat
    ],
)
def test_data_that_determine_no_curve_get_no_numbers(tmp_path: Path, rows: list[str]) -> None:
    path = tmp_path / "degenerate.csv"
    path.write_text("x,y\n" + "\n".join(rows) + "\n")
    out = analyze(str(path), "--model", "one-site-fit-logic50", "--format", "json")
    assert out.returncode != 0
    assert out.stdout == ""  # no estimates printed
    assert "determine" in out.stderr or "ambiguous" in out.stderr, out.stderr


def test_one_site_vs_two_sites_by_the_f_test(tmp_path: Path) -> None:
    path, flags, _ = _golden_csv(tmp_path, "two_sites_fit_Ki")
    noisy = tmp_path / "noisy.csv"
    lines = path.read_text().splitlines()
    rows = []
    for i, row in enumerate(lines[1:]):  # +-1% deterministic scatter: SS is not zero
        x, y = row.split(",")
        rows.append(f"{x},{float(y) * (1 + 0.01 * ((i % 3) - 1))}")
    noisy.write_text("\n".join([lines[0], *rows]) + "\n")
    out = analyze(str(noisy), "--model", "one-site-fit-ki", "--compare", "two-sites-fit-ki",
                  "--constant=HotNM=1", "--constant=HotKdNM=1", *flags, "--format", "json",
                  "--no-profile")  # fmt: skip
    assert out.returncode == 0, out.stderr
    comparison = json.loads(out.stdout)["comparison"]
    assert comparison["preferred"] == "two-sites-fit-ki" and comparison["p"] < 0.001
