"""What each Dockerfile instruction that changes only the image config does to it, and the history
line (``created_by``) dockerd's classic builder writes for it: ``/bin/sh -c #(nop)  CMD ["sh"]``,
Go's ``%q`` of a list included. Pure functions over the config dict (Docker's container Config keys)."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Mapping
from typing import Any

from services.common.errors import InvalidArgument
from services.daemon.builds.dockerfile import Instruction, ParseError, key_values
from services.daemon.builds.expand import process_word, process_words

DEFAULT_SHELL = ["/bin/sh", "-c"]
NOP = "/bin/sh -c #(nop) "
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000,
          "h": 3_600_000_000_000}


def go_quote(text: str) -> str:
    """Go's %q of a string (what dockerd's history lines hold)."""
    return json.dumps(text, ensure_ascii=False)


def go_list(items: list[str]) -> str:
    """Go's %q of a []string: ``["a" "b"]``."""
    return "[" + " ".join(go_quote(i) for i in items) + "]"


def nop(message: str) -> str:
    """A config-only step's history line, as dockerd writes it (two spaces after ``#(nop)``)."""
    return NOP + " " + message


def parse_duration(text: str, flag: str) -> int:
    """A Go duration (``30s``, ``1m30s``, ``100ms``) in nanoseconds."""
    if text == "0":
        return 0
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise InvalidArgument(f'time: invalid duration "{text}" for --{flag}')
    return int(total)


def go_duration(ns: int) -> str:
    """Go's Duration.String() for the common values (``30s``, ``1m30s``, ``500ms``, ``0s``)."""
    if ns == 0:
        return "0s"
    if ns < 1_000_000_000:
        return f"{ns / 1_000_000:g}ms"
    seconds = ns / 1_000_000_000
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    out = (f"{int(hours)}h" if hours else "") + (f"{int(minutes)}m" if hours or minutes else "")
    return out + f"{secs:g}s"


def command_form(ins: Instruction, shell: list[str]) -> list[str]:
    """RUN, CMD, ENTRYPOINT: the JSON form as given, the shell form under the stage's SHELL."""
    if ins.json_args is not None:
        return list(ins.json_args)
    return [*shell, ins.rest]


def env_pairs(ins: Instruction, env: Mapping[str, str], escape: str) -> list[tuple[str, str]]:
    return [(process_word(k, env, escape), process_word(v, env, escape)) for k, v in key_values(ins, escape)]


def set_env(config: dict[str, Any], pairs: list[tuple[str, str]]) -> None:
    current = list(config.get("Env") or [])
    for key, value in pairs:
        current = [e for e in current if e.partition("=")[0] != key] + [f"{key}={value}"]
    config["Env"] = current


def apply_env(config: dict[str, Any], ins: Instruction, env: Mapping[str, str], escape: str) -> str:
    pairs = env_pairs(ins, env, escape)
    set_env(config, pairs)
    return nop("ENV " + " ".join(f"{k}={v}" for k, v in pairs))


def apply_label(config: dict[str, Any], ins: Instruction, env: Mapping[str, str], escape: str) -> str:
    pairs = env_pairs(ins, env, escape)
    config["Labels"] = {**(config.get("Labels") or {}), **dict(pairs)}
    return nop("LABEL " + " ".join(f"{k}={v}" for k, v in pairs))


def _ports(words: list[str]) -> list[str]:
    out: list[str] = []
    for word in words:
        port, _, proto = word.partition("/")
        proto = (proto or "tcp").lower()
        start, sep, end = port.partition("-")
        if not start.isdigit() or (sep and not end.isdigit()):
            raise InvalidArgument(f"Invalid containerPort: {word}")
        for number in range(int(start), int(end if sep else start) + 1):
            out.append(f"{number}/{proto}")
    return out


def apply_expose(config: dict[str, Any], ins: Instruction, env: Mapping[str, str], escape: str) -> str:
    words = process_words(ins.rest, env, escape)
    if not words:
        raise ParseError("EXPOSE requires at least one argument")
    ports = _ports(words)
    config["ExposedPorts"] = {**(config.get("ExposedPorts") or {}), **{p: {} for p in ports}}
    return nop("EXPOSE " + " ".join(ports))


def apply_volume(config: dict[str, Any], ins: Instruction, env: Mapping[str, str], escape: str) -> str:
    raw = ins.json_args if ins.json_args is not None else process_words(ins.rest, env, escape)
    paths = [process_word(p, env, escape) if ins.json_args is not None else p for p in raw]
    if not paths or any(not p.strip() for p in paths):
        raise ParseError("VOLUME specified can not be an empty string")
    config["Volumes"] = {**(config.get("Volumes") or {}), **{p: {} for p in paths}}
    return nop("VOLUME [" + " ".join(paths) + "]")


def apply_user(config: dict[str, Any], ins: Instruction, env: Mapping[str, str], escape: str) -> str:
    config["User"] = process_word(ins.rest, env, escape)
    return nop("USER " + config["User"])


def apply_stopsignal(config: dict[str, Any], ins: Instruction, env: Mapping[str, str], escape: str) -> str:
    sig = process_word(ins.rest, env, escape)
    name = sig.upper()
    valid = sig.isdigit() or (name if name.startswith("SIG") else "SIG" + name) in signal.Signals.__members__ or \
        re.fullmatch(r"SIGRTM(IN|AX)([+-]\d+)?", name) is not None
    if not valid:
        raise InvalidArgument(f"Invalid signal: {sig}")
    config["StopSignal"] = sig
    return nop("STOPSIGNAL " + sig)


def apply_cmd(config: dict[str, Any], ins: Instruction, shell: list[str]) -> str:
    config["Cmd"] = command_form(ins, shell)
    return nop("CMD " + go_list(config["Cmd"]))


def apply_entrypoint(config: dict[str, Any], ins: Instruction, shell: list[str], cmd_set: bool) -> str:
    config["Entrypoint"] = command_form(ins, shell)
    if not cmd_set:
        config["Cmd"] = None  # dockerd: an ENTRYPOINT drops the base image's CMD unless this stage set one
    return nop("ENTRYPOINT " + go_list(config["Entrypoint"]))


def apply_shell(config: dict[str, Any], ins: Instruction) -> str:
    if not ins.json_args:
        raise ParseError("SHELL requires the arguments to be in JSON form")
    config["Shell"] = list(ins.json_args)
    return nop("SHELL " + go_list(config["Shell"]))


def apply_onbuild(config: dict[str, Any], ins: Instruction) -> str:
    trigger = ins.rest.strip()
    first = trigger.split(None, 1)[0].upper() if trigger else ""
    if first in ("ONBUILD",):
        raise ParseError("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if first in ("FROM", "MAINTAINER"):
        raise ParseError(f"{first} isn't allowed as an ONBUILD trigger")
    config["OnBuild"] = [*(config.get("OnBuild") or []), trigger]
    return nop("ONBUILD " + trigger)


def apply_healthcheck(config: dict[str, Any], ins: Instruction, shell: list[str]) -> str:
    rest = ins.rest.strip()
    if rest.upper() == "NONE":
        if ins.flags:
            raise ParseError("HEALTHCHECK NONE takes no flags")
        config["Healthcheck"] = {"Test": ["NONE"]}
        return nop('HEALTHCHECK &{["NONE"] "0s" "0s" "0s" "0s" \'\\x00\'}')
    word, _, body = rest.partition(" ")
    if word.upper() != "CMD":
        raise ParseError(f"Unknown type \"{word.upper()}\" in HEALTHCHECK (try CMD)")
    sub = Instruction("cmd", body, body.strip(), {}, None)
    if body.strip().startswith("["):
        try:
            value = json.loads(body)
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                sub.json_args = value
        except ValueError:
            pass
    test = ["CMD", *sub.json_args] if sub.json_args is not None else ["CMD-SHELL", sub.rest]
    check: dict[str, Any] = {"Test": test}
    names = {"interval": "Interval", "timeout": "Timeout", "start-period": "StartPeriod",
             "start-interval": "StartInterval"}
    for flag in ins.flags:
        if flag not in names and flag != "retries":
            raise ParseError(f"Unknown flag: {flag}")
    for flag, key in names.items():
        if flag in ins.flags:
            value = parse_duration(ins.flags[flag], flag)
            if value and value < 1_000_000:
                raise InvalidArgument(f"Interval \"{flag}\" cannot be less than 1ms")
            if value:
                check[key] = value
    if "retries" in ins.flags:
        try:
            retries = int(ins.flags["retries"])
        except ValueError:
            raise InvalidArgument(f'strconv.ParseInt: parsing "{ins.flags["retries"]}": invalid syntax') from None
        if retries < 0:
            raise InvalidArgument("--retries cannot be negative")
        if retries:
            check["Retries"] = retries
    config["Healthcheck"] = check
    fields = " ".join(go_quote(go_duration(check.get(k, 0))) for k in ("Interval", "Timeout", "StartPeriod",
                                                                        "StartInterval"))
    return nop(f"HEALTHCHECK &{{{go_list(test)} {fields} '\\x{check.get('Retries', 0):02x}'}}")
