"""``.dockerignore`` as Docker reads it (moby/patternmatcher): one pattern a line, ``#`` comments,
each cleaned (leading ``/`` and ``./`` dropped), ``*``/``?``/``[...]`` within one path component,
``**`` across any number, ``!`` an exception; the last pattern that matches a path decides, and a
pattern that matches a folder matches everything below it."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Pattern:
    regex: re.Pattern[str]
    exclusion: bool
    text: str


def _clean(text: str) -> str:
    cleaned = posixpath.normpath(text.strip())
    return cleaned.lstrip("/") if cleaned not in ("/", ".") else "."


def compile_pattern(pattern: str) -> re.Pattern[str]:
    out = ["^"]
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern.startswith("**", i):
                i += 2
                if pattern.startswith("/", i):
                    out.append("(?:.*/)?")  # **/ : zero or more folders
                    i += 1
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(ch))
            else:
                body = pattern[i + 1:end]
                if body.startswith("^"):
                    body = "!" + body[1:]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
                i = end
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(ch))
        i += 1
    out.append("$")
    return re.compile("".join(out))


def parse(text: str) -> list[Pattern]:
    patterns: list[Pattern] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        if exclusion:
            line = line[1:].strip()
        cleaned = _clean(line)
        if not cleaned or cleaned == ".":
            continue
        patterns.append(Pattern(compile_pattern(cleaned), exclusion, cleaned))
    return patterns


def excluded(path: str, patterns: list[Pattern]) -> bool:
    """Whether ``path`` (relative, ``/``-separated) is left out of the context."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for pattern in patterns:
        if any(pattern.regex.match(p) for p in prefixes):
            result = not pattern.exclusion
    return result
