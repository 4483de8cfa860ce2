"""Docker's health checks as JSON: Config.Healthcheck read from a create body (checked as dockerd's
validateHealthCheck) and merged with an image config's, State.Health and the ``docker ps`` status
suffix rendered, the ``health`` list filter's values."""

from __future__ import annotations

from typing import Any

from services.common.errors import InvalidArgument
from services.dockermodel.fields import integer, string_list
from services.gen.skiff.daemon.v1 import Container, Health, HealthConfig, HealthStatus

MINIMUM_DURATION = 1_000_000  # 1ms, dockerd's containertypes.MinimumDuration
HEALTH_NAMES = {
    HealthStatus.UNSPECIFIED: "none", HealthStatus.STARTING: "starting", HealthStatus.HEALTHY: "healthy",
    HealthStatus.UNHEALTHY: "unhealthy",
}
FILTER_VALUES = ("starting", "healthy", "unhealthy", "none")
# (JSON key, message field, bits) of the numbers, in Docker's order.
NUMBERS = (("Interval", "interval", 64), ("Timeout", "timeout", 64), ("StartPeriod", "start_period", 64),
           ("StartInterval", "start_interval", 64), ("Retries", "retries", 32))


def _field(body: dict[str, Any], key: str) -> Any:
    """A key of the object, matched without regard to case as Go's encoding/json does."""
    if key in body:
        return body[key]
    lowered = key.lower()
    return next((v for k, v in body.items() if isinstance(k, str) and k.lower() == lowered), None)


def healthcheck_from_json(value: Any, where: str = "Healthcheck") -> HealthConfig:
    """A HealthConfig object (a create body's or an image config's); None or absent is "not set"."""
    if value is None:
        return HealthConfig()
    if not isinstance(value, dict):
        raise InvalidArgument(f"invalid {where}: expected an object")
    config = HealthConfig(set=True, test=string_list(_field(value, "Test"), f"{where}.Test", allow_single=False))
    for key, name, bits in NUMBERS:
        setattr(config, name, integer(_field(value, key), f"{where}.{key}", bits=bits))
    return config


def healthcheck_from_request(value: Any) -> HealthConfig:
    """Config.Healthcheck of POST /containers/create, refused as dockerd refuses it (a 400)."""
    config = healthcheck_from_json(value)
    for key, name, _ in NUMBERS:
        number = getattr(config, name)
        if name == "retries":
            if number < 0:
                raise InvalidArgument("Retries in Healthcheck cannot be negative")
        elif number != 0 and number < MINIMUM_DURATION:
            raise InvalidArgument(f"{key} in Healthcheck cannot be less than 1ms")
    return config


def merge_image_healthcheck(config: HealthConfig, image_config: dict[str, Any]) -> HealthConfig:
    """dockerd's merge at create: the image's Healthcheck where the container gives none, and its
    values for the container's unset (zero) fields where it gives one."""
    try:
        image = healthcheck_from_json(image_config.get("Healthcheck"), "image Healthcheck")
    except InvalidArgument:
        return config  # an image config dockerd could not have written: the container's own stands
    if not image.set:
        return config
    if not config.set:
        return image
    merged = HealthConfig().from_dict(config.to_dict())
    if not merged.test:
        merged.test = list(image.test)
    for _, name, _ in NUMBERS:
        if not getattr(merged, name):
            setattr(merged, name, getattr(image, name))
    return merged


def healthcheck_json(config: HealthConfig) -> dict[str, Any] | None:
    """Config.Healthcheck of an inspect (its fields omitted when empty, as Go's omitempty); None: absent."""
    if not config.set:
        return None
    body: dict[str, Any] = {"Test": list(config.test)} if config.test else {}
    for key, name, _ in NUMBERS:
        if getattr(config, name):
            body[key] = getattr(config, name)
    return body


def health_json(health: Health) -> dict[str, Any] | None:
    """State.Health of an inspect; None when the container has no health state."""
    if health.status == HealthStatus.UNSPECIFIED:
        return None
    return {
        "Status": HEALTH_NAMES[health.status],
        "FailingStreak": health.failing_streak,
        "Log": [{"Start": r.start, "End": r.end, "ExitCode": r.exit_code, "Output": r.output}
                for r in health.log] or None,
    }


def health_name(c: Container) -> str:
    """The container's health as the ``health`` filter names it: starting, healthy, unhealthy or none."""
    return HEALTH_NAMES.get(c.state.health.status, "none")


def status_suffix(c: Container) -> str:
    """What ``docker ps`` shows after "Up 3 seconds": " (healthy)", " (health: starting)", or nothing."""
    status = c.state.health.status
    if status == HealthStatus.UNSPECIFIED:
        return ""
    if status == HealthStatus.STARTING:
        return " (health: starting)"
    return f" ({HEALTH_NAMES[status]})"


def check_health_filter(values: list[str]) -> None:
    """The ``health`` filter of GET /containers/json takes only the four names (dockerd 20.10's words)."""
    for value in values:
        if value not in FILTER_VALUES:
            raise InvalidArgument(f"Unrecognised filter value for health: {value}")
