"""Reading the offline-analysis CSV: columns ``x``, ``y`` and, for global fits, ``dataset``.

One row per replicate point (Prism fits replicates as individual points). ``x`` is log10
molar competitor concentration, or the radioligand concentration in nM for saturation
models. Errors name the file, the line and the column.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from acquisition.errors import AnalysisError

__all__ = ["XYData", "read_xy_csv"]


@dataclass(frozen=True)
class XYData:
    x: list[float]
    y: list[float]
    dataset: list[str] | None  # per row, when the file has a dataset column


def read_xy_csv(path: Path, *, datasets: tuple[str, ...] = ()) -> XYData:
    """Read ``path``; ``datasets`` are the labels a global model expects (else no column)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise AnalysisError(f"{path}: cannot read ({exc.strerror})") from exc
    reader = csv.DictReader(text.splitlines())
    columns = [c.strip().lower() for c in reader.fieldnames or []]
    for needed in ("x", "y", *(("dataset",) if datasets else ())):
        if needed not in columns:
            raise AnalysisError(f"{path}: line 1: no '{needed}' column (columns: {columns})")
    xs: list[float] = []
    ys: list[float] = []
    labels: list[str] = []
    for lineno, raw in enumerate(reader, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items()}
        if not any(row.values()):
            continue  # blank line
        xs.append(_number(path, lineno, "x", row.get("x", "")))
        ys.append(_number(path, lineno, "y", row.get("y", "")))
        if datasets:
            label = row.get("dataset", "").lower()
            if label not in datasets:
                raise AnalysisError(
                    f"{path}: line {lineno}: dataset: one of {', '.join(datasets)} (got {label!r})"
                )
            labels.append(label)
    if not xs:
        raise AnalysisError(f"{path}: no data rows")
    return XYData(xs, ys, labels if datasets else None)


def _number(path: Path, lineno: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise AnalysisError(f"{path}: line {lineno}: {column}: a number (got {text!r})") from None
    if not math.isfinite(value):
        raise AnalysisError(f"{path}: line {lineno}: {column}: a finite number (got {text!r})")
    return value
