"""Request schemas, validated at the edge; the same classes describe the API in OpenAPI."""

from __future__ import annotations

import builtins
import json
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from api.errors import BadRequest
from worker.engine.grid import MAX_SHIFTS

Padding = Literal["zeros", "circular", "reflect", "edge", "crop"]
ModelFormat = Literal["torchscript", "exported", "state_dict", "onnx"]
Task = Literal["classification", "segmentation"]
Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# One value per channel at most (channels ≤ 64): a longer list is refused before it is walked.
PerChannel = Annotated[list[float], Field(min_length=1, max_length=64)]


class InputSpec(Strict):
    """What the model takes: channels, size, and per-channel normalization."""

    channels: int = Field(ge=1, le=64)
    height: int = Field(ge=1, le=4096)
    width: int = Field(ge=1, le=4096)
    mean: float | PerChannel = 0.0
    std: float | PerChannel = 1.0

    @field_validator("std")
    @classmethod
    def _positive(cls, value: float | list[float]) -> float | list[float]:
        values = value if isinstance(value, list) else [value]
        if any(v <= 0 for v in values):
            raise ValueError("std must be positive")
        return value

    def normalized(self) -> dict[str, Any]:
        """The spec with mean and std as lists of one value or one per channel."""
        spec = self.model_dump()
        for key in ("mean", "std"):
            values = spec[key] if isinstance(spec[key], list) else [spec[key]]
            if len(values) not in (1, self.channels):
                raise ValueError(f"{key} needs 1 or {self.channels} values, got {len(values)}")
            spec[key] = [float(v) for v in values]
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


class EvaluationCreate(Strict):
    """POST /v1/evaluations."""

    model_id: str = Field(max_length=64)
    dataset_id: str = Field(max_length=64)
    shifts: RangeShifts | ListShifts
    padding: Padding = "zeros"
    fill: float = Field(default=0.0, ge=0.0, le=1.0)
    max_samples: int | None = Field(default=None, ge=1)
    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    # true: every convolution, pooling and activation stage; a list: those layers (SPEC §3).
    layers: bool | list[str] | None = None
    webhook_url: str | None = Field(default=None, max_length=2000, pattern=r"^https?://[^\s/]+")
    tags: list[str] = Field(default_factory=list, max_length=20)

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
    input: InputSpec
    task: Task = "classification"
    architecture: str | None = Field(default=None, max_length=100)
    architecture_options: dict[str, Any] = Field(default_factory=dict)


class DatasetUpload(Strict):
    """The form fields of POST /v1/datasets (besides `file`)."""

    name: str = Field(min_length=1, max_length=200)


class EvaluationFilter(Strict):
    """Query of GET /v1/evaluations."""

    status: Status | None = None
    model_id: str | None = None
    dataset_id: str | None = None
    tag: str | None = None
    limit: int = Field(default=50, ge=1, le=500)
    cursor: str | None = None


class Page(Strict):
    """Query of the other list routes."""

    limit: int = Field(default=50, ge=1, le=500)
    cursor: str | None = None


class ExamplesQuery(Strict):
    limit: int = Field(default=20, ge=1, le=100)


class ShiftsQuery(Strict):
    format: Literal["json", "csv"] = "json"


T = TypeVar("T", bound=BaseModel)


def _field_errors(error: ValidationError) -> list[dict[str, Any]]:
    return [
        {"field": ".".join(str(part) for part in item["loc"]) or "(body)", "message": item["msg"]}
        for item in error.errors(include_url=False)
    ]


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
