"""The sandbox process: confine itself, load one user model, run the jobs the worker sends.

Started by worker.sandbox.cage as `python -m worker.sandbox.child` inside the
cage. It reads one JSON object per line on standard input and answers JSON
lines on a private copy of standard output (standard output itself is pointed
at standard error first, so whatever model code prints cannot pose as a
message). It imports nothing of the database, the queue or the settings: all
it knows arrives on standard input, and all it can touch are the files bound
into the cage.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import IO, Any

from worker.sandbox import protocol
from worker.sandbox.confine import ConfineError, Limits, confine


class _Channel:
    """JSON lines out on a private descriptor."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream

    def send(self, event: str, **fields: Any) -> None:
        self.stream.write(protocol.encode({"event": event, **fields}))
        self.stream.flush()


def _private_stdout() -> _Channel:
    private = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return _Channel(os.fdopen(private, "wb", buffering=0))


def main() -> int:
    channel = _private_stdout()
    stdin = sys.stdin.buffer
    setup = protocol.decode(stdin.readline())
    try:
        confine(Limits(**setup["limits"]), seccomp=setup["seccomp"])
    except ConfineError as exc:
        channel.send("error", kind="confine", message=str(exc))
        return 3
    from worker.sandbox import runner  # torch is imported here, after the locks are in place

    work = runner.Runner(setup, channel.send)
    channel.send("ready")
    for line in iter(stdin.readline, b""):
        job = protocol.decode(line)
        started = time.monotonic()
        try:
            result = work.run(job)
        except BaseException as exc:  # noqa: BLE001 — every failure is reported, then the cage ends
            channel.send("error", **runner.describe_failure(exc))
            return 1
        channel.send("done", result=result, cpu_seconds=_cpu_seconds(), seconds=time.monotonic() - started)
    return 0


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


if __name__ == "__main__":
    try:
        sys.exit(main())
    except json.JSONDecodeError:
        sys.exit(2)
