"""OCI hooks: each run with the container's state on stdin, bounded by its timeout."""

from __future__ import annotations

from services.common import jsonio as json
from services.common.errors import FailedPrecondition
from services.lowlevel import fastos as os

# typing costs milliseconds of import on every launch; annotations are strings here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


DEFAULT_TIMEOUT = 120.0


def run_hooks(spec: dict[str, Any], phase: str, state: dict[str, Any]) -> None:
    """Run every hook of ``phase``; the first failure raises (the caller decides if it is fatal)."""
    hooks = (spec.get("hooks") or {}).get(phase) or []
    if not hooks:
        return
    import subprocess  # only paid for by containers that have hooks

    payload = json.dumps(state).encode()
    for index, hook in enumerate(hooks):
        path = hook["path"]
        args = hook.get("args") or [path]
        env = dict(e.split("=", 1) for e in hook.get("env") or [] if "=" in e)
        timeout = hook.get("timeout") or DEFAULT_TIMEOUT
        try:
            done = subprocess.run(
                args,
                executable=path,
                input=payload,
                env=env,
                capture_output=True,
                timeout=timeout,
                close_fds=True,
            )
        except subprocess.TimeoutExpired:
            raise FailedPrecondition(f"{phase} hook #{index} ({path}): timed out after {timeout}s") from None
        except OSError as e:
            raise FailedPrecondition(f"{phase} hook #{index} ({path}): {os.strerror(e.errno or 0)}") from None
        if done.returncode != 0:
            raise FailedPrecondition(
                f"{phase} hook #{index} ({path}): exit status {done.returncode}, "
                f"stdout: {done.stdout.decode(errors='replace').strip()}, "
                f"stderr: {done.stderr.decode(errors='replace').strip()}"
            )
