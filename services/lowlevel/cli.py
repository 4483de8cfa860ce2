"""skiff-lowlevel's entry point: parse runc's command line (args.py), run one command
(commands.py), report a failure as runc does. Nothing else lives here."""

from __future__ import annotations

import sys

from services.common.errors import SkiffError
from services.lowlevel import log
from services.lowlevel.args import UsageError, parse
from services.lowlevel.prime import prime_for

DEFAULT_ROOT = "/run/skiff/lowlevel"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    prime_for(argv)  # already done by __main__ when launched as a program
    command = ""
    try:
        p = parse(argv)
        command = p.command
        log.setup(p.globals.get("log"), p.globals.get("log_format"), bool(p.globals.get("debug")))
        from services.lowlevel.commands import dispatch

        return dispatch(p, p.globals.get("root") or DEFAULT_ROOT)
    except UsageError as e:
        if e.banner is not None:
            from services.lowlevel import usage

            sys.stdout.write(e.banner + "\n\n" + (usage.command_help(e.command) if e.command else usage.app_help()))
        _fail(e.message, e.kind)
        return e.code
    except SkiffError as e:
        _fail(e.message, e.kind)
    except OSError as e:
        # Untyped: no kind is logged, and the reader falls back to the words.
        _fail(f"{e.strerror or e}{': ' + str(e.filename) if e.filename else ''}", None)
    except KeyboardInterrupt:
        return 130
    # runc exits 1 on a failure, but 255 on a failed exec: a process's own codes stay told apart.
    return 255 if command == "exec" else 1


def _fail(message: str, kind: str | None) -> None:
    """As runc's fatal(): the error goes to the log; when the log is a file, to stderr as well."""
    log.error(message, kind)
    if not log.to_stderr():
        sys.stderr.write(message + "\n")
