"""The worker's start-up check: can it cage a model here? If not, it runs no model at all.

The answer is kept in the broker's Redis under `shiftscore:sandbox:<host>`, so
the API's /readyz can say which worker host cannot sandbox, and why.
"""

from __future__ import annotations

import json
import shutil
import socket
import time

from worker.sandbox.cage import Cage, CageConfig, CageFailure

STATUS_KEY = "shiftscore:sandbox:"


def probe(config: CageConfig) -> str | None:
    """None when a cage starts and holds; otherwise why not, in words an operator can act on."""
    if config.enabled and shutil.which("bwrap") is None:
        return "bubblewrap is not installed (Debian: apt-get install bubblewrap)"
    try:
        cage = Cage({}, {}, config)
    except CageFailure as exc:
        return f"the sandbox does not start: {exc}"
    try:
        facts = cage.run({"op": "probe"}, config.wall_seconds, "checking the sandbox")
    except CageFailure as exc:
        return f"the sandbox does not work: {exc}; {cage.stderr_tail()[-300:]}"
    finally:
        cage.close()
    if config.enabled and not (facts.get("socket") and facts.get("fork")):
        return "the sandbox lets a model open sockets or start processes (seccomp is not in force)"
    leaked = [name for name in facts.get("environment", []) if name.startswith("SHIFTSCORE")]
    if leaked:
        return f"the sandbox passes the worker's settings to models ({', '.join(leaked)})"
    return None


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
