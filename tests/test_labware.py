"""labware: plate formats, well names and the well-range grammar, shared by drivers,
simulators, the analysis and the daemon (docs/decisions/0005-labware-once.md)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labware import FORMATS, expand_wells, normalize_well, plate_format, well_order, wells


def test_the_two_formats() -> None:
    assert (len(wells(96)), wells(96)[:3], wells(96)[-1]) == (96, ("A1", "A2", "A3"), "H12")
    assert (len(wells(384)), wells(384)[23:25], wells(384)[-1]) == (384, ("A24", "B1"), "P24")
    with pytest.raises(ValueError, match="96 or 384 wells"):
        plate_format(1536)


@pytest.mark.parametrize(("name", "n", "well"), [
    ("a01", 96, "A1"), (" H12 ", 96, "H12"), ("H13", 96, None), ("I1", 96, None),
    ("A0", 96, None), ("P24", 384, "P24"), ("p024", 384, "P24"), ("Q1", 384, None),
    ("A25", 384, None), ("", 96, None), ("A", 96, None),
])  # fmt: skip
def test_well_names_are_normalised_or_refused(name: str, n: int, well: str | None) -> None:
    assert normalize_well(name, n) == well


def test_ranges_lists_and_rectangles() -> None:
    assert expand_wells("A1") == ("A1",)
    assert expand_wells("A1, B3") == ("A1", "B3")
    assert expand_wells("A1:C2") == ("A1", "A2", "B1", "B2", "C1", "C2")
    assert expand_wells("C2:A1") == expand_wells("A1:C2")  # corners in either order
    assert len(expand_wells("A1:P24", 384)) == 384
    for bad in ("A13", "a1", "A01", "A1:B2:C3", "A1;B1", ""):
        with pytest.raises(ValueError, match="not a well or well range"):
            expand_wells(bad)


@given(st.sampled_from(sorted(FORMATS)), st.data())
def test_every_well_round_trips_and_sorts_in_plate_order(n: int, data: st.DataObject) -> None:
    a, b = sorted(data.draw(st.lists(st.sampled_from(wells(n)), min_size=2, max_size=2,
                                     unique=True)), key=lambda w: well_order(w, n))  # fmt: skip
    assert normalize_well(a.lower(), n) == a and expand_wells(a, n) == (a,)
    assert wells(n).index(a) < wells(n).index(b)
    assert well_order("Z99", n) == n  # unknown names sort last


def test_only_ascii_letters_name_rows() -> None:
    """Case-folding must not let look-alike letters in (the Kelvin sign folds to k)."""
    for name in ("\u212a1", "\u01301", "\u01311"):
        assert normalize_well(name, 384) is None
