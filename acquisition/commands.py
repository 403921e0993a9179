"""The command topic's request and reply payloads, and their validation.

A request is JSON ``{"schema": "assay.command/1", "verb": ..., "args": {...}}`` published to
``{prefix}/{node}/cmd`` with an MQTT v5 ResponseTopic and CorrelationData. The reply,
published to the ResponseTopic with the same CorrelationData, is
``{"schema": "assay.reply/1", "ok": true, "verb": ..., "result": ...}`` or
``{"ok": false, "error": {"code": ..., "message": ...}}``. Error codes:

- ``too_large``: payload above :data:`MAX_COMMAND_BYTES`
- ``bad_json``: not a JSON object
- ``bad_request``: wrong schema, missing or mistyped field (the message names it)
- ``unknown_verb``: the verb is not one of :data:`VERBS`
- ``not_found``: no such run or instrument
- ``conflict``: the instrument is held by another run, or the run is not in a state for this
- ``unavailable``: the instrument is not connected
- ``internal``: a bug; the daemon logs it and stays up
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from acquisition.errors import CommandError

__all__ = [
    "MAX_COMMAND_BYTES",
    "VERBS",
    "AnalysisSpec",
    "AnswerArgs",
    "CommandReply",
    "CommandRequest",
    "CompetitionModel",
    "PauseArgs",
    "ProtocolRunArgs",
    "RecoverArgs",
    "ReplayArgs",
    "RunRef",
    "RunStartArgs",
    "RunsArgs",
    "SimArgs",
    "parse_command",
]

MAX_COMMAND_BYTES = 64 * 1024
# The analysis models a count run (run.start analysis, a protocol's analyze step) may ask for.
CompetitionModel = Literal[
    "one-site-fit-ki",
    "one-site-fit-logic50",
    "four-param-logistic",
    "two-sites-fit-ki",
    "heterologous-depletion",
]
WELL_PATTERN = r"^[A-H](?:[1-9]|1[0-2])$"


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoArgs(_Args):
    pass


class AnalysisSpec(_Args):
    """Analyse the count once it completes (acquisition/analysis/run_analysis.py)."""

    model: CompetitionModel = "one-site-fit-ki"
    competitor: str = Field(min_length=1, max_length=100)
    constants: dict[str, float] = Field(default_factory=dict, description="HotNM, HotKdNM, ...")
    layout: dict[str, Any] = Field(
        description="competition_layout() arguments, e.g. "
        '{"competitors": {"progesterone": "ABC"}, "blank_rows": "GH"}'
    )
    rate: Literal["ccpm", "cpm"] = "ccpm"
    subtract_blanks: bool = Field(True, description="background = mean of the blank wells")
    efficiency: float | None = Field(None, gt=0, le=1, description="counting efficiency -> DPM")
    specific_activity_ci_per_mmol: float | None = Field(None, gt=0, description="-> fmol")
    protein_mg: float | None = Field(None, gt=0, description="per well (Bradford) -> fmol/mg")
    added_cpm: float | None = Field(
        None, gt=0, description="counted aliquot of the added radioligand -> fraction bound"
    )


class RunStartArgs(_Args):
    protocol: Literal["count-plate"] = "count-plate"
    instrument: str = "counter"
    count_time_s: float = Field(60.0, gt=0, le=86_400, description="per well")
    precision_pct: float | None = Field(
        None, gt=0, le=100, description="stop a well early at this %2-sigma"
    )
    isotope: Literal["H3", "C14", "P32", "I125"] = "H3"
    wells: list[Annotated[str, Field(pattern=WELL_PATTERN)]] | None = Field(
        None, min_length=1, max_length=96, description="default: all 96"
    )
    label: str | None = Field(None, max_length=200)
    analysis: AnalysisSpec | None = None

    @field_validator("wells")
    @classmethod
    def _wells_once(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            dup = sorted({w for w in v if v.count(w) > 1})
            raise ValueError(f"each well once (repeated: {', '.join(dup)})")
        return v


class RunRef(_Args):
    run: str = Field(min_length=1, max_length=100)


_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


class ProtocolRunArgs(_Args):
    """Run a protocol (config/protocols) on a plate (config/plates).

    ``protocol`` names a file in the daemon's ``protocols_dir`` (``competition-binding`` ->
    ``competition-binding.toml``), unless ``protocol_toml`` carries the file's text (the
    terminal sends it when given a path). Likewise ``plate_map`` / ``plate_map_toml``.
    """

    protocol: str = Field(pattern=_NAME)
    protocol_toml: str | None = Field(None, max_length=32_000)
    plate_map: str | None = Field(None, pattern=_NAME)
    plate_map_toml: str | None = Field(None, max_length=32_000)
    plate_id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
    label: str | None = Field(None, max_length=200)


class PauseArgs(RunRef):
    when: Literal["now", "after-step"] = Field(
        "now", description="now: mid-step if the step allows it, else after it"
    )


class AnswerArgs(RunRef):
    prompt: str | None = Field(None, max_length=100, description="the prompt id answered")
    answer: str = Field("done", min_length=1, max_length=200)


class RecoverArgs(RunRef):
    action: Literal["retry", "skip", "abort"]


class RunsArgs(_Args):
    limit: int = Field(20, ge=1, le=500)


class SimArgs(_Args):
    """A virtual-operator operation for the simulated bench's control channel."""

    op: str = Field(pattern=r"^[a-z][a-z_]{0,39}$", description="e.g. place_plate, world")
    args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("args")
    @classmethod
    def _no_op_key(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "op" in v:
            raise ValueError("'op' goes outside args")
        return v


class ReplayArgs(RunRef):
    from_seq: int = Field(1, ge=1)
    to_seq: int | None = Field(None, ge=1)


VERB_ARGS: dict[str, type[_Args]] = {
    "status": NoArgs,
    "instruments": NoArgs,
    "runs": RunsArgs,
    "run.get": RunRef,
    "run.start": RunStartArgs,  # or ProtocolRunArgs: see parse_command
    "run.abort": RunRef,
    "run.pause": PauseArgs,
    "run.resume": RunRef,
    "run.answer": AnswerArgs,
    "run.recover": RecoverArgs,
    "results": RunRef,
    "replay": ReplayArgs,
    "sim": SimArgs,
}
VERBS = tuple(VERB_ARGS)


class CommandRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_: Literal["assay.command/1"] = Field("assay.command/1", alias="schema")
    verb: str = Field(description=f"one of {', '.join(VERBS)}")
    args: dict[str, Any] = Field(default_factory=dict)


class ReplyError(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    code: str
    message: str


class CommandReply(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_: Literal["assay.reply/1"] = Field("assay.reply/1", alias="schema")
    ok: bool
    verb: str | None = None
    result: Any = None
    error: ReplyError | None = None

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


_request_adapter = TypeAdapter(CommandRequest)


def parse_command(payload: bytes) -> tuple[str, _Args]:
    """Validate a raw command payload; raise CommandError naming what is wrong."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError(
            "too_large", f"command of {len(payload)} bytes exceeds {MAX_COMMAND_BYTES} bytes"
        )
    try:
        raw = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CommandError("bad_json", f"payload is not JSON: {exc}") from exc
    except RecursionError as exc:
        raise CommandError("bad_json", "payload nests too deeply") from exc
    if not isinstance(raw, dict):
        raise CommandError("bad_json", "payload must be a JSON object")
    try:
        request = _request_adapter.validate_python(raw)
    except ValidationError as exc:
        raise CommandError("bad_request", _describe(exc)) from exc
    args_model = VERB_ARGS.get(request.verb)
    if args_model is None:
        raise CommandError(
            "unknown_verb",
            f"unknown verb '{request.verb[:50]}'; expected one of {', '.join(VERBS)}",
        )
    if request.verb == "run.start" and request.args.get("protocol", "count-plate") != "count-plate":
        args_model = ProtocolRunArgs
    try:
        return request.verb, args_model.model_validate(request.args)
    except ValidationError as exc:
        raise CommandError("bad_request", _describe(exc, prefix="args")) from exc


def _describe(exc: ValidationError, prefix: str = "") -> str:
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in (prefix, *err.get("loc", ())) if p != "")
    msg = str(err.get("msg", "invalid"))
    if err.get("type") == "extra_forbidden":
        msg = "unexpected field"
    return f"{loc or '(payload)'}: {msg}"
