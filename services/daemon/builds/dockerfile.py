"""The Dockerfile parser (Docker's frontend/dockerfile/parser rules): parser directives at the top
(``# escape=``, ``# syntax=`` read and ignored), comments, line continuations with the escape
character, instructions case-insensitive, ``--flag=value`` options, JSON and shell forms, and the
key=value lists of ENV, LABEL and ARG. Pure: text in, instructions out."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from services.common.errors import InvalidArgument

KNOWN = frozenset({"from", "run", "cmd", "entrypoint", "env", "arg", "label", "expose", "copy", "add", "workdir",
                   "user", "volume", "stopsignal", "healthcheck", "onbuild", "maintainer", "shell"})
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_FLAG = re.compile(r"^--([a-zA-Z][a-zA-Z0-9-]*)(?:=(.*))?$")
_HEREDOC = re.compile(r"<<(-?)([\"']?)([A-Za-z_][A-Za-z0-9_]*)\2")
_FLAGGED = frozenset({"from", "copy", "add", "healthcheck", "run"})


class ParseError(InvalidArgument):
    """A Dockerfile Docker's parser refuses (dockerd answers these with its own wording)."""


@dataclass(slots=True)
class Instruction:
    keyword: str                   # lower case: "run", "copy", ...
    original: str                  # the instruction as written, continuations joined (the "Step" line)
    rest: str                      # what follows the keyword and its flags
    flags: dict[str, str] = field(default_factory=dict)
    json_args: list[str] | None = None  # the JSON form's list, when it is one
    line: int = 0
    heredocs: list[tuple[str, str]] = field(default_factory=list)  # (word, body) of RUN/COPY/ADD <<WORD


@dataclass(slots=True)
class Dockerfile:
    instructions: list[Instruction]
    escape: str = "\\"
    directives: dict[str, str] = field(default_factory=dict)


def _directives(lines: list[str]) -> tuple[dict[str, str], int]:
    """The parser directives before the first other line, and how many lines they took."""
    found: dict[str, str] = {}
    for count, line in enumerate(lines):
        m = _DIRECTIVE.match(line.strip())
        if not m:
            return found, count
        key = m.group(1).lower()
        if key in found:
            raise ParseError(f"only one {key} parser directive can be used")
        found[key] = m.group(2)
    return found, len(lines)


def _continues(line: str, escape: str) -> bool:
    """Docker's rule: a line whose last non-blank character is the escape character goes on."""
    return line.rstrip(" \t").endswith(escape)


def parse(text: str) -> Dockerfile:
    lines = text.replace("\r\n", "\n").split("\n")
    if lines and lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]
    directives, first = _directives(lines)
    escape = directives.get("escape", "\\")
    if escape not in ("\\", "`"):
        raise ParseError(f"invalid escape token '{escape}' does not match ` or \\")
    out: list[Instruction] = []
    i = first
    while i < len(lines):
        raw = lines[i]
        start = i + 1
        i += 1
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts = [stripped]
        while _continues(parts[-1], escape):
            parts[-1] = parts[-1].rstrip(" \t")[:-1]
            # Comment and empty lines inside a continuation are dropped, as Docker does.
            while i < len(lines) and (not lines[i].strip() or lines[i].strip().startswith("#")):
                i += 1
            if i >= len(lines):
                break
            parts.append(lines[i].strip())
            i += 1
        joined = "".join(parts).strip()
        ins = parse_line(joined, start)
        if ins.keyword in ("run", "copy", "add") and ins.json_args is None:
            i = _read_heredocs(ins, lines, i)
        out.append(ins)
    if not out:
        raise ParseError("the Dockerfile (Dockerfile) cannot be empty")
    return Dockerfile(out, escape, directives)


def _read_heredocs(ins: Instruction, lines: list[str], i: int) -> int:
    """The bodies of the instruction's ``<<WORD`` (``<<-WORD`` strips leading tabs), in order; the
    line index after the last terminator."""
    for m in _HEREDOC.finditer(ins.rest):
        strip_tabs, word = m.group(1) == "-", m.group(3)
        body: list[str] = []
        while True:
            if i >= len(lines):
                raise ParseError(f"unterminated heredoc {word} (line {ins.line})")
            text = lines[i].lstrip("\t") if strip_tabs else lines[i]
            i += 1
            if text == word:
                break
            body.append(text + "\n")
        ins.heredocs.append((word, "".join(body)))
    return i


def parse_line(text: str, line: int = 0) -> Instruction:
    """One instruction's text (continuations already joined)."""
    keyword, _, rest = text.partition(" ")
    if "\t" in keyword:
        keyword, _, more = keyword.partition("\t")
        rest = more + " " + rest
    key = keyword.lower()
    if key not in KNOWN:
        raise ParseError(f"dockerfile parse error line {line}: unknown instruction: {keyword.upper()}")
    rest = rest.strip()
    flags: dict[str, str] = {}
    if key in _FLAGGED:
        while rest.startswith("--"):
            word, _, tail = rest.partition(" ")
            m = _FLAG.match(word)
            if not m:
                break
            flags[m.group(1)] = m.group(2) if m.group(2) is not None else "true"
            rest = tail.lstrip()
    json_args = None
    if rest.startswith("[") and key in ("run", "cmd", "entrypoint", "shell", "copy", "add", "volume"):
        try:
            value = json.loads(rest)
        except ValueError:
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            json_args = value
    if key == "shell" and json_args is None:
        raise ParseError("SHELL requires the arguments to be in JSON form")
    return Instruction(key, text, rest, flags, json_args, line)


def split_raw(text: str, escape: str = "\\") -> list[str]:
    """Words split on whitespace outside quotes, quotes and escapes kept (expand processes them)."""
    words: list[str] = []
    word: list[str] = []
    quote = ""
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == escape and i + 1 < len(text) and quote != "'":
            word.append(ch + text[i + 1])
            i += 2
            continue
        if quote:
            if ch == quote:
                quote = ""
            word.append(ch)
        elif ch in ("'", '"'):
            quote = ch
            word.append(ch)
        elif ch.isspace():
            if word:
                words.append("".join(word))
                word = []
        else:
            word.append(ch)
        i += 1
    if word:
        words.append("".join(word))
    return words


def key_values(ins: Instruction, escape: str = "\\") -> list[tuple[str, str]]:
    """ENV and LABEL: ``k=v k2="v 2"``, or the old ``KEY value with spaces`` (raw: expand them)."""
    words = split_raw(ins.rest, escape)
    if not words:
        raise ParseError(f"{ins.keyword.upper()} requires at least one argument")
    if "=" not in words[0]:
        if len(words) < 2:
            raise ParseError(f"{ins.keyword.upper()} must have two arguments")
        return [(words[0], ins.rest[len(words[0]):].strip())]
    pairs = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise ParseError(f"Syntax error - can't find = in \"{word}\". Must be of the form: name=value")
        if not key:
            raise ParseError(f"{ins.keyword.upper()} names can not be blank")
        pairs.append((key, value))
    return pairs


def arg_list(ins: Instruction, escape: str = "\\") -> list[tuple[str, str | None]]:
    """ARG name[=default] ...: each name with its raw default (None: none given)."""
    words = split_raw(ins.rest, escape)
    if not words:
        raise ParseError("ARG requires exactly one argument")
    out: list[tuple[str, str | None]] = []
    for word in words:
        key, sep, value = word.partition("=")
        out.append((key, value if sep else None))
    return out
