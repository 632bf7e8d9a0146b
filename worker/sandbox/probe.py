"""The worker's start-up check: can it cage a model here? If not, it runs no model at all.

The launcher records the answer with core.sandbox_status, where the API's /readyz reads it.
"""

from __future__ import annotations

import shutil

from worker.sandbox.cage import Cage, CageConfig, CageFailure


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
