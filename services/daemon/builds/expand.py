"""Docker's word processing for Dockerfile arguments (its shell lexer): quotes, escapes and variable
substitution (``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:+alt}``,
``${VAR+alt}``) over the build's environment, for the instructions Docker substitutes in (ADD, COPY,
ENV, EXPOSE, FROM, LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR, ARG). RUN, CMD and ENTRYPOINT are left to
the shell, as Docker leaves them."""

from __future__ import annotations

from collections.abc import Mapping

from services.common.errors import InvalidArgument

SUBSTITUTED = frozenset({"add", "copy", "env", "expose", "from", "label", "stopsignal", "user", "volume",
                         "workdir", "arg"})


class _Lexer:
    def __init__(self, text: str, env: Mapping[str, str], escape: str) -> None:
        self.text = text
        self.pos = 0
        self.env = env
        self.escape = escape

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def take(self) -> str:
        ch = self.peek()
        self.pos += 1
        return ch

    def words(self, split: bool) -> list[str]:
        """The text's words (one when not ``split``): quotes removed, escapes and variables applied."""
        out: list[str] = []
        word: list[str] = []
        started = False
        while self.pos < len(self.text):
            ch = self.take()
            if split and ch.isspace():
                if started:
                    out.append("".join(word))
                    word, started = [], False
                continue
            started = True
            if ch == self.escape:
                nxt = self.take()
                word.append(nxt)
            elif ch == "'":
                word.append(self._until("'"))
            elif ch == '"':
                word.append(self._double())
            elif ch == "$":
                word.append(self._variable())
            else:
                word.append(ch)
        if started or not split:
            out.append("".join(word))
        return out

    def _until(self, end: str) -> str:
        start = self.pos
        idx = self.text.find(end, start)
        if idx < 0:
            raise InvalidArgument(f"unexpected end of statement while looking for matching {end}")
        self.pos = idx + 1
        return self.text[start:idx]

    def _double(self) -> str:
        out: list[str] = []
        while True:
            if self.pos >= len(self.text):
                raise InvalidArgument('unexpected end of statement while looking for matching double-quote')
            ch = self.take()
            if ch == '"':
                return "".join(out)
            if ch == self.escape and self.peek() in ('"', "$", self.escape):
                out.append(self.take())
            elif ch == "$":
                out.append(self._variable())
            else:
                out.append(ch)

    def _name(self) -> str:
        start = self.pos
        while self.peek() and (self.peek().isalnum() or self.peek() == "_"):
            self.pos += 1
        return self.text[start:self.pos]

    def _variable(self) -> str:
        if self.peek() == "{":
            self.pos += 1
            name = self._name()
            if not name:
                raise InvalidArgument(f"failed to process \"{self.text}\": missing ':' in substitution")
            op = ""
            if self.peek() == "}":
                self.pos += 1
                return self.env.get(name, "")
            if self.peek() == ":":
                op = self.take()
            kind = self.take()
            if kind not in ("-", "+", "?"):
                raise InvalidArgument(f"failed to process \"{self.text}\": unsupported modifier ({op}{kind}) "
                                      f"in substitution")
            word = self._nested()
            value = self.env.get(name)
            present = value is not None and (op != ":" or value != "")
            if kind == "-":
                return value if present and value is not None else word
            if kind == "+":
                return word if present else ""
            if not present:
                reason = word or "is not allowed to be unset"
                raise InvalidArgument(f"failed to process \"{self.text}\": {name}: {reason}")
            return value or ""
        name = self._name()
        if not name:
            return "$"
        return self.env.get(name, "")

    def _nested(self) -> str:
        """The word of ${NAME:-word} up to its closing brace (variables and quotes inside it applied)."""
        out: list[str] = []
        while True:
            if self.pos >= len(self.text):
                raise InvalidArgument(f"failed to process \"{self.text}\": missing '}}'")
            ch = self.take()
            if ch == "}":
                return "".join(out)
            if ch == self.escape:
                out.append(self.take())
            elif ch == "$":
                out.append(self._variable())
            elif ch == "'":
                out.append(self._until("'"))
            elif ch == '"':
                out.append(self._double())
            else:
                out.append(ch)


def process_word(text: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """One word: quotes removed, escapes and variables applied (spaces kept)."""
    return _Lexer(text, env, escape).words(split=False)[0]


def process_words(text: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """Whitespace-separated words, each processed as process_word."""
    return _Lexer(text, env, escape).words(split=True)


def env_map(env: list[str]) -> dict[str, str]:
    """``["K=V", ...]`` as a mapping (the last one of a key wins)."""
    out: dict[str, str] = {}
    for item in env:
        key, _, value = item.partition("=")
        out[key] = value
    return out
