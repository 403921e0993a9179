"""Plate map files (config/plates) and the competition generator (acquisition.plate_maps)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from acquisition.analysis.layout import PlateLayout, competition_layout, well_order
from acquisition.plate_maps import (
    PlateMapError,
    load_plate_map,
    plate_map_competition_command,
    plate_map_toml,
)

SHIPPED = Path(__file__).resolve().parents[1] / "config/plates/competition-progesterone.toml"
ARGS = dict(top_m=1e-5, dilution=10 ** 0.5, points=10, replicates=3, competitor="progesterone",
            total_wells=8, nsb_wells=8)
GOOD = """\
[wells."A1:B1"]
role = "total"
[wells."A2:B2"]
role = "nsb"
competitor = "haloperidol"
competitor_m = 1e-5
[wells.A3]
role = "competitor"
competitor = "progesterone"
competitor_m = 1e-9
"""


def same(a: PlateLayout, b: PlateLayout) -> bool:
    a = a.model_copy(update={"wells": tuple(sorted(a.wells, key=lambda w: well_order(w.well)))})
    b = b.model_copy(update={"wells": tuple(sorted(b.wells, key=lambda w: well_order(w.well)))})
    if [(w.well, w.role, w.competitor) for w in a.wells] != \
            [(w.well, w.role, w.competitor) for w in b.wells]:
        return False
    return all((x.log_conc is None and y.log_conc is None) or
               (x.log_conc is not None and y.log_conc is not None and
                math.isclose(x.log_conc, y.log_conc, abs_tol=1e-9))
               for x, y in zip(a.wells, b.wells, strict=True))


def test_generator_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p.toml"
    assert plate_map_competition_command(**ARGS, output=out) == 0
    loaded = load_plate_map(out)
    expected = competition_layout(competitors={"progesterone": "ABC"}, blank_rows="DEFGH",
                                  top_m=1e-5, bottom_m=10 ** -9.5, nsb_competitor="haloperidol",
                                  nsb_m=1e-5)
    assert same(loaded, expected)
    # writing the loaded layout again gives the same file body
    text = out.read_text()
    body = text[text.index("[wells"):]
    assert plate_map_toml(loaded) == body
    # stdout form is the same text
    capsys.readouterr()
    assert plate_map_competition_command(**ARGS, output=None) == 0
    assert capsys.readouterr().out == text


def test_generator_control_well_counts(tmp_path: Path) -> None:
    out = tmp_path / "p.toml"
    args = {**ARGS, "total_wells": 3, "nsb_wells": 2, "competitor": "a, b", "replicates": 2,
            "points": 4, "dilution": 10.0}
    assert plate_map_competition_command(**args, output=out) == 0
    layout = load_plate_map(out)
    assert layout.wells_of("total") == ("A1", "B1", "C1")
    assert layout.wells_of("nsb") == ("A2", "B2")
    assert layout.wells_of("competitor", "b") == tuple(f"{r}{c}" for r in "CD" for c in range(3, 7))
    assert layout.wells_of("blank") == tuple(f"{r}{c}" for r in "EFGH" for c in range(3, 7))
    assert layout.get("C6").log_conc == pytest.approx(-8)  # type: ignore[union-attr]


def test_shipped_file_loads() -> None:
    layout = load_plate_map(SHIPPED)
    assert len(layout.wells) == 96
    assert layout.competitors == ("progesterone", "haloperidol")
    assert layout.wells_of("competitor", "progesterone")[:3] == ("A3", "A4", "A5")
    assert layout.get("A3").log_conc == pytest.approx(-5)  # type: ignore[union-attr]
    assert layout.get("C12").log_conc == pytest.approx(-11)  # type: ignore[union-attr]
    nsb = layout.get("H2")
    assert nsb is not None and nsb.competitor == "haloperidol"
    assert nsb.log_conc == pytest.approx(-5)
    assert len(layout.wells_of("blank")) == 20


@pytest.mark.parametrize(("text", "where"), [
    (GOOD + '[wells."A3:A4"]\nrole = "blank"\n', "wells.A3: defined once"),
    (GOOD + '[wells.A3]\nrole = "blank"\n', "line 11: wells.A3: each well and key defined once"),
    (GOOD.replace('role = "nsb"\ncompetitor = "haloperidol"\ncompetitor_m = 1e-5',
                  'role = "total"'),
     "wells: at least one total-binding and one NSB well (no NSB well)"),
    (GOOD.replace("1e-9", "-1e-9"), "wells.A3.competitor_m: a positive molar"),
    (GOOD.replace("1e-9", "0.0"), "wells.A3.competitor_m: a positive molar"),
    (GOOD + "[wells.I3]\nrole = \"blank\"\n", "wells.I3: a well A1-H12"),
    (GOOD + "[wells.A13]\nrole = \"blank\"\n", "wells.A13: a well A1-H12"),
    (GOOD.replace("competitor_m = 1e-9", "competitor_m = 1e-9\nconc = 2"),
     "wells.A3.conc: no such key"),
    ("title = 'x'\n" + GOOD, "title: no such key"),
    (GOOD.replace('role = "competitor"', 'role = "competitr"'), "wells.A3.role: one of"),
    (GOOD.replace('competitor_m = 1e-9', ''), "wells.A3: a competitor well with"),
    (GOOD + '[wells.A4]\nrole = "total"\ncompetitor = "x"\n', "wells.A4: a total well"),
    (GOOD.replace("[wells.A3]", "[wells.A3"), "line 7: valid TOML"),
    ("[defaults]\nmembrane_ug = -1\n" + GOOD, "defaults.membrane_ug: a number >= 0"),
])
def test_bad_maps_give_one_line_errors(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(PlateMapError) as info:
        load_plate_map(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: "), msg
    assert where in msg, msg


def test_good_map_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    layout = load_plate_map(path)
    assert layout.wells_of("total") == ("A1", "B1")
    with pytest.raises(PlateMapError, match=r"nope.toml: \(file\): an existing TOML file"):
        load_plate_map(tmp_path / "nope.toml")


@pytest.mark.parametrize(("change", "expected"), [
    ({"points": 11}, "points: 2-10"),
    ({"points": 1}, "points: 2-10"),
    ({"replicates": 3, "competitor": "a,b,c"}, "replicates: 3 competitor(s) x 3 replicates"),
    ({"replicates": 9}, "need 9 rows; the plate has 8"),
    ({"replicates": 0}, "replicates: at least 1"),
    ({"total_wells": 9}, "total_wells: 1-8"),
    ({"nsb_wells": 0}, "nsb_wells: 1-8"),
    ({"top_m": -1e-5}, "top_m: a molar concentration"),
    ({"top_m": 2.0}, "top_m: a molar concentration"),
    ({"dilution": 1.0}, "dilution: a factor above 1"),
    ({"dilution": 1e4}, "dilution: 10 points"),
    ({"competitor": " "}, "competitor: one name"),
    ({"competitor": "a,a"}, "competitor: each competitor once"),
])
def test_impossible_requests_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    change: dict[str, object], expected: str) -> None:
    out = tmp_path / "p.toml"
    assert plate_map_competition_command(**{**ARGS, **change}, output=out) == 2  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert not out.exists()


def test_unwritable_output_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert plate_map_competition_command(**ARGS, output=tmp_path / "no/such/dir.toml") == 2
    assert "a writable file" in capsys.readouterr().err
