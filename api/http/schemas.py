"""Request and query schemas, validated at the edge; the same classes describe the API in OpenAPI."""

from __future__ import annotations

import builtins
import json
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator

from api.http.errors import BadRequest
from core.grid import MAX_SHIFTS
from core.sweep import Padding, per_channel

ModelFormat = Literal["torchscript", "exported", "state_dict", "onnx"]
Task = Literal["classification", "segmentation"]
Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


SCALING = ("pixels are divided by 255 to [0, 1] before (x - mean) / std, so mean and std are on the [0, 1] "
           "scale: divide statistics measured on 0-255 pixels by 255 (ImageNet's are mean [0.485, 0.456, 0.406], "
           "std [0.229, 0.224, 0.225])")
PIXEL_SCALE = ("Pixels are divided by 255 to [0, 1] first, then normalized per channel as (x - mean) / std: "
               "give mean and std on the [0, 1] scale, one value per channel or one for all.")
# Limits on a declared input: the worker feeds the model batches of this size, so an
# input of 64×4096×4096 would ask gigabytes of one forward pass. Rules, hence 422.
MAX_INPUT_CHANNELS = 64
MAX_INPUT_SIDE = 4096
MAX_INPUT_VALUES = 3 * 1024 * 1024  # channels × height × width of one image
# One value per channel at most: a longer list is refused before it is walked.
PerChannel = Annotated[list[float], Field(min_length=1, max_length=MAX_INPUT_CHANNELS)]


class InputSpec(Strict):
    """What the model takes: channels, size, and per-channel normalization on the [0, 1] scale."""

    model_config = ConfigDict(json_schema_extra={"description": PIXEL_SCALE})

    channels: int = Field(ge=1, description=f"at most {MAX_INPUT_CHANNELS}")
    height: int = Field(ge=1, description=f"at most {MAX_INPUT_SIDE}")
    width: int = Field(ge=1, description=f"at most {MAX_INPUT_SIDE}; channels × height × width at most "
                                         f"{MAX_INPUT_VALUES:,}")
    mean: float | PerChannel = Field(default=0.0, description="in [0, 1]; subtracted after pixels are divided by 255")
    std: float | PerChannel = Field(default=1.0, description="in (0, 1]; divides after the mean is subtracted")

    @field_validator("std")
    @classmethod
    def _positive(cls, value: float | list[float]) -> float | list[float]:
        values = value if isinstance(value, list) else [value]
        if any(v <= 0 for v in values):
            raise ValueError("std must be positive")
        return value

    def normalized(self) -> dict[str, Any]:
        """The spec with mean and std as lists of one value or one per channel; ValueError says what to fix."""
        if self.channels > MAX_INPUT_CHANNELS:
            raise ValueError(f"channels is {self.channels}; ShiftScore takes at most {MAX_INPUT_CHANNELS}")
        for side in ("height", "width"):
            if getattr(self, side) > MAX_INPUT_SIDE:
                raise ValueError(f"{side} is {getattr(self, side)}; ShiftScore takes at most {MAX_INPUT_SIDE}")
        values = self.channels * self.height * self.width
        if values > MAX_INPUT_VALUES:
            raise ValueError(
                f"{self.channels}×{self.height}×{self.width} is {values:,} values per image; ShiftScore takes at most "
                f"{MAX_INPUT_VALUES:,} (3×1024×1024); declare the size the model was trained on"
            )
        spec = self.model_dump()
        for key in ("mean", "std"):
            values = spec[key] if isinstance(spec[key], list) else [spec[key]]
            if per_channel(values, self.channels) is None:
                raise ValueError(
                    f"{key} has {len(values)} values but the model declares {self.channels} channel(s); "
                    f"give one value per channel ({self.channels}) or a single value for all")
            spec[key] = [float(v) for v in values]
        # 0-255 statistics are accepted by the arithmetic and silently ruin every result.
        if any(not 0.0 <= v <= 1.0 for v in spec["mean"]):
            raise ValueError(f"mean {spec['mean']} is outside [0, 1]: {SCALING}")
        if any(not 0.0 < v <= 1.0 for v in spec["std"]):
            raise ValueError(f"std {spec['std']} is outside (0, 1]: {SCALING}")
        return spec


class RangeShifts(Strict):
    """Every (dx, dy) with dx = dx_min + k·step ≤ dx_max, and dy likewise."""

    dx: tuple[float, float]
    dy: tuple[float, float]
    step: float = Field(default=1.0, gt=0)


class ListShifts(Strict):
    """An explicit list of distinct (dx, dy) pairs."""

    # `builtins.list`: the field's own name shadows the builtin inside the class body.
    # Capped here too, so an over-long list stops validating at its limit, not at its end.
    list: builtins.list[tuple[float, float]] = Field(min_length=1, max_length=MAX_SHIFTS)


SHIFTS_SHAPES = 'give shifts as {"dx": [min, max], "dy": [min, max], "step": 1} or {"list": [[dx, dy], ...]}'
# Tags of the shifts union: they pick the member from the keys sent, so an error names only the
# fields of the shape the client meant, and `_field_errors` leaves them out of each field's path.
_RANGE, _LIST = "shifts as a range", "shifts as a list"


def _shifts_shape(value: Any) -> str | None:
    if isinstance(value, (RangeShifts, ListShifts)):
        return _LIST if isinstance(value, ListShifts) else _RANGE
    if not isinstance(value, dict):
        return None
    if "list" in value:
        return _LIST
    return _RANGE if {"dx", "dy", "step"} & set(value) else None


Shifts = Annotated[
    Annotated[RangeShifts, Tag(_RANGE)] | Annotated[ListShifts, Tag(_LIST)],
    Discriminator(_shifts_shape, custom_error_type="shifts_shape", custom_error_message=SHIFTS_SHAPES),
]


class AxisRange(Strict):
    """Every value min + k·step ≤ max of one of angle, scale, brightness."""

    range: tuple[float, float]
    step: float = Field(gt=0)


class AxisList(Strict):
    """Explicit distinct values of one of angle, scale, brightness (sorted before the sweep)."""

    list: builtins.list[float] = Field(min_length=1, max_length=MAX_SHIFTS)


TransformAxis = AxisRange | AxisList
AXIS_DOC = ('{"range": [min, max], "step": s} or {"list": [v, ...]}; the grid is the product of every axis named')


class EvaluationCreate(Strict):
    """POST /v1/evaluations."""

    model_id: str = Field(max_length=200, description="a model's id, or its name: the latest ready version")
    dataset_id: str = Field(max_length=200, description="a dataset's id, or its name: the newest of that name")
    shifts: Shifts | None = Field(default=None, description="translations; optional when another axis is named")
    angle: TransformAxis | None = Field(default=None, description="degrees, counter-clockwise; " + AXIS_DOC)
    scale: TransformAxis | None = Field(default=None, description="in (0, 10], above 1 enlarges; " + AXIS_DOC)
    brightness: TransformAxis | None = Field(default=None, description="added to [0, 1] pixels; " + AXIS_DOC)
    padding: Padding = "zeros"
    fill: float = Field(default=0.0, ge=0.0, le=1.0)
    max_samples: int | None = Field(default=None, ge=1)
    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    # true: every convolution, pooling and activation stage; a list: those layers (docs/equivariance.md).
    layers: bool | list[str] | None = None
    webhook_url: str | None = Field(default=None, max_length=2000, pattern=r"^https?://[^\s/]+")
    tags: list[str] = Field(default_factory=list, max_length=20)
    # "auto": the runtime chosen at validation; "torch": the model's own eager runtime (docs/runtimes.md).
    backend: Literal["auto", "torch"] = "auto"
    # Stop each sample at its first wrong shift: exact worst_case_accuracy and clean_accuracy only.
    early_exit: bool = False

    @field_validator("layers")
    @classmethod
    def _layer_names(cls, layers: bool | list[str] | None) -> bool | list[str] | None:
        if isinstance(layers, list) and not 1 <= len(layers) <= 100:
            raise ValueError("name 1 to 100 layers, or pass true for every convolution, pooling and activation")
        if isinstance(layers, list) and any(not name or len(name) > 300 for name in layers):
            raise ValueError("each layer name must be 1 to 300 characters")
        return layers

    @field_validator("tags")
    @classmethod
    def _short_tags(cls, tags: list[str]) -> list[str]:
        if any(not tag or len(tag) > 64 for tag in tags):
            raise ValueError("each tag must be 1 to 64 characters")
        return tags


class ModelUpload(Strict):
    """The form fields of POST /v1/models (besides `file`)."""

    name: str = Field(min_length=1, max_length=200)
    format: ModelFormat
    input: InputSpec = Field(description="JSON: channels, height, width, mean, std. " + PIXEL_SCALE)
    task: Task = "classification"
    architecture: str | None = Field(default=None, max_length=100)
    architecture_options: dict[str, Any] = Field(default_factory=dict)


class DatasetUpload(Strict):
    """The form fields of POST /v1/datasets (besides `file`)."""

    name: str = Field(min_length=1, max_length=200)
    # Any here, checked by core.preprocess, so that every malformed preprocess is the same 422.
    preprocess: Any = Field(
        default=None, json_schema_extra={"type": "object"}, description='image folders: JSON {"resize": R, "center_crop": C or [h, w]}, applied once '
                                  "when the dataset is stored (shorter side to R, then the central window)")


class EvaluationFilter(Strict):
    """Query of GET /v1/evaluations."""

    status: Status | None = None
    model_id: str | None = Field(default=None, description="a model's id, or its name: the latest ready version")
    model_name: str | None = Field(default=None, max_length=200, description="every version of this model name")
    dataset_id: str | None = Field(default=None, description="a dataset's id, or its name")
    sweep_key: str | None = Field(default=None, max_length=64, description="only evaluations of this sweep")
    tag: str | None = None
    limit: int = Field(default=50, ge=1, le=500)
    cursor: str | None = None


class Page(Strict):
    """Query of the other list routes."""

    limit: int = Field(default=50, ge=1, le=500)
    cursor: str | None = None


class NameFilter(Page):
    """Query of GET /v1/models and GET /v1/datasets: `name` keeps only that name's entries."""

    name: str | None = Field(default=None, min_length=1, max_length=200)


# An evaluation's result tables are bounded (at most 10,000 grid shifts), so their default
# page holds a typical grid whole; the cursor takes over beyond it.
RESULT_PAGE = 1000
MAX_RESULT_PAGE = 10_000
CURSOR_DOC = "the 'next_cursor' of the previous page; omit for the first page"


class ResultsPage(Strict):
    """Query of an evaluation's classes and layers: `limit` rows from `cursor` on."""

    limit: int = Field(default=RESULT_PAGE, ge=1, le=MAX_RESULT_PAGE)
    cursor: str | None = Field(default=None, max_length=500, description=CURSOR_DOC)


class ExamplesQuery(Strict):
    """Query of GET /v1/evaluations/{id}/examples: most flips first; `format=csv` is always every kept sample."""

    limit: int = Field(default=20, ge=1, le=MAX_RESULT_PAGE)
    cursor: str | None = Field(default=None, max_length=500, description=CURSOR_DOC)
    format: Literal["json", "csv"] = "json"


class ShiftsQuery(ResultsPage):
    """Query of GET /v1/evaluations/{id}/shifts; `format=csv` is always the whole table."""

    format: Literal["json", "csv"] = "json"


SummaryMetric = Literal["consistency", "clean_accuracy", "mean_accuracy", "worst_case_accuracy", "flip_rate"]


AxisName = Literal["dx", "dy", "angle", "scale", "brightness"]


class HeatmapQuery(Strict):
    """GET /v1/evaluations/{id}/heatmap.png: `both` draws accuracy and agreement side by side.

    `x` and `y` pick the two axes (dx and dy by default); `at_angle`, `at_scale`, `at_brightness`
    keep only the rows with that value, and each cell is the mean over the rows that remain.
    """

    metric: Literal["accuracy", "agreement", "both"] = "accuracy"
    scale: Literal["auto", "full"] = Field(default="auto", description="the colour scale: the data's range or 0-100%")
    x: AxisName = "dx"
    y: AxisName = "dy"
    at_angle: float | None = None
    at_scale: float | None = None
    at_brightness: float | None = None


class CurvesQuery(Strict):
    """GET /v1/evaluations/{id}/curves.png: accuracy and agreement against each axis the sweep named."""


class CompareQuery(Strict):
    """GET /v1/evaluations/{id}/compare.png: this evaluation, `other`, and other minus this."""

    other: str = Field(min_length=1, max_length=64)
    metric: Literal["accuracy", "agreement"] = "accuracy"
    scale: Literal["auto", "full"] = "auto"


class SampleQuery(Strict):
    """GET /v1/datasets/{id}/samples/{index}.png: `scale` enlarges each pixel to a square."""

    scale: int = Field(default=1, ge=1, le=32)


class ExampleViewQuery(Strict):
    """GET /v1/evaluations/{id}/examples/{index}.png: one sample as the model saw it under a transform.

    Each axis of the transform is one query parameter, absent meaning the identity (an
    example's `worst_transform` is such a query). `zoom` only enlarges the picture (hard pixels).
    """

    dx: float = Field(default=0.0, ge=-10_000, le=10_000, allow_inf_nan=False, description="move right by dx pixels")
    dy: float = Field(default=0.0, ge=-10_000, le=10_000, allow_inf_nan=False, description="move down by dy pixels")
    angle: float = Field(default=0.0, ge=-360, le=360, allow_inf_nan=False,
                         description="rotate by degrees, counter-clockwise as displayed, about the centre")
    scale: float = Field(default=1.0, gt=0, le=10, allow_inf_nan=False,
                         description="enlarge the content (below 1: shrink it) about the centre")
    brightness: float = Field(default=0.0, ge=-1, le=1, allow_inf_nan=False,
                              description="add to the [0, 1] pixels, then clamp (after the geometry)")
    zoom: int = Field(default=1, ge=1, le=32, description="draw each pixel as a zoom×zoom square")

    @property
    def transform(self) -> tuple[float, float, float, float, float]:
        return (self.dx, self.dy, self.angle, self.scale, self.brightness)


class LeaderboardQuery(Strict):
    """GET /v1/leaderboard: one ranking per sweep of the dataset, or only the sweep `sweep_key`."""

    dataset_id: str = Field(min_length=1, max_length=200, description="a dataset's id, or its name")
    metric: SummaryMetric = "consistency"
    sweep_key: str | None = Field(default=None, min_length=1, max_length=64)


T = TypeVar("T", bound=BaseModel)


def _field_errors(error: ValidationError) -> list[dict[str, Any]]:
    return [
        {"field": ".".join(str(part) for part in item["loc"] if part not in (_RANGE, _LIST)) or "(body)",
         "message": _message(item)}
        for item in error.errors(include_url=False)
    ]


def _message(item: Any) -> str:
    """pydantic's message, or what to do instead where its own text does not say."""
    path = [part for part in item["loc"] if part not in (_RANGE, _LIST)]
    if path[:1] != ["shifts"]:
        return item["msg"]
    if item["type"] == "extra_forbidden":
        return f"'{path[-1]}' does not belong here; {SHIFTS_SHAPES}, one or the other"
    if item["type"] == "missing" and path[1:] in (["dx"], ["dy"]):
        return f"{path[1]} is missing; {SHIFTS_SHAPES}"
    pair = item["type"] in ("too_long", "too_short", "tuple_type")
    if pair and path[1:] in (["dx"], ["dy"]):
        return f"{path[1]} must be [min, max], two numbers"
    if pair and path[1:2] == ["list"] and len(path) == 3:
        return "each shift must be [dx, dy], two numbers"
    return item["msg"]


def nul_fields(data: Any, where: str = "") -> list[str]:
    """Where `data` holds a NUL character, which PostgreSQL text cannot store."""
    if isinstance(data, str):
        return [where or "(body)"] if "\x00" in data else []
    if isinstance(data, dict):
        return [f for key, value in data.items() for f in nul_fields(value, f"{where}.{key}".lstrip("."))]
    if isinstance(data, (list, tuple)):
        return [f for i, value in enumerate(data) for f in nul_fields(value, f"{where}.{i}".lstrip("."))]
    return []


def reject_nul(data: Any, what: str = "request") -> None:
    """Raise a 400 problem if any string in `data` holds a NUL character."""
    fields = nul_fields(data)
    if fields:
        raise BadRequest(f"the {what} is not valid: {', '.join(fields[:5])} must not contain NUL (\\u0000) characters",
                         errors=[{"field": f, "message": "contains a NUL character"} for f in fields])


def parse(schema: type[T], data: Any, what: str = "request") -> T:
    """Validate `data` against `schema`, or raise a 400 problem listing each bad field."""
    reject_nul(data, what)
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        errors = _field_errors(exc)
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        raise BadRequest(f"the {what} is not valid: {summary}", errors=errors) from None


def json_field(raw: str | None, name: str, default: Any = None) -> Any:
    """Decode a multipart field that carries JSON, or raise a 400 naming the field."""
    if raw is None or raw == "":
        return default
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the form field '{name}' must be JSON: {exc.msg}",
                         errors=[{"field": name, "message": "not valid JSON"}]) from None
