"""Every JSON payload on MQTT, as pydantic models.

Each payload carries ``schema`` (``assay.<name>/<version>``); the JSON Schemas in
docs/schemas are generated from these models by ``python -m acquisition.schemas``.
Run documents (``assay.event/1``) carry the run id, a per-run ``seq`` starting at 1 with no
gaps, and a unique ``id``: a consumer detects loss by a gap in ``seq`` and drops duplicates
by ``id``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    SkipValidation,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "DATA_STREAMS",
    "ArtifactDocument",
    "DaemonStatus",
    "DataDocument",
    "DataStream",
    "InstrumentState",
    "InterruptionDocument",
    "Progress",
    "PromptDocument",
    "PromptState",
    "ReadDocument",
    "RunDocument",
    "RunState",
    "StartDocument",
    "StepDocument",
    "StopDocument",
    "SweepReading",
    "TemperatureReading",
    "UnreadableDocument",
    "WellReading",
    "read_document",
    "register_stream",
    "run_document_adapter",
]

RunStateName = Literal[
    "queued",
    "running",
    "paused",
    "awaiting-operator",
    "awaiting-recovery",
    "completed",
    "aborted",
    "failed",
    "interrupted",
]
TERMINAL_STATES: frozenset[str] = frozenset({"completed", "aborted", "failed", "interrupted"})
ExitStatus = Literal["success", "abort", "fail", "interrupted"]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DaemonStatus(_Payload):
    """Retained on ``{prefix}/{node}/status``; the Last Will sets ``offline``."""

    schema_: Literal["assay.status/1"] = Field("assay.status/1", alias="schema")
    node: str
    state: Literal["online", "offline"]
    version: str
    pid: int | None = None
    started_at: datetime | None = None
    ts: datetime
    reason: str | None = Field(None, description="why offline (shutdown, lost connection)")
    instance: str | None = Field(
        None, description="id of this daemon process, new at every start; "
        "a status of the node with another instance id is another daemon"
    )  # fmt: skip
    host: str | None = Field(None, description="host name of the PC the daemon runs on")
    boot_id: str | None = Field(
        None, description="that PC's boot id (Linux): another boot id means it rebooted since"
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class InstrumentState(_Payload):
    """Retained on ``{prefix}/{node}/instruments/{id}``."""

    schema_: Literal["assay.instrument/1"] = Field("assay.instrument/1", alias="schema")
    node: str
    id: str
    kind: str
    address: str
    connected: bool
    state: Literal["connecting", "idle", "busy", "fault", "disconnected"]
    fault: str | None = None
    identity: dict[str, str | int] | None = None
    readings: dict[str, float | int | str | bool | None] = Field(default_factory=dict)
    run: str | None = Field(None, description="the run holding this instrument, if any")
    ts: datetime

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Progress(_Payload):
    done: int = Field(ge=0)
    total: int = Field(ge=0)
    unit: str = "wells"
    eta_s: float | None = Field(None, ge=0, description="seconds until the step ends")


class PromptState(_Payload):
    """What the run is waiting for from a person (in ``awaiting-operator`` and
    ``awaiting-recovery``). Answer with ``run.answer`` / ``run.recover``."""

    id: str = Field(description="answer this prompt id (run.answer's prompt)")
    kind: Literal["operator", "recovery"]
    text: str
    options: list[str] = Field(description="the answers accepted")
    action: str | None = Field(None, description="the physical action asked, e.g. mat_to_counter")


class RunState(_Payload):
    """Retained on ``{prefix}/{node}/runs/{run}/state``."""

    schema_: Literal["assay.run_state/1"] = Field("assay.run_state/1", alias="schema")
    node: str
    run: str
    protocol: str
    state: RunStateName
    step: str | None = None
    progress: Progress | None = None
    last_seq: int = Field(0, ge=0, description="seq of the newest run document")
    latest: dict[str, Any] | None = Field(None, description="newest reading, e.g. a well")
    message: str | None = None
    step_index: int | None = Field(None, ge=1, description="1-based number of the current step")
    steps_total: int | None = Field(None, ge=1)
    prompt: PromptState | None = None
    created_at: datetime
    updated_at: datetime

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class WellReading(_Payload):
    """One counted well, as the counter reported it."""

    index: int = Field(ge=0, description="completion order within the count")
    well: str
    plate_id: str | None = None
    detector: int = Field(ge=1)
    counts: int = Field(ge=0)
    count_time_s: float = Field(ge=0)
    cpm: float
    ccpm: float
    sigma2_pct: float | None = Field(None, description="counting error, %2-sigma = 200/sqrt(N)")
    sqp: float | None = Field(None, description="quench parameter")
    flags: list[str] = Field(default_factory=list)
    counted_at: datetime


class TemperatureReading(_Payload):
    """One incubator sample during an incubation (stream ``temperature``)."""

    step_index: int = Field(ge=1)
    elapsed_s: float = Field(ge=0, description="incubation timer, run-clock seconds")
    temperature_c: float
    setpoint_c: float
    in_tolerance: bool
    sampled_at: datetime


class _DocumentBase(_Payload):
    schema_: Literal["assay.event/1"] = Field("assay.event/1", alias="schema")
    id: str = Field(description="unique id; a duplicate delivery carries the same id")
    run: str
    node: str
    seq: int = Field(ge=1, description="per-run sequence, 1, 2, 3 ... with no gaps")
    ts: datetime

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class StartDocument(_DocumentBase):
    kind: Literal["start"] = "start"
    protocol: dict[str, Any]
    plate: dict[str, Any] | None = Field(
        None, description="the run's plate: plate_id (null: the one in the counter, as its "
        "readings say), format, source, map; absent for a run with no plate (a cell)"
    )
    instruments: dict[str, Any]
    config: dict[str, Any]
    simulated: bool


class StepDocument(_DocumentBase):
    kind: Literal["step"] = "step"
    step: str
    phase: Literal["started", "finished", "resumed", "paused", "skipped"]
    detail: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class DataStream:
    """A kind of reading a run records as ``data`` documents (``stream`` names it)."""

    name: str
    reading: type[BaseModel]
    description: str


DATA_STREAMS: dict[str, DataStream] = {}
_STREAM_NAME = r"^[a-z][a-z0-9_-]{0,31}$"


def register_stream(stream: DataStream) -> DataStream:
    """Add a data stream (a step type's module registers the readings it records)."""
    if not re.match(_STREAM_NAME, stream.name):
        raise ValueError(f"stream name {stream.name!r}: lower-case letters, digits, '-', '_'")
    DATA_STREAMS[stream.name] = stream
    return stream


class SweepReading(_Payload):
    """One recorded sweep's summary (stream ``sweep``); its samples are in the run's spool
    and NWB file, never in a document. Currents in A, resistances in ohm, Cm in F."""

    sweep: int = Field(ge=1, description="1-based, in the run")
    step_index: int = Field(ge=1)
    started_at: datetime
    t_s: float | None = Field(None, description="seconds since the run started, on the run's "
                              "clock (a simulated bench's is faster than the wall)")  # fmt: skip
    sample_rate_hz: float = Field(gt=0)
    samples: int = Field(ge=0, description="per channel")
    stimulus: str = Field(max_length=200)
    solution: str | None = Field(None, max_length=200, description="what the bath held")
    condition: str | None = Field(
        None, max_length=200,
        description="what was applied: the record step's condition (baseline, a drug, washout)",
    )
    holding_a: float | None = Field(None, description="the current at the holding potential "
                                    "(the leak, in whole cell)")  # fmt: skip
    peak_a: float | None = None
    steady_a: float | None = None
    ra_ohm: float | None = None
    rm_ohm: float | None = Field(None, description="the membrane and the seal in parallel")
    cm_f: float | None = None
    input_ohm: float | None = Field(None, description="Ra + Rm from a step: a seal that gives "
                                    "way shows as its fall")  # fmt: skip
    inap_a: float | None = Field(None, description="on a ramp: the persistent current, leak "
                                 "subtracted, at its most inward")  # fmt: skip
    inap_v: float | None = Field(None, description="the potential where inap_a is")
    qc: list[str] = Field(default_factory=list, description="why it failed QC, if it did")
    trace: list[float] = Field(
        default_factory=list, max_length=1000, description="the current decimated, A"
    )


register_stream(DataStream("well", WellReading, "one counted well"))
register_stream(DataStream("temperature", TemperatureReading, "one incubator sample"))
register_stream(DataStream("sweep", SweepReading, "one recorded sweep's summary"))


class DataDocument(_DocumentBase):
    """One reading. ``reading`` is validated by the model its stream registered (a plug-in's
    stream too: it is then an instance of that model); a stream this version does not know
    (a newer daemon's, a plug-in not loaded) is kept as the JSON object it is, never
    refused: an old run's documents always read back. The JSON Schema shows the shipped
    streams' readings."""

    kind: Literal["data"] = "data"
    stream: str = Field("well", pattern=_STREAM_NAME)
    # Validated by _reading_of_its_stream (the registry, not this union, decides); serialised
    # as whatever model it is.
    reading: Annotated[
        SerializeAsAny[WellReading | TemperatureReading | SweepReading | dict[str, Any]],
        SkipValidation,
    ]

    @model_validator(mode="before")
    @classmethod
    def _reading_of_its_stream(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        known = DATA_STREAMS.get(str(data.get("stream", "well")))
        reading = data.get("reading")
        if known is None:
            if not isinstance(reading, Mapping):
                raise ValueError("reading: a JSON object")
            return {**data, "reading": dict(reading)}
        if isinstance(reading, known.reading):
            return data
        try:
            return {**data, "reading": known.reading.model_validate(reading)}
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in ("reading", *err.get("loc", ())))
            raise ValueError(f"{where}: {err.get('msg', 'invalid')}") from None


class ArtifactDocument(_DocumentBase):
    """A file the run produced (an NWB file, a plot): bulk data lives in files, the journal
    and MQTT carry this reference and the file's summary."""

    kind: Literal["artifact"] = "artifact"
    path: str = Field(
        min_length=1, max_length=500,
        description="relative to the daemon's data directory (journal.data_dir); no '..'",
    )
    media_type: str = Field(pattern=r"^[a-z]+/[A-Za-z0-9.+_-]+$", examples=["application/x-nwb"])
    size_bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    holds: str = Field(min_length=1, max_length=500, description="what the file holds")
    step_index: int | None = Field(None, ge=1)

    @field_validator("path")
    @classmethod
    def _inside_the_data_directory(cls, v: str) -> str:
        parts = v.split("/")
        if v.startswith("/") or "\\" in v or ".." in parts or "" in parts:
            raise ValueError(f"a relative path inside the data directory, like "
                             f"'runs/RUN/sweeps.nwb' (got {v!r})")  # fmt: skip
        return v


class InterruptionDocument(_DocumentBase):
    kind: Literal["interruption"] = "interruption"
    reason: str
    detail: dict[str, Any] = Field(default_factory=dict)


class PromptDocument(_DocumentBase):
    """The run asked a person something, or got the answer."""

    kind: Literal["prompt"] = "prompt"
    prompt_id: str
    phase: Literal["asked", "answered", "timed-out", "withdrawn"]
    prompt_kind: Literal["operator", "recovery"] = "operator"
    text: str
    options: list[str] = Field(default_factory=list)
    answer: str | None = None
    by: str | None = Field(None, description="who answered: 'terminal', 'virtual-operator'")
    note: str | None = Field(
        None, description="what the one who answered did (the virtual operator's moves)"
    )


class StopDocument(_DocumentBase):
    kind: Literal["stop"] = "stop"
    exit_status: ExitStatus
    reason: str
    counts: dict[str, int] = Field(default_factory=dict, description="documents per stream")


RunDocument = Annotated[
    StartDocument
    | StepDocument
    | DataDocument
    | InterruptionDocument
    | PromptDocument
    | ArtifactDocument
    | StopDocument,
    Field(discriminator="kind"),
]
run_document_adapter: TypeAdapter[RunDocument] = TypeAdapter(RunDocument)


@dataclass(frozen=True)
class UnreadableDocument:
    """A stored document this version cannot read as its model (a newer daemon's, or one
    damaged): kept as it was, with why, so a reader decides what it means (the recovery
    leaves an unreadable reading out, and stops at an unreadable step)."""

    raw: Mapping[str, Any]
    error: str

    @property
    def kind(self) -> str:
        return str(self.raw.get("kind", "?"))

    @property
    def seq(self) -> object:
        return self.raw.get("seq")


ReadDocument = RunDocument | UnreadableDocument


def read_document(stored: bytes | str | Mapping[str, Any]) -> ReadDocument:
    """A run document as its typed model (a data document's reading as its stream's model;
    a stream this version does not know stays a dict), or :class:`UnreadableDocument`."""
    try:
        raw = json.loads(stored) if isinstance(stored, bytes | str) else stored
    except (ValueError, UnicodeDecodeError) as exc:
        return UnreadableDocument({}, f"not JSON: {exc}")
    if not isinstance(raw, Mapping):
        return UnreadableDocument({}, "not a JSON object")
    try:
        return run_document_adapter.validate_python(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        return UnreadableDocument(raw, f"{where}: {err.get('msg', 'invalid')}")
