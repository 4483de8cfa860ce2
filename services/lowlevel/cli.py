"""skiff-lowlevel's entry point: parse runc's command line (args.py), run one command
(commands.py), report a failure as runc does. Nothing else lives here."""

from __future__ import annotations

import sys

from services.common.errors import SkiffError
from services.lowlevel import log
from services.lowlevel.args import parse
from services.lowlevel.prime import prime_for

DEFAULT_ROOT = "/run/skiff/lowlevel"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    prime_for(argv)  # already done by __main__ when launched as a program
    try:
        p = parse(argv)
        log.setup(p.globals.get("log"), p.globals.get("log_format"), bool(p.globals.get("debug")))
        from services.lowlevel.commands import dispatch

        return dispatch(p, p.globals.get("root") or DEFAULT_ROOT)
    except SkiffError as e:
        return _fail(e.message, e.kind)
    except OSError as e:
        # Untyped: no kind is logged, and the reader falls back to the words.
        return _fail(f"{e.strerror or e}{': ' + str(e.filename) if e.filename else ''}", None)
    except KeyboardInterrupt:
        return 130


def _fail(message: str, kind: str | None) -> int:
    """As runc's fatal(): the error goes to the log; when the log is a file, to stderr as well."""
    log.error(message, kind)
    if not log.to_stderr():
        sys.stderr.write(message + "\n")
    return 1
