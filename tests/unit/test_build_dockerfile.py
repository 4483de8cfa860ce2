"""The build's pure parts: the Dockerfile parser, Docker's word processing (quotes, escapes,
${VAR:-default}/${VAR:+alt}), .dockerignore patterns, the config-only instructions and their
history lines as dockerd writes them."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
from services.daemon.builds import ignore
from services.daemon.builds import instructions as ins
from services.daemon.builds.builder import split_stages
from services.daemon.builds.dockerfile import ParseError, arg_list, key_values, parse, parse_line
from services.daemon.builds.expand import process_word, process_words


def test_directives_continuations_comments_and_forms() -> None:
    df = parse("# syntax=docker/dockerfile:1\n# escape=`\nFROM busybox\n# a comment\nRUN echo a `\n"
               "  # inside\n  b\nCMD [\"sh\", \"-c\", \"x\"]\nENTRYPOINT top -b\n")
    assert df.escape == "`" and df.directives == {"syntax": "docker/dockerfile:1", "escape": "`"}
    kinds = [i.keyword for i in df.instructions]
    assert kinds == ["from", "run", "cmd", "entrypoint"]
    assert df.instructions[1].rest == "echo a b"
    assert df.instructions[2].json_args == ["sh", "-c", "x"]
    assert df.instructions[3].json_args is None and df.instructions[3].rest == "top -b"


def test_flags_and_errors() -> None:
    copy = parse_line("COPY --from=build --chown=1:2 a b /c/")
    assert copy.flags == {"from": "build", "chown": "1:2"} and copy.rest == "a b /c/"
    with pytest.raises(ParseError, match="unknown instruction: FOO"):
        parse("FROM busybox\nFOO bar\n")
    with pytest.raises(ParseError):
        parse("\n# only a comment\n")
    with pytest.raises(ParseError, match="JSON"):
        parse_line("SHELL /bin/bash -c")
    assert parse_line('RUN ["not json').json_args is None


def test_env_label_arg_lists() -> None:
    assert key_values(parse_line('ENV A=1 B="two words" C=x\\ y')) == [("A", "1"), ("B", '"two words"'),
                                                                       ("C", "x\\ y")]
    assert key_values(parse_line("ENV OLD value with spaces")) == [("OLD", "value with spaces")]
    assert arg_list(parse_line("ARG A B=2")) == [("A", None), ("B", "2")]


def test_word_processing() -> None:
    env = {"A": "1", "EMPTY": ""}
    assert process_word("${A:-x}", env) == "1"
    assert process_word("${EMPTY:-x}", env) == "x"
    assert process_word("${EMPTY-x}", env) == ""
    assert process_word("${MISSING:+y}", env) == ""
    assert process_word("${A:+y}", env) == "y"
    assert process_word("'$A'\"$A\"\\$A$A", env) == "$A1$A1"
    assert process_words('a "b c" $A', env) == ["a", "b c", "1"]
    with pytest.raises(InvalidArgument):
        process_word('"open', env)


def test_dockerignore_rules() -> None:
    patterns = ignore.parse("# c\n*.md\n!README.md\ndata/*.key\n**/tmp\n/build\n")
    assert ignore.excluded("notes.md", patterns)
    assert not ignore.excluded("README.md", patterns)
    assert ignore.excluded("data/x.key", patterns) and not ignore.excluded("data/x.txt", patterns)
    assert ignore.excluded("a/b/tmp/file", patterns) and ignore.excluded("tmp", patterns)
    assert ignore.excluded("build/out/bin", patterns)
    assert not ignore.excluded("sub/notes.md", patterns)  # * stays within one path component


def test_config_instructions_and_history_lines() -> None:
    cfg: dict = {"Cmd": ["sh"]}
    assert ins.apply_cmd(cfg, parse_line('CMD ["cat", "/x"]'), ins.DEFAULT_SHELL) == \
        '/bin/sh -c #(nop)  CMD ["cat" "/x"]'
    assert ins.apply_entrypoint(cfg, parse_line("ENTRYPOINT top"), ins.DEFAULT_SHELL, cmd_set=False) == \
        '/bin/sh -c #(nop)  ENTRYPOINT ["/bin/sh" "-c" "top"]'
    assert cfg["Cmd"] is None
    ins.apply_env(cfg, parse_line("ENV A=1 B=${A}2"), {"A": "0"}, "\\")
    assert cfg["Env"] == ["A=1", "B=02"]
    ins.apply_expose(cfg, parse_line("EXPOSE 80 53/udp 8000-8001"), {}, "\\")
    assert set(cfg["ExposedPorts"]) == {"80/tcp", "53/udp", "8000/tcp", "8001/tcp"}
    line = ins.apply_healthcheck(cfg, parse_line("HEALTHCHECK --interval=5s --retries=3 CMD true"),
                                 ins.DEFAULT_SHELL)
    assert cfg["Healthcheck"] == {"Test": ["CMD-SHELL", "true"], "Interval": 5_000_000_000, "Retries": 3}
    assert line == '/bin/sh -c #(nop)  HEALTHCHECK &{["CMD-SHELL" "true"] "5s" "0s" "0s" "0s" \'\\x03\'}'
    with pytest.raises(InvalidArgument):
        ins.apply_stopsignal(cfg, parse_line("STOPSIGNAL SIGNOPE"), {}, "\\")
    assert ins.parse_duration("1m30s", "interval") == 90_000_000_000


def test_stages_split() -> None:
    head, stages = split_stages(parse("ARG V=1\nFROM busybox AS One\nRUN x\nFROM scratch\n").instructions)
    assert [h.keyword for h in head] == ["arg"]
    assert [s.name for s in stages] == ["one", ""] and len(stages[0].body) == 1
    with pytest.raises(ParseError):
        split_stages(parse("RUN x\n").instructions)


def test_heredocs() -> None:
    df = parse("FROM busybox\nRUN <<EOF\necho one\necho two\nEOF\nCOPY <<-\"A\" <<B /d/\n\tx\n\tA\ny\nB\nCMD x\n")
    run, copy = df.instructions[1], df.instructions[2]
    assert run.heredocs == [("EOF", "echo one\necho two\n")]
    assert copy.heredocs == [("A", "x\n"), ("B", "y\n")]
    assert df.instructions[3].keyword == "cmd"
    with pytest.raises(ParseError, match="unterminated heredoc"):
        parse("FROM busybox\nRUN <<EOF\necho\n")
