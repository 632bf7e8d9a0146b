"""Each worker host's answer to "can it sandbox models?", kept in the broker's Redis.

Stored under `shiftscore:sandbox:<host>`, so the API's /readyz can say which worker
host cannot sandbox, and why, without importing anything of the sandbox.
"""

from __future__ import annotations

import json
import socket
import time

STATUS_KEY = "shiftscore:sandbox:"


def publish(redis_client, reason: str | None) -> None:
    """Record this host's answer for /readyz."""
    status = {"ok": reason is None, "reason": reason, "at": time.time()}
    redis_client.set(STATUS_KEY + socket.gethostname(), json.dumps(status))


def reported_failures(redis_client) -> dict[str, str]:
    """Hosts whose workers could not sandbox, and why."""
    failures = {}
    for key in redis_client.scan_iter(match=STATUS_KEY + "*", count=100):
        raw = redis_client.get(key)
        status = json.loads(raw) if raw else {}
        if not status.get("ok", True):
            host = (key.decode() if isinstance(key, bytes) else key)[len(STATUS_KEY):]
            failures[host] = str(status.get("reason"))
    return failures
