"""Health checks without a stack: Config.Healthcheck read and refused as dockerd's, the image's merged in,
State.Health and the ps suffix rendered, the health filter's values, and the monitor's pure parts."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
from services.daemon.health import LimitedOutput, go_duration, probe_command
from services.dockermodel.health import (
    check_health_filter,
    health_json,
    health_name,
    healthcheck_from_request,
    healthcheck_json,
    merge_image_healthcheck,
    status_suffix,
)
from services.dockermodel.request import container_config_from_request
from services.gen.skiff.daemon.v1 import (
    Container,
    ContainerState,
    Health,
    HealthcheckResult,
    HealthConfig,
    HealthStatus,
)

MS = 1_000_000


def test_read_and_echoed() -> None:
    body = {"Test": ["CMD-SHELL", "echo hi"], "Interval": 2 * MS, "Timeout": None, "Retries": 4,
            "StartPeriod": 0, "startinterval": 3 * MS}  # docker-py sends nulls; Go matches keys in any case
    config = healthcheck_from_request(body)
    assert config.set and config.test == ["CMD-SHELL", "echo hi"] and config.start_interval == 3 * MS
    assert healthcheck_json(config) == {"Test": ["CMD-SHELL", "echo hi"], "Interval": 2 * MS, "StartInterval": 3 * MS,
                                        "Retries": 4}
    assert healthcheck_json(healthcheck_from_request(None)) is None
    assert healthcheck_json(healthcheck_from_request({})) == {}
    parsed = container_config_from_request({"Image": "busybox", "Healthcheck": {"Test": ["NONE"]}})
    assert parsed.healthcheck.set and parsed.healthcheck.test == ["NONE"]


@pytest.mark.parametrize(("body", "message"), [
    ({"Interval": 999_999}, "Interval in Healthcheck cannot be less than 1ms"),
    ({"Timeout": 1}, "Timeout in Healthcheck cannot be less than 1ms"),
    ({"StartPeriod": 5}, "StartPeriod in Healthcheck cannot be less than 1ms"),
    ({"StartInterval": 5}, "StartInterval in Healthcheck cannot be less than 1ms"),
    ({"Retries": -1}, "Retries in Healthcheck cannot be negative"),
    ({"Test": "true"}, "invalid Healthcheck.Test: expected a list of strings"),
    ({"Interval": "1s"}, "invalid Healthcheck.Interval: expected an integer"),
    ({"Retries": 2**31}, "invalid Healthcheck.Retries: 2147483648 is out of range"),
    ("true", "invalid Healthcheck: expected an object"),
])
def test_refused_as_dockerd(body: object, message: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        healthcheck_from_request(body)
    assert refused.value.message == message


def test_merge_with_the_image() -> None:
    image = {"Healthcheck": {"Test": ["CMD", "true"], "Interval": 5 * MS, "Timeout": 6 * MS, "Retries": 2}}
    inherited = merge_image_healthcheck(HealthConfig(), image)
    assert healthcheck_json(inherited) == {"Test": ["CMD", "true"], "Interval": 5 * MS, "Timeout": 6 * MS,
                                           "Retries": 2}
    own = HealthConfig(set=True, interval=9 * MS, start_period=7 * MS)
    merged = merge_image_healthcheck(own, image)
    assert healthcheck_json(merged) == {"Test": ["CMD", "true"], "Interval": 9 * MS, "Timeout": 6 * MS,
                                        "StartPeriod": 7 * MS, "Retries": 2}
    assert own.test == []  # the given config is left as it was
    assert merge_image_healthcheck(own, {}) is own
    assert merge_image_healthcheck(own, {"Healthcheck": "garbage"}) is own


def _record(status: HealthStatus) -> Container:
    return Container(state=ContainerState(health=Health(status=status, failing_streak=2, log=[
        HealthcheckResult(start="s", end="e", exit_code=1, output="no\n")])))


def test_state_health_ps_suffix_and_filter_value() -> None:
    unhealthy = _record(HealthStatus.UNHEALTHY)
    assert health_json(unhealthy.state.health) == {
        "Status": "unhealthy", "FailingStreak": 2, "Log": [{"Start": "s", "End": "e", "ExitCode": 1, "Output": "no\n"}]}
    assert health_json(Health(status=HealthStatus.STARTING)) == {"Status": "starting", "FailingStreak": 0, "Log": None}
    assert health_json(Health()) is None
    assert [status_suffix(_record(s)) for s in HealthStatus] == [
        "", " (health: starting)", " (healthy)", " (unhealthy)"]
    assert [health_name(_record(s)) for s in HealthStatus] == ["none", "starting", "healthy", "unhealthy"]
    check_health_filter(["none", "starting", "healthy", "unhealthy"])
    with pytest.raises(InvalidArgument) as refused:
        check_health_filter(["healthy", "sick"])
    assert refused.value.message == "Unrecognised filter value for health: sick"


def test_probe_command() -> None:
    assert probe_command(HealthConfig(test=["CMD", "a", "b"])) == ["a", "b"]
    assert probe_command(HealthConfig(test=["CMD-SHELL", "a && b"])) == ["/bin/sh", "-c", "a && b"]
    assert probe_command(HealthConfig(test=["CMD-SHELL", "a"]), ["/bin/bash", "-ec"]) == ["/bin/bash", "-ec", "a"]
    assert probe_command(HealthConfig(test=["NONE"])) is None
    assert probe_command(HealthConfig(test=[])) is None
    assert probe_command(HealthConfig(test=["WHAT", "x"])) is None


@pytest.mark.parametrize(("ns", "text"), [
    (0, "0s"), (30 * 10**9, "30s"), (1_500_000_000, "1.5s"), (90 * 10**9, "1m30s"), (3600 * 10**9, "1h0m0s"),
    (300 * MS, "300ms"), (1_500_000, "1.5ms"), (1_000, "1µs"), (7, "7ns"), (3_725_250_000_000, "1h2m5.25s"),
])
def test_go_duration(ns: int, text: str) -> None:
    assert go_duration(ns) == text


def test_output_capped() -> None:
    out = LimitedOutput()
    out.write(b"a" * 4000)
    out.write(b"b" * 200)
    out.write(b"c")
    assert out.text() == "a" * 4000 + "b" * 96 + "..."
    small = LimitedOutput()
    small.write("é".encode())
    assert small.text() == "é"
