"""The built-in architecture registry as plain data: names, options, validation."""

# The API process imports this module, so it must not import torch.

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ArchitectureError(ValueError):
    """An unknown architecture or a bad architecture option; the message is for the user."""


@dataclass(frozen=True)
class Option:
    """One option of an architecture: its type, default and allowed values."""

    name: str
    type: str  # "integer", "boolean" or "string", as in JSON Schema
    default: Any
    description: str
    choices: tuple[str, ...] | None = None
    minimum: int | None = None
    maximum: int | None = None

    def describe(self) -> dict[str, Any]:
        """Return the option as a JSON-ready dict."""
        out: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "default": self.default,
            "description": self.description,
        }
        if self.choices is not None:
            out["allowed"] = list(self.choices)
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        return out

    def validate(self, architecture: str, value: Any) -> Any:
        """Return `value` if it fits this option, else raise ArchitectureError."""
        where = f"option '{self.name}' of architecture '{architecture}'"
        if self.type == "boolean":
            if not isinstance(value, bool):
                raise ArchitectureError(f"{where} must be true or false, got {value!r}")
            return value
        if self.type == "integer":
            # bool is a subclass of int in Python; true is not a width.
            if isinstance(value, bool) or not isinstance(value, int):
                raise ArchitectureError(f"{where} must be an integer, got {value!r}")
            if self.minimum is not None and value < self.minimum:
                raise ArchitectureError(f"{where} must be at least {self.minimum}, got {value}")
            if self.maximum is not None and value > self.maximum:
                raise ArchitectureError(f"{where} must be at most {self.maximum}, got {value}")
            return value
        if not isinstance(value, str) or (self.choices is not None and value not in self.choices):
            allowed = ", ".join(repr(c) for c in self.choices or ())
            raise ArchitectureError(f"{where} must be one of {allowed}; got {value!r}")
        return value


@dataclass(frozen=True)
class Architecture:
    """A built-in architecture: a name, a one-line description and its options."""

    name: str
    description: str
    min_input_size: int
    options: tuple[Option, ...] = field(default_factory=tuple)

    def describe(self) -> dict[str, Any]:
        """Return the architecture as a JSON-ready dict."""
        return {
            "name": self.name,
            "description": self.description,
            "min_input_size": self.min_input_size,
            "options": [option.describe() for option in self.options],
        }


def _num_classes() -> Option:
    return Option("num_classes", "integer", 10, "Number of output classes (logits).", minimum=2, maximum=100_000)


def _width(default: int, what: str) -> Option:
    return Option("width", "integer", default, what, minimum=1, maximum=1024)


def _pool() -> Option:
    return Option(
        "pool",
        "string",
        "max",
        "Downsampling: 'max' pooling, 'avg' pooling, or 'blur' (Zhang 2019 anti-aliased "
        "max-blur-pool: max with stride 1, then a binomial low-pass filter with stride 2).",
        choices=("max", "avg", "blur"),
    )


def _blur_size(what: str) -> Option:
    return Option(
        "blur_size", "integer", 3, f"Size of the binomial blur filter {what} (2 to 5).", minimum=2, maximum=5
    )


ARCHITECTURES: dict[str, Architecture] = {
    arch.name: arch
    for arch in (
        Architecture(
            "lenet",
            "LeNet-style CNN: conv5-pool-conv5-pool-fc-fc, for small images such as 8x8 digits up to 32x32.",
            min_input_size=8,
            options=(_num_classes(), _pool(), _blur_size("used when pool is 'blur'")),
        ),
        Architecture(
            "resnet18_cifar",
            "CIFAR-size ResNet-18 (3x3 stem, no initial max-pool), optionally anti-aliased (Zhang 2019).",
            min_input_size=8,
            options=(
                _num_classes(),
                Option(
                    "antialias",
                    "boolean",
                    False,
                    "Blur before every strided convolution (Zhang 2019 anti-aliased ResNet).",
                ),
                _blur_size("used when antialias is true"),
                _width(64, "Channels of the first stage; later stages use 2x, 4x and 8x."),
            ),
        ),
        Architecture(
            "vgg_small",
            "VGG-style CNN: three conv-conv-pool blocks with batch norm, global average pooling, linear head.",
            min_input_size=8,
            options=(
                _num_classes(),
                _pool(),
                _blur_size("used when pool is 'blur'"),
                _width(64, "Channels of the first block; later blocks use 2x and 4x."),
            ),
        ),
        Architecture(
            "circular_invariant",
            "Stride-1 circular convolutions, ReLU, global average pooling and a linear head: "
            "exactly invariant to circular shifts.",
            min_input_size=1,
            options=(
                _num_classes(),
                _width(16, "Channels of every convolution."),
                Option("depth", "integer", 3, "Number of 3x3 convolutions.", minimum=1, maximum=32),
            ),
        ),
    )
}


def describe() -> list[dict[str, Any]]:
    """Return the registry as JSON-ready dicts, for `GET /v1/architectures`."""
    return [arch.describe() for arch in ARCHITECTURES.values()]


def get(name: str) -> Architecture:
    """Return the architecture called `name`, or raise ArchitectureError listing the known ones."""
    if not isinstance(name, str) or name not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ArchitectureError(f"unknown architecture {name!r}; the built-in architectures are: {known}")
    return ARCHITECTURES[name]


def validate_options(name: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """Return `options` for architecture `name` with defaults filled in, or raise ArchitectureError."""
    arch = get(name)
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ArchitectureError(f"architecture options must be a JSON object, got {type(options).__name__}")
    by_name = {option.name: option for option in arch.options}
    unknown = sorted(str(key) for key in options if key not in by_name)
    if unknown:
        allowed = ", ".join(by_name)
        raise ArchitectureError(
            f"unknown option {', '.join(repr(u) for u in unknown)} for architecture '{name}'; "
            f"its options are: {allowed}"
        )
    return {
        option.name: option.validate(name, options[option.name]) if option.name in options else option.default
        for option in arch.options
    }


def min_input_size(name: str) -> int:
    """Return the smallest height and width the architecture accepts."""
    return get(name).min_input_size
