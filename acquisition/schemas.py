"""Generate docs/schemas/*.json from the payload models.

``python -m acquisition.schemas`` rewrites them; ``--check`` exits 1 if any is stale (the
test suite runs the check, so a model change without regenerated schemas fails CI).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from acquisition.analysis.drug_effect import EffectResult
from acquisition.analysis.run_analysis import RunResult
from acquisition.commands import CommandReply, CommandRequest
from acquisition.payloads import DaemonStatus, InstrumentState, RunDocument, RunState

__all__ = ["SCHEMA_DIR", "render_schemas"]

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "docs" / "schemas"

_MODELS: dict[str, Any] = {
    "assay.status-1.json": DaemonStatus,
    "assay.instrument-1.json": InstrumentState,
    "assay.run_state-1.json": RunState,
    "assay.event-1.json": RunDocument,
    "assay.command-1.json": CommandRequest,
    "assay.reply-1.json": CommandReply,
    "assay.result-1.json": RunResult,
    "assay.effect-1.json": EffectResult,
}


def render_schemas() -> dict[str, str]:
    """File name -> JSON Schema text, deterministic."""
    out: dict[str, str] = {}
    for name, model in _MODELS.items():
        schema = TypeAdapter(model).json_schema(by_alias=True, mode="serialization")
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": name,
            **schema,
        }
        out[name] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if a schema is stale")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render_schemas().items():
        path = SCHEMA_DIR / name
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current != text:
            stale.append(name)
            if not args.check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print(f"stale schemas: {', '.join(stale)}; run `python -m acquisition.schemas`")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
