"""The sweep spool: what is appended reads back exactly; what a crash or a bad disk leaves
never raises and never loses a sweep that was complete before it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acquisition.spool import MAGIC, SpooledSweep, SpoolError, SweepSpool, read_spool


def _sweep(index: int, n: int = 50, seed: int = 0) -> SpooledSweep:
    rng = np.random.default_rng(seed + index)
    return SpooledSweep(
        index=index,
        meta={"stimulus": "step -70 -> -10 mV", "telegraph": {"mode": "VC", "gain": 5.0},
              "solution": "control", "sample_rate_hz": 20000.0},
        channels={"im": rng.integers(-32768, 32767, n, dtype=np.int16),
                  "vm": rng.integers(-32768, 32767, n, dtype=np.int16)},
        units={"im": "A", "vm": "V"},
        scales={"im": 1e-12 * 20 / 65536 * 1000, "vm": 20 / 65536},
    )  # fmt: skip


def _same(a: SpooledSweep, b: SpooledSweep) -> bool:
    return (a.index == b.index and dict(a.meta) == dict(b.meta)
            and a.channels.keys() == b.channels.keys()
            and all(np.array_equal(a.channels[k], b.channels[k]) for k in a.channels)
            and dict(a.units) == dict(b.units) and dict(a.scales) == dict(b.scales))  # fmt: skip


def _write(path: Path, sweeps: list[SpooledSweep]) -> list[int]:
    with SweepSpool.open(path) as spool:
        return [spool.append(s) for s in sweeps]


def test_appended_sweeps_read_back_exactly_and_in_order(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "R1" / "sweeps.spool"
    sweeps = [_sweep(i) for i in range(1, 6)]
    _write(path, sweeps)
    back = read_spool(path)
    assert len(back.sweeps) == 5 and all(map(_same, back.sweeps, sweeps))
    assert (back.torn_tail_bytes, back.damaged, back.duplicates) == (0, [], [])
    first = int(sweeps[0].channels["vm"][0])
    assert back.sweeps[0].scaled("vm")[0] == pytest.approx(first * 20 / 65536)


def test_a_sweep_is_recorded_once(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    _write(path, [_sweep(1)])
    with SweepSpool.open(path) as spool, pytest.raises(SpoolError, match="spooled already"):
        spool.append(_sweep(1))


@settings(max_examples=40, deadline=None)
@given(cut=st.integers(min_value=0, max_value=10_000))
def test_a_crash_at_any_byte_keeps_every_complete_sweep_and_appending_goes_on(
    tmp_path_factory: pytest.TempPathFactory, cut: int
) -> None:
    """The daemon dies while sweep 4 is written: sweeps 1-3 are there, sweep 4's bytes are a
    torn tail, and a reopened spool cuts them off and appends sweep 4 again after sweep 3."""
    path = tmp_path_factory.mktemp("spool") / "s.spool"
    offsets = _write(path, [_sweep(i, n=200) for i in range(1, 5)])
    size = path.stat().st_size
    cut_at = offsets[3] + cut % (size - offsets[3])  # somewhere inside sweep 4's record
    path.write_bytes(path.read_bytes()[:cut_at])
    back = read_spool(path)
    assert [s.index for s in back.sweeps] == [1, 2, 3]
    assert back.torn_tail_bytes == cut_at - offsets[3] and back.damaged == []
    with SweepSpool.open(path) as spool:
        assert spool.indices == {1, 2, 3}
        spool.append(_sweep(4, n=200))
    again = read_spool(path)
    assert [s.index for s in again.sweeps] == [1, 2, 3, 4] and again.torn_tail_bytes == 0
    assert _same(again.sweeps[3], _sweep(4, n=200))


@settings(max_examples=60, deadline=None)
@given(where=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_a_flipped_bit_costs_at_most_its_own_sweep(
    tmp_path_factory: pytest.TempPathFactory, where: int, bit: int
) -> None:
    path = tmp_path_factory.mktemp("spool") / "s.spool"
    offsets = _write(path, [_sweep(i) for i in range(1, 6)])
    data = bytearray(path.read_bytes())
    pos = len(MAGIC) + where % (len(data) - len(MAGIC))
    data[pos] ^= 1 << bit
    path.write_bytes(bytes(data))
    back = read_spool(path)  # never raises
    hit = max(i for i, off in enumerate(offsets) if off <= pos) + 1  # the sweep it fell in
    kept = [s.index for s in back.sweeps]
    assert set(kept) >= {1, 2, 3, 4, 5} - {hit}, (hit, kept, back)
    assert all(_same(s, _sweep(s.index)) for s in back.sweeps), "a damaged sweep came back"
    assert back.damaged or back.torn_tail_bytes or hit in kept


def test_garbage_is_skipped_and_a_repeated_index_keeps_its_first_copy(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    _write(path, [_sweep(1)])
    one = path.read_bytes()[len(MAGIC):]
    path.write_bytes(path.read_bytes() + b"not a record at all" + one)
    back = read_spool(path)
    assert [s.index for s in back.sweeps] == [1] and back.duplicates == [1]
    assert back.damaged == [len(MAGIC) + len(one)]


def test_not_a_spool_and_unencodable_metadata_are_clear_errors(tmp_path: Path) -> None:
    other = tmp_path / "x.spool"
    other.write_bytes(b"SQLite format 3\x00")
    with pytest.raises(SpoolError, match="not a sweep spool"):
        read_spool(other)
    bad = SpooledSweep(1, {"when": object()}, {"im": np.zeros(3, np.int16)})
    with SweepSpool.open(tmp_path / "y.spool") as spool, pytest.raises(SpoolError, match="JSON"):
        spool.append(bad)
    assert read_spool(tmp_path / "y.spool").sweeps == []
