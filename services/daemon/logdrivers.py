"""The log drivers a container may name (HostConfig.LogConfig), checked and set up as dockerd 20.10 does.

- At create (dockerd's ValidateLogOpts): ``none`` takes anything; otherwise the generic options (mode,
  max-buffer-size, cache-disabled) are checked, the driver must exist, and each option key must be one
  the driver knows. Values are not read yet: a 400 names the first problem.
- At start (dockerd's logger New): the values are read; a bad one fails the start with
  "failed to initialize logging driver: …" (a 500, as dockerd's start answers).
- ``json-file`` (the default): ``<id>-json.log``, no rotation unless max-size (max-file alone does
  nothing), compress only with both; labels/env(-regex)/tag become every entry's ``attrs``.
- ``local``: ``local-logs/container.log`` in the container's folder (not shown as LogPath), dockerd's
  framed protobuf records, 20 MB x 5 files compressed by default.
- ``none``: no log; ``docker logs`` answers 501. The shim still feeds attach through a small rotated
  file in the daemon's run folder (2 x 1 MiB), gone with the container.
"""

from __future__ import annotations

import re
from pathlib import Path

from services.common.errors import Internal, InvalidArgument
from services.gen.skiff.daemon.v1 import Container
from services.gen.skiff.highlevel import v1 as hl

DEFAULT = "json-file"
# What exists, as docker info's Plugins.Log lists the registered drivers (sorted).
DRIVERS = ("json-file", "local")
NONE = "none"

JSON_FILE_OPTS = frozenset({"max-file", "max-size", "compress", "labels", "labels-regex", "env", "env-regex", "tag"})
LOCAL_OPTS = frozenset({"max-file", "max-size", "compress"})
# Every driver takes these (dockerd's builtInLogOpts, with the log cache's cache-* keys).
GENERIC_OPTS = frozenset({"mode", "max-buffer-size", "cache-disabled"} | {f"cache-{k}" for k in LOCAL_OPTS})

LOCAL_MAX_SIZE = 20 * 1024 * 1024
LOCAL_MAX_FILE = 5
ATTACH_FEED_SIZE = 1024 * 1024

_SIZE = re.compile(r"^(\d+(?:\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?$")
_DECIMAL = {"k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4, "p": 1000**5}
_BINARY = {"k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}


def check_create(driver: str, opts: dict[str, str]) -> str:
    """The driver's name (the default for ""); InvalidArgument with dockerd's words otherwise."""
    driver = driver or DEFAULT
    if driver == NONE:
        return driver
    mode = opts.get("mode", "")
    if mode not in ("", "blocking", "non-blocking"):
        raise InvalidArgument(f"logger: logging mode not supported: {mode}")
    if "max-buffer-size" in opts:
        if mode != "non-blocking":
            raise InvalidArgument("logger: max-buffer-size option is only supported with 'mode=non-blocking'")
        try:
            human_size(opts["max-buffer-size"], binary=True)
        except ValueError as exc:
            raise InvalidArgument(f"error parsing option max-buffer-size: {exc}") from None
    if opts.get("cache-disabled", "") and parse_bool(opts["cache-disabled"]) is None:
        raise InvalidArgument(f"invalid value for option cache-disabled: {opts['cache-disabled']}")
    if driver not in DRIVERS:
        # dockerd looks for a plugin of that name last; this is its answer when there is none.
        raise InvalidArgument(f'error looking up logging plugin {driver}: plugin "{driver}" not found')
    known = JSON_FILE_OPTS if driver == "json-file" else LOCAL_OPTS
    for key in sorted(opts):
        if key not in known and key not in GENERIC_OPTS:
            if driver == "json-file":
                raise InvalidArgument(f"unknown log opt '{key}' for json-file log driver")
            raise InvalidArgument(f"unknown log opt '{key}' for log driver {driver}")
    return driver


def log_path(driver: str, folder: Path, run: Path, container_id: str) -> str:
    """The file the shim writes: the log itself, or (none) the attach feed."""
    if driver == "local":
        return str(folder / "local-logs" / "container.log")
    if driver == NONE:
        return str(attach_feed(run, container_id))
    return str(folder / f"{container_id}-json.log")


def attach_feed(run: Path, container_id: str) -> Path:
    return run / "daemon" / "attach" / f"{container_id}.json"


def readable(record: Container) -> bool:
    return (record.config.host.log_driver or DEFAULT) != NONE


def task_log(record: Container) -> hl.LogConfig:
    """What the shim is told to write for this start; Internal (dockerd's failed start) for a bad value."""
    host = record.config.host
    driver, opts = host.log_driver or DEFAULT, dict(host.log_opts)
    try:
        if driver == NONE:
            return hl.LogConfig(path=record.log_path, max_size=ATTACH_FEED_SIZE, max_file=2)
        if driver == "local":
            return _local(record.log_path, opts)
        return _json_file(record, opts)
    except ValueError as exc:
        raise Internal(f"failed to initialize logging driver: {exc}") from None


def _json_file(record: Container, opts: dict[str, str]) -> hl.LogConfig:
    size = -1
    if "max-size" in opts:
        size = human_size(opts["max-size"])
        if size <= 0:
            raise ValueError("max-size must be a positive number")
    files = 1
    if "max-file" in opts:
        files = go_atoi(opts["max-file"])
        if files < 1:
            raise ValueError("max-file cannot be less than 1")
    compress = False
    if "compress" in opts:
        value = parse_bool(opts["compress"])
        if value is None:
            raise ValueError(f'strconv.ParseBool: parsing "{opts["compress"]}": invalid syntax')
        compress = value
        if compress and (files == 1 or size == -1):
            raise ValueError("compress cannot be true when max-file is less than 2 or max-size is not set")
    return hl.LogConfig(path=record.log_path, max_size=max(size, 0), max_file=files, compress=compress,
                        attrs=extra_attributes(record, opts))


def _local(path: str, opts: dict[str, str]) -> hl.LogConfig:
    size, files, compress = LOCAL_MAX_SIZE, LOCAL_MAX_FILE, True
    if "max-size" in opts:
        try:
            size = human_size(opts["max-size"])
        except ValueError as exc:
            raise ValueError(f"invalid value for max-size: {opts['max-size']}: {exc}") from None
    if "max-file" in opts:
        try:
            files = go_atoi(opts["max-file"])
        except ValueError as exc:
            raise ValueError(f"invalid value for max-file: {opts['max-file']}: {exc}") from None
    if "compress" in opts:
        value = parse_bool(opts["compress"])
        if value is None:
            raise ValueError(f'error reading compress log option: strconv.ParseBool: parsing "{opts["compress"]}": '
                             "invalid syntax")
        compress = value
    if size < 0:
        raise ValueError("max size should be a positive number")
    if files < 0:
        raise ValueError("max file count cannot be less than 0")
    if compress and files <= 1:
        raise ValueError("compression cannot be enabled when max file count is 1")
    # dockerd rotates at every write with max-size 0; here 0 means never, so the smallest size stands in.
    return hl.LogConfig(path=path, max_size=max(size, 1), max_file=max(files, 1), compress=compress,
                        format="local")


def extra_attributes(record: Container, opts: dict[str, str]) -> dict[str, str]:
    """json-file's attrs: the labels and env variables named (or matched) by the options, and the tag."""
    extra: dict[str, str] = {}
    labels = dict(record.config.labels)
    for key in filter(None, opts.get("labels", "").split(",")):
        if key in labels:
            extra[key] = labels[key]
    if opts.get("labels-regex"):
        pattern = _regex(opts["labels-regex"])
        extra.update({k: v for k, v in labels.items() if pattern.search(k)})
    env = dict(item.split("=", 1) for item in record.config.env if "=" in item)
    for key in filter(None, opts.get("env", "").split(",")):
        if key in env:
            extra[key] = env[key]
    if opts.get("env-regex"):
        pattern = _regex(opts["env-regex"])
        extra.update({k: v for k, v in env.items() if pattern.search(k)})
    if opts.get("tag"):
        extra["tag"] = render_tag(record, opts["tag"])
    return extra


def _regex(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error as exc:
        raise ValueError(f"error parsing regexp: {exc}") from None


_TAG_FIELD = re.compile(r"\{\{\s*\.(\w+)\s*\}\}")


def render_tag(record: Container, template: str) -> str:
    """The tag option's Go template, for the fields dockerd's logger.Info offers ({{.ID}}, {{.Name}} …)."""
    image_id = record.image_id.split(":", 1)[-1]
    fields = {
        "ID": record.id[:12], "FullID": record.id, "Name": record.name, "ImageID": image_id[:12],
        "ImageFullID": record.image_id, "ImageName": record.config.image, "DaemonName": "docker",
        "Command": " ".join(record.path_args),
    }

    def field(match: re.Match[str]) -> str:
        if match.group(1) not in fields:
            raise ValueError(f'template: log-tag:1:2: executing "log-tag" at <.{match.group(1)}>: '
                             f"can't evaluate field {match.group(1)} in type *logger.Info")
        return fields[match.group(1)]

    return _TAG_FIELD.sub(field, template)


def human_size(text: str, binary: bool = False) -> int:
    """go-units' FromHumanSize (k = 1000) or RAMInBytes (binary: k = 1024)."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"invalid size: '{text}'")
    try:
        number = float(match.group(1))
    except ValueError:
        raise ValueError(f'strconv.ParseFloat: parsing "{match.group(1)}": invalid syntax') from None
    unit = (match.group(2) or "").lower()
    return int(number * (_BINARY if binary else _DECIMAL).get(unit, 1))


def go_atoi(text: str) -> int:
    """Go's strconv.Atoi, with its error words."""
    if not re.fullmatch(r"[+-]?\d+", text):
        raise ValueError(f'strconv.Atoi: parsing "{text}": invalid syntax')
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise ValueError(f'strconv.Atoi: parsing "{text}": value out of range')
    return value


def parse_bool(text: str) -> bool | None:
    """Go's strconv.ParseBool; None for anything else."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None
