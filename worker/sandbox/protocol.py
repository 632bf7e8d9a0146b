"""The wire between the worker and its sandbox: one JSON object per line, bounded in size.

Nothing from the sandbox is unpickled or evaluated: it is parsed as JSON and
every field the worker uses is checked (worker.sandbox.results) before it
touches the database.
"""

from __future__ import annotations

import json
from typing import Any

# A chunk's tally with 10,000 transforms and a layer profile is a few MB; anything
# far larger is not a tally.
MAX_LINE_BYTES = 64 * 1024 * 1024


class ProtocolError(ValueError):
    """A message from the sandbox that is not what the worker asked for."""


def encode(message: dict[str, Any]) -> bytes:
    """One message as a line of JSON."""
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """Parse one line; raises ProtocolError unless it is a JSON object of bounded size."""
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError("a message from the model's sandbox was too large")
    try:
        message = json.loads(line, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("a message from the model's sandbox was not valid JSON") from exc
    if not isinstance(message, dict):
        raise ProtocolError("a message from the model's sandbox was not a JSON object")
    return message


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")
