"""Protocol files: the shipped seed assay, its plan, and one-line errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from acquisition.protocols import (
    AnalyzeStep,
    CountStep,
    HarvestStep,
    IncubateStep,
    PromptStep,
    ProtocolFileError,
    check_protocol_command,
    load_protocol,
    plan,
)
from acquisition.quantities import DURATION, format_duration, parse_quantity

SEED = Path(__file__).resolve().parents[1] / "config" / "protocols" / "competition-binding.toml"

GOOD = """\
name = "p"

[[steps]]
type = "incubate"
temperature = "37 C"
duration = "90 min"

[[steps]]
type = "count"
isotope = "H3"
count_time = "60 s"

[[steps]]
type = "analyze"
model = "one-site-fit-ki"
competitor = "progesterone"
constants = { HotNM = 5, HotKdNM = 5.13 }
"""


def test_seed_loads_with_its_settings() -> None:
    p = load_protocol(SEED)
    assert [s.type for s in p.steps] == [
        "prompt", "incubate", "prompt", "harvest", "prompt", "count", "analyze",
    ]  # fmt: skip
    put, inc, load, harvest, move, count, analyze = p.steps
    assert isinstance(put, PromptStep) and put.action == "plate_to_incubator"
    assert isinstance(inc, IncubateStep)
    assert (inc.temperature_c, inc.duration_s, inc.tolerance_c, inc.hold_s) == (37, 5400, 0.5, 300)
    assert (inc.on_excursion, inc.grace_s, inc.shaking_rpm) == ("pause", 120, 300)
    assert isinstance(load, PromptStep) and load.text == "move the plate to the harvester"
    assert load.action == "plate_to_harvester"
    assert isinstance(harvest, HarvestStep)
    assert (harvest.prewet_s, harvest.washes, harvest.wash_volume_ml, harvest.dry_s) == (
        10, 3, 1.0, 30,
    )  # fmt: skip
    assert isinstance(move, PromptStep) and move.text == "move the filter mat to the counter"
    assert move.action == "mat_to_counter"
    assert isinstance(count, CountStep)
    assert (count.isotope, count.count_time_s, count.precision_pct) == ("H3", 180, 2)
    assert isinstance(analyze, AnalyzeStep)
    assert analyze.model == "one-site-fit-ki" and analyze.competitor == "progesterone"
    assert analyze.constants == {"HotNM": 5.0, "HotKdNM": 5.13}


def test_seed_plan_duration_by_hand() -> None:
    pl = plan(load_protocol(SEED))
    # incubate: (37 - 22 C) / 2 C/min = 7.5 min to temperature + 5 min hold + 90 min
    incubate = 7.5 * 60 + 5 * 60 + 90 * 60
    # harvest: 10 s prewet + 3 washes x 20 s + 30 s dry + 20 s overhead = 2 min
    harvest = 10 + 3 * 20 + 30 + 20
    # count: 96 wells / 12 detectors = 8 positions x (180 s + 2 s)
    count = 8 * (180 + 2)
    assert [s.duration_s for s in pl.steps] == [0, incubate, 0, harvest, 0, count, 0]
    assert pl.total_s == incubate + harvest + count == 7726
    assert pl.prompts == 3


def test_check_prints_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_protocol_command(SEED) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "1. prompt" in out and "2. incubate" in out and "7. analyze" in out
    assert "stabilisation ~12 min 30 s" in out
    assert "8 positions x (3 min + 2 s), 12-detector counter" in out
    assert "expected duration: ~2 h 8 min 46 s" in out
    assert "operator time at 3 prompts (not counted)" in out


def test_quantities_are_strict() -> None:
    assert parse_quantity(DURATION, "1.5 h") == 5400
    assert parse_quantity(DURATION, "30 s") == 30
    assert parse_quantity(DURATION, "90min") == 5400
    for bad in (90, "90", "90 mins", "ninety min", True):
        with pytest.raises(ValueError, match="a duration"):
            parse_quantity(DURATION, bad)
    assert format_duration(6766) == "1 h 52 min 46 s"
    assert format_duration(45) == "45 s"


def _replace(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


BAD = {
    "bad unit": (
        _replace(GOOD, 'duration = "90 min"', 'duration = "90 minutes"'),
        "steps[0].duration",
        "a duration like '90 min'",
    ),
    "bare number": (
        _replace(GOOD, 'duration = "90 min"', "duration = 90"),
        "steps[0].duration",
        "a duration with its unit",
    ),
    "unknown step type": (
        _replace(GOOD, 'type = "count"', 'type = "centrifuge"'),
        "steps[1].type",
        "a step type: one of incubate, harvest, count, prompt, analyze, wait, perfuse, record, "
        "seal_test, break_in, membrane_test, set_holding, compensate, analyze_effect (got "
        "'centrifuge')",
    ),
    "missing type": (
        _replace(GOOD, 'type = "count"\n', ""),
        "steps[1].type",
        "a step type",
    ),
    "missing field": (
        _replace(GOOD, 'temperature = "37 C"\n', ""),
        "steps[0].temperature",
        "a value (this setting is required)",
    ),
    "unknown key": (
        _replace(GOOD, 'isotope = "H3"', 'isotope = "H3"\ncount_tim = "60 s"'),
        "steps[1].count_tim",
        "no such setting",
    ),
    "unknown top-level key": (
        "nmae = 'x'\n" + GOOD,
        "nmae",
        "no such setting",
    ),
    "negative duration": (
        _replace(GOOD, 'count_time = "60 s"', 'count_time = "-60 s"'),
        "steps[1].count_time",
        "a duration greater than 0 and at most 24 h, like '90 min' (got '-60 s')",
    ),
    "analyze before count": (
        GOOD.replace('type = "count"', 'type = "wait"\nduration = "1 min"').replace(
            'isotope = "H3"\ncount_time = "60 s"\n', ""
        ),
        "steps[2]",
        "an analyze step after a count step",
    ),
    "temperature out of range": (
        _replace(GOOD, '"37 C"', '"95 C"'),
        "steps[0].temperature",
        "a temperature at least 4 C and at most 60 C, like '37 C' (got '95 C')",
    ),
    "TOML syntax": (
        _replace(GOOD, 'name = "p"', 'name = "p'),
        "(syntax)",
        "valid TOML",
    ),
    "no steps": (
        'name = "p"\nsteps = []\n',
        "steps",
        "at least one step",
    ),
    "unknown isotope": (
        _replace(GOOD, '"H3"', '"H4"'),
        "steps[1].isotope",
        "one of 'H3', 'C14', 'P32' or 'I125' (got 'H4')",
    ),
    "missing constant": (
        _replace(GOOD, "HotNM = 5, ", ""),
        "steps[2].constants",
        "HotNM, HotKdNM for one-site-fit-ki (missing HotNM)",
    ),
    "unknown constant": (
        _replace(GOOD, "HotNM = 5,", "HotNM = 5, Kd = 1,"),
        "steps[2].constants.Kd",
        "a constant of one-site-fit-ki",
    ),
    "bad volume": (
        GOOD + '\n[[steps]]\ntype = "harvest"\nprewet = "10 s"\nwashes = 3\n'
        'wash_volume = "1 ml"\ndry = "30 s"\n',
        "steps[3].wash_volume",
        "a volume like '1 mL' (units: mL, uL, µL; not 'ml')",
    ),
    "bad shaking": (
        _replace(GOOD, 'duration = "90 min"', 'duration = "90 min"\nshaking = "fast"'),
        "steps[0].shaking",
        "'off' or a shaking speed",
    ),
    "bad precision": (
        _replace(GOOD, 'count_time = "60 s"', 'count_time = "60 s"\nprecision = "0 %"'),
        "steps[1].precision",
        "a percentage greater than 0",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_file_gives_one_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, location, expected = BAD[case]
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    assert check_protocol_command(path) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    prefix = f"assay: {path}: {location}: "
    assert err.startswith(prefix), err
    assert expected in err, err
    with pytest.raises(ProtocolFileError) as info:
        load_protocol(path)
    assert info.value.field == location


def test_good_variant_loads(tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text(GOOD, encoding="utf-8")
    assert check_protocol_command(path) == 0


@pytest.mark.parametrize(
    "content",
    [None, b"\xff\xfe not utf-8", b"", b"steps = 3\nname = 'x'", b"steps = [1, 'a']\nname='x'"],
)
def test_never_raises(content: bytes | None, tmp_path: Path) -> None:
    path = tmp_path / "weird.toml"
    if content is not None:
        path.write_bytes(content)
    assert check_protocol_command(path) == 2
    assert check_protocol_command(tmp_path) == 2  # a directory
