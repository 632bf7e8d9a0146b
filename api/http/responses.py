"""Response schemas: the shapes api/http/serializers.py returns, for the OpenAPI document.

The OpenAPI test checks real responses against these (schemathesis' response conformance),
so a serializer that changes shape without them fails the suite.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from api.http.schemas import ModelFormat, Status, SummaryMetric, Task


class Dataset(BaseModel):
    id: str
    name: str
    builtin: bool
    task: Task
    status: Literal["processing", "ready", "invalid"]
    error: str | None
    preprocess: dict[str, Any] | None = Field(description="the declared resize and center_crop, echoed")
    num_samples: int | None = Field(description="null while processing")
    channels: int | None
    height: int | None
    width: int | None
    num_classes: int | None
    classes: list[str] | None = Field(description="class names in label order, when known")
    sha256: str
    created_at: str


class InputSpecOut(BaseModel):
    channels: int
    height: int
    width: int
    mean: list[float]
    std: list[float]


class Model(BaseModel):
    id: str
    name: str
    version: int
    format: ModelFormat
    task: Task
    architecture: str | None
    architecture_options: dict[str, Any]
    sha256: str
    status: str
    error: str | None
    num_parameters: int | None
    num_outputs: int | None
    input: InputSpecOut
    # The runtime chosen at validation: backend, batch_size, each candidate's agreement and timing.
    runtime: dict[str, Any] | None
    created_at: str


class Progress(BaseModel):
    done: int
    total: int


class EvaluationError(BaseModel):
    type: str
    detail: str | None


class Summary(BaseModel):
    clean_accuracy: float
    # null for an early_exit evaluation, which measures the worst case only (see `note`).
    mean_accuracy: float | None
    worst_case_accuracy: float
    consistency: float | None
    flip_rate: float | None
    num_samples: int
    num_shifts: int
    note: str | None = None


class Agreement(BaseModel):
    rows: int | None
    argmax_equal: int | None
    max_abs_diff: float | None
    tolerance: float | None


class RealDataCheck(BaseModel):
    chunks: int = Field(description="sweep chunks whose real images were checked")
    rows: int = Field(description="samples checked: each chunk's first 256 (at most), unshifted")
    argmax_equal: int
    max_abs_diff: float | None = Field(description="of the chunk nearest to (or furthest past) its tolerance")
    tolerance: float | None
    fell_back_chunks: int = Field(description="chunks that ran on torch eager because the chosen runtime disagreed")
    near_tie_rows: int = Field(0, description="views whose two best logits were within twice the agreement "
                                              "tolerance on the chosen runtime, forwarded again on torch eager")


class EvaluationRuntime(BaseModel):
    backend: str
    batch_size: int
    forced: bool
    agreement: Agreement | None = Field(description="the validation batch's figures for this backend")
    real_data_check: RealDataCheck | None = Field(
        default=None, description="present once a sweep on a runtime other than the model's own has finished")
    note: str | None = Field(default=None, description="present when some chunks fell back to torch eager")


class Warning(BaseModel):
    code: str
    detail: str


class Evaluation(BaseModel):
    id: str
    status: Status
    model_id: str
    dataset_id: str
    progress: Progress
    attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    error: EvaluationError | None
    request: dict[str, Any]
    sweep_key: str
    tags: list[str]
    summary: Summary | None
    # What the sweep ran on (docs/runtimes.md).
    runtime: EvaluationRuntime | None
    warnings: list[Warning]


class DatasetPage(BaseModel):
    items: list[Dataset]
    next_cursor: str | None


class ModelPage(BaseModel):
    items: list[Model]
    next_cursor: str | None


class EvaluationPage(BaseModel):
    items: list[Evaluation]
    next_cursor: str | None


class ShiftRow(BaseModel):
    dx: float
    dy: float
    angle: float | None = Field(default=None, description="only in sweeps that name angle, scale or brightness")
    scale: float | None = None
    brightness: float | None = None
    accuracy: float
    agreement: float
    correct: int
    n: int


class ShiftRows(BaseModel):
    items: list[ShiftRow]
    next_cursor: str | None


class MarginalRow(BaseModel):
    axis: Literal["dx", "dy", "angle", "scale", "brightness"]
    value: float
    accuracy: float
    agreement: float
    n: int = Field(description="samples times the transforms with this value")


class MarginalRows(BaseModel):
    items: list[MarginalRow]
    next_cursor: str | None


class ClassRow(BaseModel):
    label: int
    name: str | None = Field(description="the class's name (an image folder's sub-folder, an NPZ's class_names)")
    n: int
    clean_accuracy: float
    mean_accuracy: float
    worst_case_accuracy: float


class ClassRows(BaseModel):
    items: list[ClassRow]
    next_cursor: str | None


class WorstTransform(BaseModel):
    """The transform of the grid least confident in the true label, by axis; its keys are the example view's query."""

    dx: float
    dy: float
    angle: float | None = Field(default=None, description="present when the sweep goes beyond translation "
                                "(as angle, scale and brightness are in its rows)")
    scale: float | None = Field(default=None, description="present with angle")
    brightness: float | None = Field(default=None, description="present with angle")


class ExampleRow(BaseModel):
    index: int
    file: str | None = Field(description="the sample's path in its image folder (or an NPZ's files)")
    label: int
    class_name: str | None
    clean_prediction: int
    worst_prediction: int  # the prediction at worst_transform
    worst_shift: tuple[float, float] = Field(description="worst_transform's translation [dx, dy]")
    worst_transform: WorstTransform
    worst_probability: float | None  # the true label's probability there (null if stored before it was kept)
    flips: int


class ExampleRows(BaseModel):
    items: list[ExampleRow]
    next_cursor: str | None


class ArchitectureOption(BaseModel):
    name: str
    type: str
    default: Any
    description: str


class Architecture(BaseModel):
    name: str
    description: str
    min_input_size: int
    options: list[ArchitectureOption]


class Architectures(BaseModel):
    items: list[Architecture]


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]


class LayerShift(BaseModel):
    dx: float
    dy: float
    equivariance_error: float | None
    invariance_error: float | None


class Layer(BaseModel):
    name: str
    kind: str
    shape: list[int]
    factor: int | None
    shifts: list[LayerShift]
    mean_equivariance_error: float | None
    mean_invariance_error: float | None


class LayerProfile(BaseModel):
    items: list[Layer]
    next_cursor: str | None


class LeaderboardEntry(BaseModel):
    rank: int | None  # null when the evaluation has no value for the metric (flip_rate of a list)
    model_id: str
    model_name: str
    model_version: int
    evaluation_id: str
    value: float | None
    summary: Summary
    finished_at: str


class SweepRanking(BaseModel):
    sweep_key: str
    sweep: dict[str, Any]  # shifts, padding, fill, max_samples, seed; angle, scale, brightness when named
    num_samples: int
    num_shifts: int
    latest_finished_at: str
    items: list[LeaderboardEntry]


class Leaderboard(BaseModel):
    dataset_id: str
    dataset_name: str
    metric: SummaryMetric
    higher_is_better: bool
    sweeps: list[SweepRanking]
