"""The runtime's log, as runc writes it (logrus): ``--log FILE``, ``--log-format text|json``, ``--debug``.

Without ``--log`` the records go to stderr. Text records are logrus's
``time="2006-01-02T15:04:05Z07:00" level=error msg="..."``; JSON records are Go's compact JSON
with the keys sorted, ``{"level":"error","msg":"...","time":"..."}``. A failure's record also
carries ``kind``, the ErrorKind of the SkiffError raised: the shim reads it back from the JSON
log (services/common/runtime_output.py) so the typed error survives the process boundary.

One log per process, set up once by cli.main: the create sequence's forked children write their
debug records through the same descriptor (opened O_APPEND, so their lines never interleave
within a record), as runc's children forward theirs to the parent.
"""

from __future__ import annotations

import _json
import time

from services.common.errors import InvalidArgument
from services.lowlevel import fastos as os
from services.lowlevel.output import go_json

TEXT = "text"
JSON = "json"

_LEVELS = {"debug": 5, "info": 4, "warning": 3, "error": 2}
_fd = 2
_to_stderr = True
_format = TEXT
_level = _LEVELS["info"]
# logrus's text values are bare when made of these characters alone, else quoted.
_BARE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._/@^+")


def setup(path: str | None, fmt: str | None, debug: bool) -> None:
    """Open ``path`` (appending, as runc: O_APPEND|O_SYNC, 0644) or keep stderr; choose format and level.

    A format other than text or json is refused with runc's words.
    """
    global _fd, _to_stderr, _format, _level
    if fmt not in (None, "", TEXT, JSON):
        raise InvalidArgument(f"invalid log-format: {fmt}")
    _format = fmt or TEXT
    _level = _LEVELS["debug" if debug else "info"]
    _fd, _to_stderr = 2, True
    if path:
        _fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_SYNC | os.O_CLOEXEC, 0o644)
        _to_stderr = False
    elif debug:
        # The container's init writes debug records too, after it may have put its terminal on
        # fd 2: a copy of ours (close-on-exec, gone at execve) keeps them on the caller's stderr.
        _fd = os.dup(2)


def to_stderr() -> bool:
    """Whether the records already go to stderr (then a failure is not printed there twice)."""
    return _to_stderr


def debug_enabled() -> bool:
    return _level >= _LEVELS["debug"]


def debug(msg: str) -> None:
    if _level >= _LEVELS["debug"]:
        _write("debug", msg, None)


def warning(msg: str) -> None:
    if _level >= _LEVELS["warning"]:
        _write("warning", msg, None)


def error(msg: str, kind: str | None = None) -> None:
    _write("error", msg, kind)


def _write(level: str, msg: str, kind: str | None) -> None:
    # The kind is for the reader of the log file (the shim); stderr stays runc's, for people.
    fields = {"kind": kind} if kind and not _to_stderr else {}
    line = _json_record(level, msg, fields) if _format == JSON else _text_record(level, msg, fields)
    try:
        os.write(_fd, (line + "\n").encode())
    except OSError:
        pass  # a log that cannot be written must not turn a result into a failure


def _timestamp() -> str:
    """RFC 3339 in local time, to the second: Go's time.RFC3339, logrus's default."""
    now = time.localtime()
    offset = now.tm_gmtoff or 0
    if offset == 0:
        zone = "Z"
    else:
        sign = "+" if offset > 0 else "-"
        zone = f"{sign}{abs(offset) // 3600:02d}:{abs(offset) % 3600 // 60:02d}"
    return time.strftime("%Y-%m-%dT%H:%M:%S", now) + zone


def _json_record(level: str, msg: str, fields: dict[str, str]) -> str:
    # logrus's JSONFormatter: a Go map, marshalled with its keys sorted.
    record = {**fields, "level": level, "msg": msg, "time": _timestamp()}
    return go_json({k: record[k] for k in sorted(record)})


def _text_record(level: str, msg: str, fields: dict[str, str]) -> str:
    # logrus's TextFormatter (no terminal): time, level, msg, then the other fields sorted.
    parts = [f"time={_quote_text(_timestamp())}", f"level={level}", f"msg={_quote_text(msg)}"]
    parts += [f"{k}={_quote_text(fields[k])}" for k in sorted(fields)]
    return " ".join(parts)


def _quote_text(text: str) -> str:
    if text and all(c in _BARE for c in text):
        return text
    return _json.encode_basestring(text)
