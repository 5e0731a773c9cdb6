"""Request and response bodies (docs/protocol.md). Create and public schemas are separate.

Requests forbid unknown fields, so a typo in a worker or a client is a 422
naming the field instead of data that silently goes missing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from dora_core.contracts.wire import EVENT_KINDS, RunStatus

INT32 = 2**31 - 1
StepInt = Annotated[int, Field(ge=0, le=INT32)]


def _storable(text: str) -> str:
    if "\x00" in text:
        raise ValueError("contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" in JSON): not text a database stores
        raise ValueError(
            "contains a lone UTF-16 surrogate, which is not valid Unicode text"
        ) from None
    return text


# Text stored in a column: PostgreSQL cannot hold NUL characters and no database takes a
# lone surrogate (Python's JSON parser lets "\ud800" through), so both are refused.
Text = Annotated[str, AfterValidator(_storable)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- runs -----------------------------------------------------------------


class RunCreate(_Request):
    """A worker started by hand registers its run (``dora train job.yaml --api URL``)."""

    name: Text | None = Field(None, max_length=200)
    config: dict[str, Any] = Field(description="The job config (same schema as POST /api/jobs)")

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "dora-minilm",
                    "config": {"model": "minilm", "dataset": "rt-snippets", "max_steps": 200},
                }
            ]
        },
    )


class ModuleIn(_Request):
    name: Text = Field(min_length=1, max_length=500)
    layer: int | None = Field(
        None, ge=0, le=100_000, description="Block index; null outside blocks"
    )
    type: Text = Field(min_length=1, max_length=200, description="Module name below its block")
    shape: list[Annotated[int, Field(ge=1, le=INT32)]] = Field(
        min_length=1, max_length=8, description="Weight shape [d_out, d_in]"
    )
    rank: int = Field(ge=1, le=4096, description="r': components at the start")


class RegisterIn(_Request):
    modules: list[ModuleIn] = Field(max_length=100_000)
    total_steps: int | None = Field(None, ge=0, le=INT32)
    init_rank: int | None = Field(None, ge=1, le=4096)
    target_rank: int | None = Field(None, ge=1, le=4096)
    params: dict[str, int] | None = None

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "modules": [
                        {
                            "name": "bert.encoder.layer.0.attention.self.query",
                            "layer": 0,
                            "type": "attention.self.query",
                            "shape": [384, 384],
                            "rank": 12,
                        }
                    ],
                    "total_steps": 1000,
                    "init_rank": 12,
                    "target_rank": 8,
                    "params": {"adapter": 110592, "head": 1538, "total": 22713216},
                }
            ]
        },
    )


class ModulePublic(BaseModel):
    index: int
    name: str
    layer: int | None
    type: str
    shape: list[int]
    rank: int


class BudgetNow(BaseModel):
    step: int
    target: int
    live: int


class Best(BaseModel):
    key: str
    value: float
    step: int


class RunPublic(BaseModel):
    id: int
    name: str
    status: RunStatus
    method: str
    task: str = Field(
        description="The job's task (classification, causal-lm, seq2seq), from its config; "
        "classification for runs whose config predates the field"
    )
    model: str
    dataset: str
    config: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    step: int | None
    total_steps: int | None
    init_rank: int | None
    target_rank: int | None
    num_modules: int
    budget: BudgetNow | None
    metrics: dict[str, float | None] | None
    best: Best | None
    params: dict[str, Any] | None
    error: str | None
    exit_code: int | None
    has_adapter: bool
    queue_position: int | None = Field(
        description="Place in the job queue (1 starts next); null when the run is not "
        "waiting for a worker slot",
    )


class RunCreated(RunPublic):
    """``POST /api/runs``: the run, its writer token (shown this once) and the API instance."""

    token: str = Field(
        description="The run's writer token: register and telemetry calls send it as "
        "`Authorization: Bearer <token>`. Only its hash is stored; it is not shown again."
    )
    instance: str = Field(
        description="This API's instance id: the worker sends it as X-Dora-Instance on "
        "every write, and an API with another id refuses it (409 wrong_instance)"
    )


class WriterToken(BaseModel):
    """``POST /api/runs/{id}/token``: a new writer token for a resumed worker."""

    run_id: int
    token: str
    instance: str


class RunList(BaseModel):
    items: list[RunPublic]
    total: int


# --- telemetry --------------------------------------------------------------


class ScoresRecord(_Request):
    step: StepInt
    values: dict[str, list[float]] = Field(description="module -> r' smoothed scores")
    masks: dict[str, list[int]] = Field(description="module -> r' mask bits (0/1)")


class BudgetRecord(_Request):
    step: StepInt
    target: int = Field(ge=0, le=INT32)
    live: int = Field(ge=0, le=INT32)
    b: float = Field(allow_inf_nan=False)


class ScalarsRecord(_Request):
    step: StepInt
    values: dict[Text, float | None] = Field(
        description="key -> value; NaN/infinity (or null) are stored and returned as null"
    )


class EventRecord(_Request):
    step: StepInt
    kind: Literal[EVENT_KINDS]  # type: ignore[valid-type]
    message: Text = Field("", max_length=100_000)
    data: dict[str, Any] | None = None


class TelemetryBatch(_Request):
    seq: int = Field(ge=0, le=INT32, description="Batch number of this run, from 0")
    scores: list[ScoresRecord] = []
    budget: list[BudgetRecord] = []
    scalars: list[ScalarsRecord] = []
    events: list[EventRecord] = []

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "seq": 17,
                    "scores": [
                        {
                            "step": 120,
                            "values": {"bert.encoder.layer.0.attention.self.query": [0.1, 0.3]},
                            "masks": {"bert.encoder.layer.0.attention.self.query": [1, 0]},
                        }
                    ],
                    "budget": [{"step": 120, "target": 432, "live": 432, "b": 6.0}],
                    "scalars": [{"step": 120, "values": {"loss": 0.41, "lr": 0.0004}}],
                    "events": [{"step": 120, "kind": "prune", "message": "pruned to 432 live"}],
                }
            ]
        },
    )


class IngestAck(BaseModel):
    seq: int
    duplicate: bool
    step: int | None = Field(description="Largest step in the batch (null for an empty one)")


# --- queries ----------------------------------------------------------------


class StepList(BaseModel):
    steps: list[int]


class RankMatrix(BaseModel):
    step: int | None = Field(description="The recorded step shown; null before any scores")
    layers: list[int]
    types: list[str]
    live: list[list[int | None]]
    rank: list[list[int | None]]
    modules: list[list[str | None]]


class ModuleSeries(BaseModel):
    name: str
    type: str
    scores: list[list[float]]
    masks: list[list[int]]


class ScoreSeries(BaseModel):
    steps: list[int]
    modules: list[ModuleSeries]


class BudgetSeries(BaseModel):
    steps: list[int]
    target: list[int]
    live: list[int]
    b: list[float]


class Series(BaseModel):
    steps: list[int]
    values: list[float | None]


class ScalarSeries(BaseModel):
    series: dict[str, Series]


class EventPublic(BaseModel):
    step: int
    kind: str
    message: str
    data: dict[str, Any] | None
    created_at: datetime


class Sample(BaseModel):
    """One generated dev example (texts as the worker clipped them, at most 2000 characters)."""

    prompt: str
    reference: str
    prediction: str


class SampleSet(BaseModel):
    """``GET /api/runs/{id}/samples``: one generating evaluation's samples."""

    step: int | None = Field(description="The step of these samples; null when there are none")
    steps: list[int] = Field(description="Every step that has samples, ascending")
    samples: list[Sample]


# --- jobs, health -------------------------------------------------------------


class JobCreated(BaseModel):
    run_id: int
    run: RunPublic


class LogTail(BaseModel):
    lines: list[str]


class AdapterStored(BaseModel):
    """``PUT /api/runs/{id}/adapter``: what is now the run's adapter."""

    files: list[str] = Field(description="The adapter's files, relative to its folder")
    bytes: int = Field(description="Size of the uploaded zip")


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    version: str
    database: str
    instance: str | None = Field(
        None, description="This database's API instance id (null while it cannot be read)"
    )
