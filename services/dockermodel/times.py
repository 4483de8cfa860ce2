"""Docker's times: RFC 3339 with nanoseconds in, UNIX seconds out, and the CLI's human durations."""

from __future__ import annotations

from datetime import datetime

ZERO_TIME = "0001-01-01T00:00:00Z"


def parse_time(value: str) -> float:
    """RFC 3339 (nanoseconds allowed) to a UNIX time; 0 when empty or unparsable."""
    if not value:
        return 0.0
    try:
        head, _, frac = value.rstrip("Z").partition(".")
        base = datetime.fromisoformat(head + "+00:00").timestamp()
        return base + (float(f"0.{frac}") if frac.isdigit() else 0.0)
    except ValueError:
        return 0.0


def human_duration(seconds: float) -> str:
    """Docker's units.HumanDuration, approximately."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(s / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    return f"{s // 86400} days"


def human_duration_next(seconds: float) -> float:
    """A duration no later than the next one at which :func:`human_duration`'s text changes (a kept
    text is good until then): whole seconds below a minute, whole minutes below an hour, then half hours."""
    s = int(seconds)
    if s < 60:
        return s + 1
    if s < 3600:
        return (s // 60 + 1) * 60
    return (s // 1800 + 1) * 1800
