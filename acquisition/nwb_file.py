"""A patch-clamp run's NWB file, written from its sweep spool with pynwb's icephys tables.

Each spooled sweep (:mod:`acquisition.spool`) becomes a VoltageClampSeries (the response,
in A) with its VoltageClampStimulusSeries (the command, in V), one row of the
intracellular recordings table; the hierarchy above it is
simultaneous (one electrode: one recording per row) -> sequential (consecutive sweeps of one
stimulus in one condition) -> repetitions -> experimental conditions (a row per condition,
with the solution in the bath). The amplifier's telegraph and compensation settings of
each sweep are kept on its series (``gain``, the compensation fields) and whole, as JSON,
in the series' ``comments``.

A sweep's spool metadata (all optional but ``sample_rate_hz``)::

    sample_rate_hz, starting_time_s (since the session start), stimulus (name),
    stimulus_type ("step", "ramp", ...), condition ("baseline", "DHEA-S 10 uM", ...),
    solution (what the bath held), holding_v, telegraph {...}, compensation {...},
    qc [...] (why the sweep failed QC: in its description and comments)

and its channels: ``im`` (the current, unit A) and ``command`` (unit V), int16 with their
scale. The file is written to a temporary name and moved into place once complete, so a
crash while writing leaves the previous file (or none), never a half-written one.

pynwb is imported inside :func:`write_nwb`: it takes about a second to import, which the
daemon and the terminal should not pay unless they write one. Blocking: call it on a
worker thread.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from acquisition.spool import SpooledSweep

__all__ = ["NwbRun", "NwbWritten", "write_nwb"]

RESPONSE, COMMAND = "im", "command"


@dataclass(frozen=True)
class NwbRun:
    """What the file says of the session (the run)."""

    run: str
    started_at: datetime  # timezone-aware
    description: str
    device: str = "MultiClamp 700B"
    device_description: str = "patch-clamp amplifier"
    electrode_description: str = "whole-cell patch pipette"
    cell_id: str | None = None
    lab: str | None = None
    experimenter: Sequence[str] = ()
    experiment_description: str | None = None
    keywords: Sequence[str] = ("patch clamp", "whole-cell", "voltage clamp")
    subject: Mapping[str, str] | None = None
    """pynwb Subject fields (subject_id, species, sex, age as ISO 8601 like "P21D",
    description); NWB's best practice, and nwbinspector's, want one in every file."""


@dataclass(frozen=True)
class NwbWritten:
    path: Path
    sweeps: int
    conditions: list[str]


def _compensation(meta: Mapping[str, Any]) -> dict[str, float]:
    """The VoltageClampSeries compensation fields the sweep's metadata gives."""
    comp = meta.get("compensation") or {}
    fields = {
        "capacitance_fast": ("capacitance_fast_f",),
        "capacitance_slow": ("capacitance_slow_f",),
        "resistance_comp_bandwidth": ("rs_bandwidth_hz",),
        "resistance_comp_correction": ("rs_correction_pct",),
        "resistance_comp_prediction": ("rs_prediction_pct",),
        "whole_cell_capacitance_comp": ("whole_cell_cm_f",),
        "whole_cell_series_resistance_comp": ("whole_cell_rs_ohm",),
    }
    out: dict[str, float] = {}
    for field, keys in fields.items():
        for key in keys:
            if isinstance(comp.get(key), int | float):
                out[field] = float(comp[key])
    return out


def _described(meta: Mapping[str, Any]) -> str:
    """The response's description: condition and stimulus, and why it failed QC if it did
    (a flagged sweep is kept and says so, never dropped)."""
    text = f"{meta.get('condition', '')}: {meta.get('stimulus', '')}".strip()
    qc = list(meta.get("qc") or [])
    return f"{text} [QC failed: {'; '.join(map(str, qc))}]" if qc else text


def _groups(sweeps: Sequence[SpooledSweep]) -> list[tuple[str, str, list[int]]]:
    """Consecutive sweeps of one condition and stimulus type: (condition, type, positions)."""
    out: list[tuple[str, str, list[int]]] = []
    for i, sweep in enumerate(sweeps):
        key = (str(sweep.meta.get("condition", "")), str(sweep.meta.get("stimulus_type", "")))
        if out and (out[-1][0], out[-1][1]) == key:
            out[-1][2].append(i)
        else:
            out.append((key[0], key[1], [i]))
    return out


def write_nwb(path: Path, run: NwbRun, sweeps: Sequence[SpooledSweep]) -> NwbWritten:
    """Write the run's NWB file at ``path`` (atomically) from its spooled sweeps, in sweep
    order. ValueError for a sweep without its ``im`` or ``command`` channel or its rate."""
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.file import Subject
    from pynwb.icephys import VoltageClampSeries, VoltageClampStimulusSeries

    ordered = sorted(sweeps, key=lambda s: s.index)
    for s in ordered:
        missing = [c for c in (RESPONSE, COMMAND) if c not in s.channels]
        if missing or not isinstance(s.meta.get("sample_rate_hz"), int | float):
            what = ", ".join(missing) or "the rate"
            raise ValueError(f"sweep {s.index}: needs channels im and command and "
                             f"sample_rate_hz (missing {what})")  # fmt: skip
    nwb = NWBFile(
        session_description=run.description, identifier=f"assay-run-{run.run}",
        session_start_time=run.started_at, session_id=run.run, lab=run.lab,
        experimenter=list(run.experimenter) or None,
        experiment_description=run.experiment_description, keywords=list(run.keywords) or None,
        subject=Subject(**run.subject) if run.subject else None,
    )  # fmt: skip
    device = nwb.create_device(name=run.device, description=run.device_description)
    electrode = nwb.create_icephys_electrode(
        name="electrode_0", device=device, description=run.electrode_description,
        cell_id=run.cell_id,
    )  # fmt: skip
    rows: list[int] = []
    for s in ordered:
        rate = float(s.meta["sample_rate_hz"])
        start = float(s.meta.get("starting_time_s", 0.0))
        telegraph = dict(s.meta.get("telegraph") or {})
        gain = float(telegraph.get("gain_v_per_a", 1.0)) or 1.0
        common: dict[str, Any] = {"rate": rate, "starting_time": start, "electrode": electrode,
                                  "sweep_number": np.uint32(s.index)}  # fmt: skip
        stim = VoltageClampStimulusSeries(
            name=f"stimulus_{s.index:05d}", data=s.channels[COMMAND],
            conversion=s.scales.get(COMMAND, 1.0), gain=1.0,
            description=str(s.meta.get("stimulus", "command")), **common,
        )  # fmt: skip
        resp = VoltageClampSeries(
            name=f"response_{s.index:05d}", data=s.channels[RESPONSE],
            conversion=s.scales.get(RESPONSE, 1.0), gain=gain,
            description=_described(s.meta),
            comments=json.dumps({"telegraph": telegraph,
                                 "compensation": s.meta.get("compensation") or {},
                                 "solution": s.meta.get("solution"),
                                 "holding_v": s.meta.get("holding_v"),
                                 "qc": list(s.meta.get("qc") or [])}, sort_keys=True),
            **_compensation(s.meta), **common,
        )  # fmt: skip
        rows.append(nwb.add_intracellular_recording(electrode=electrode, stimulus=stim,
                                                    response=resp))  # fmt: skip
    simultaneous = [nwb.add_icephys_simultaneous_recording(recordings=[r]) for r in rows]
    conditions = nwb.get_icephys_experimental_conditions()
    conditions.add_column(name="condition", description="what was applied (drug, dose)")
    conditions.add_column(name="solution", description="what the bath held")
    by_condition: dict[str, list[int]] = {}
    solution_of: dict[str, str] = {}
    for condition, stimulus_type, positions in _groups(ordered):
        seq = nwb.add_icephys_sequential_recording(
            stimulus_type=stimulus_type or "unspecified",
            simultaneous_recordings=[simultaneous[i] for i in positions],
        )  # fmt: skip
        by_condition.setdefault(condition, []).append(nwb.add_icephys_repetition(
            sequential_recordings=[seq]))  # fmt: skip
        solution_of.setdefault(condition, str(ordered[positions[0]].meta.get("solution", "")))
    for condition, repetitions in by_condition.items():
        conditions.add_row(repetitions=repetitions, condition=condition,
                           solution=solution_of[condition])  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial.nwb")
    with NWBHDF5IO(str(partial), "w") as io:
        io.write(nwb)
    with partial.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(partial, path)
    return NwbWritten(path, len(ordered), list(by_condition))
