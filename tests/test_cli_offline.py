"""The terminal's offline commands: protocol check and plate-map generation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSAY = str(Path(sys.executable).parent / "assay")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ASSAY, *args], capture_output=True, text=True, timeout=60, check=False)


def test_protocol_check_prints_the_plan_of_the_shipped_protocol() -> None:
    out = run("protocol", "check", str(ROOT / "config/protocols/competition-binding.toml"))
    assert out.returncode == 0, out.stderr
    assert "expected duration: ~2 h 8 min" in out.stdout


def test_protocol_check_bad_file_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "p.toml"
    bad.write_text('name = "x"\n[[steps]]\ntype = "incubate"\ntemperature = "95 C"\n')
    out = run("protocol", "check", str(bad))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert str(bad) in out.stderr and "steps[0]" in out.stderr


def test_plate_map_generator_round_trips_through_the_loader(tmp_path: Path) -> None:
    from acquisition.plate_maps import load_plate_map

    target = tmp_path / "plate.toml"
    out = run("plate-map", "competition", "--competitor", "progesterone", "--points", "8",
              "--output", str(target))  # fmt: skip
    assert out.returncode == 0, out.stderr
    layout = load_plate_map(target)
    assert len(layout.wells_of("competitor")) == 8 * 3
    impossible = run("plate-map", "competition", "--competitor", "x", "--points", "11")
    assert impossible.returncode == 2 and "points" in impossible.stderr
