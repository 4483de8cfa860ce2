"""What an OCI runtime said when a command failed: its words and the kind of error.

The contract with skiff-lowlevel: on failure it writes its error record to its
``--log FILE --log-format json`` log as one JSON line ``{"level": "error", "msg": ..., "kind": ...}``,
``kind`` being the ErrorKind value (services/common/errors.py) of the SkiffError it raised. That
kind is carried as is, so the typed error survives the process boundary.

Foreign runtimes (runc, crun) log no ``kind``: for them alone ``guess_kind`` reads it from their
words, as containerd reads runc's. An untyped crash of skiff-lowlevel (an OSError, a traceback)
logs no kind either and takes the same fallback.

Stdlib only (``_json`` through jsonio): the shim imports this on every launch.
"""

from __future__ import annotations

from services.common import jsonio
from services.common.errors import ERROR_BY_KIND, ErrorKind

# Error records of runc-style logs (logrus levels); a line without a level is one too.
_ERROR_LEVELS = ("error", "fatal", "panic", None)


def _records(output: bytes) -> list[tuple[dict | None, str]]:
    """Each non-empty line: its JSON object if it is one (else None), and the line."""
    found: list[tuple[dict | None, str]] = []
    for raw in output.decode("utf-8", "replace").splitlines():
        raw = raw.strip()
        if not raw:
            continue
        entry = None
        if raw.startswith("{"):
            try:
                entry = jsonio.loads(raw)
            except ValueError:
                entry = None
            if not isinstance(entry, dict):
                entry = None
        found.append((entry, raw))
    return found


def runtime_message(output: bytes, errors_only: bool = False) -> str:
    """The runtime's own words (its last three lines): plain text or JSON log lines (``{"msg": ...}``).

    ``errors_only`` keeps only the error records of a JSON log (its ``--log``), no plain text.
    """
    lines: list[str] = []
    for entry, raw in _records(output):
        if entry is not None:
            if errors_only and entry.get("level") not in _ERROR_LEVELS:
                continue
            raw = str(entry.get("msg") or entry.get("message") or raw)
        elif errors_only:
            continue
        lines.append(raw)
    return "; ".join(lines[-3:])


def logged_kind(log: bytes) -> str | None:
    """The ``kind`` of the last error record that carries a known one (skiff-lowlevel's), else None."""
    kind = None
    for entry, _ in _records(log):
        if entry is not None and entry.get("level") in _ERROR_LEVELS and entry.get("kind") in ERROR_BY_KIND:
            kind = str(entry["kind"])
    return kind


def guess_kind(message: str) -> str:
    """For foreign runtimes only (no ``kind`` in their log): the error kind their words suggest.

    A bundle the runtime rejects is the caller's mistake (invalid_argument); anything unrecognised
    is a failed precondition of the container, not an internal error of ours.
    """
    lowered = message.lower()
    if "does not exist" in lowered or "not found" in lowered and "container" in lowered:
        return ErrorKind.NOT_FOUND
    if "already exists" in lowered:
        return ErrorKind.ALREADY_EXISTS
    if any(word in lowered for word in ("invalid", "config.json", "no such file", "executable file",
                                         "not a directory", "permission denied", "exec format")):
        return ErrorKind.INVALID_ARGUMENT
    return ErrorKind.FAILED_PRECONDITION


def runtime_failure(log: bytes, stderr: bytes) -> tuple[str, str]:
    """``(kind, message)`` of a failed runtime command, from its ``--log`` (read from before the
    command) and its stderr: the logged kind when there is one, else the guess from the words."""
    message = runtime_message(log, errors_only=True) or runtime_message(stderr)
    return logged_kind(log) or guess_kind(message), message
