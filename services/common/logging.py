"""structlog set-up shared by the long-running services (never by the shim or lowlevel)."""

from __future__ import annotations

import logging
import os
import sys

import structlog

LOG_FORMAT_ENV = "SKIFF_LOG_FORMAT"


def setup_logging(service: str, *, level: str = "info", fmt: str | None = None) -> structlog.stdlib.BoundLogger:
    """JSON lines on stderr in production; a console renderer in dev (``SKIFF_LOG_FORMAT=console``)."""
    chosen = fmt or os.environ.get(LOG_FORMAT_ENV) or ("console" if sys.stderr.isatty() else "json")
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=False) if chosen == "console" else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    return structlog.get_logger(service=service)
