"""Health checks as dockerd 20.10+ has them: probes run as execs, State.Health, the start period and
its start interval, timeouts, the image's HEALTHCHECK and --no-healthcheck, health_status events,
``docker ps`` status and its health filter, and checking carried on across container and daemon restarts."""

from __future__ import annotations

import calendar
import json
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.e2e.stack import Stack
from tests.e2e.test_docker_cli import cli
from tests.support.oci_image import build_image, busybox_layer, docker_save_archive
from tests.support.tasks import wait_for

MS = 1_000_000
SECOND = 1000 * MS
needs_cli = pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")


def _health(api: docker.APIClient, container: str) -> dict[str, Any] | None:
    return api.inspect_container(container)["State"].get("Health")


def _status(api: docker.APIClient, container: str) -> str | None:
    health = _health(api, container)
    return health["Status"] if health else None


def _wait_status(api: docker.APIClient, container: str, status: str, timeout: float = 20) -> dict[str, Any]:
    wait_for(lambda: _status(api, container) == status, timeout, f"{container} {status}")
    health = _health(api, container)
    assert health is not None
    return health


def _run(client: docker.DockerClient, name: str, healthcheck: dict[str, Any] | None, image: str = "busybox",
         **kw: Any) -> docker.models.containers.Container:
    return client.containers.run(image, ["sleep", "300"], detach=True, name=name, healthcheck=healthcheck, **kw)


def _run_raw(api: docker.APIClient, name: str, healthcheck: dict[str, Any]) -> str:
    """A create with Config.Healthcheck as given: docker-py's Healthcheck type drops StartInterval."""
    body = {"Image": "busybox", "Cmd": ["sleep", "300"], "Healthcheck": healthcheck}
    created = api._result(api._post_json(api._url("/containers/create"), data=body, params={"name": name}), True)
    api.start(created["Id"])
    return str(created["Id"])


def _seconds(stamp: str) -> float:
    head, _, frac = stamp.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{frac or 0}")


def test_healthy_log_and_probe_records(stack: Stack, client: docker.DockerClient) -> None:
    api = client.api
    box = _run(client, "hc-ok", {"test": ["CMD", "sh", "-c", "echo ok; echo err >&2"], "interval": 100 * MS,
                                 "timeout": 5 * SECOND, "retries": 2})
    check = api.inspect_container(box.id)["Config"]["Healthcheck"]
    assert check == {"Test": ["CMD", "sh", "-c", "echo ok; echo err >&2"], "Interval": 100 * MS,
                     "Timeout": 5 * SECOND, "Retries": 2}
    health = _wait_status(api, box.id, "healthy")
    assert health["FailingStreak"] == 0
    first = health["Log"][0]
    assert first["ExitCode"] == 0 and sorted(first["Output"].splitlines()) == ["err", "ok"]
    assert _seconds(first["Start"]) <= _seconds(first["End"])
    # The log keeps the last 5 results only, oldest first.
    wait_for(lambda: len(_health(api, box.id)["Log"]) == 5, 20, "five results")  # type: ignore[index]
    wait_for(lambda: _health(api, box.id)["Log"][0]["Start"] != first["Start"], 20, "the log rolls")  # type: ignore[index]
    log = _health(api, box.id)["Log"]  # type: ignore[index]
    assert len(log) == 5 and [e["Start"] for e in log] == sorted(e["Start"] for e in log)
    # Probes are execs nobody inspects: no record of them is kept (none listed, none on disk).
    assert api.inspect_container(box.id)["ExecIDs"] is None
    box.stop(timeout=0)
    records = stack.paths.daemon_lib / "execs"
    wait_for(lambda: not list(records.glob("*.json")) if records.exists() else True, 10, "probe records gone")
    # A stopped container's health reads unhealthy, as dockerd's.
    assert _status(api, box.id) == "unhealthy"


def test_unhealthy_after_retries_and_back(stack: Stack, client: docker.DockerClient) -> None:
    api = client.api
    box = _run(client, "hc-flip", {"test": "test -e /ok", "interval": 100 * MS, "retries": 3})
    seen: list[tuple[str, int]] = []

    def unhealthy() -> bool:
        health = _health(api, box.id)
        if health:
            seen.append((health["Status"], health["FailingStreak"]))
        return bool(health) and health["Status"] == "unhealthy"

    wait_for(unhealthy, 20, "unhealthy")
    # Starting until the third failure in a row, then unhealthy.
    assert all(status == "starting" for status, streak in seen if streak < 3), seen
    health = _health(api, box.id)
    assert health is not None and health["FailingStreak"] >= 3
    assert all(e["ExitCode"] == 1 for e in health["Log"])
    box.exec_run(["touch", "/ok"])
    health = _wait_status(api, box.id, "healthy")
    assert health["FailingStreak"] == 0 and health["Log"][-1]["ExitCode"] == 0


def test_timeout_and_output_cap(stack: Stack, client: docker.DockerClient) -> None:
    api = client.api
    slow = _run(client, "hc-slow", {"test": "echo started; sleep 30", "interval": 100 * MS,
                                    "timeout": 500 * MS, "retries": 1})
    loud = _run(client, "hc-loud", {"test": "head -c 10000 /dev/zero | tr '\\0' x", "interval": 100 * MS,
                                    "retries": 1})
    health = _wait_status(api, slow.id, "unhealthy")
    result = health["Log"][0]
    assert result["ExitCode"] == -1
    assert result["Output"] == "Health check exceeded timeout (500ms): started\n"
    # The probe was killed at its timeout: its result came well before the sleep's end, and killed
    # probes do not pile up (one probe at a time: its shell and its sleep at most).
    assert _seconds(result["End"]) - _seconds(result["Start"]) < 10
    wait_for(lambda: len(_health(api, slow.id)["Log"]) >= 3, 20, "three timed-out probes")  # type: ignore[index]
    for _ in range(5):
        assert sum("sleep 30" in p[-1] for p in slow.top()["Processes"]) <= 2
    output = _wait_status(api, loud.id, "healthy")["Log"][0]["Output"]
    assert output == "x" * 4096 + "..."


def test_start_period_and_start_interval(stack: Stack, client: docker.DockerClient) -> None:
    api = client.api
    # Failures during the start period do not count (retries 1 would otherwise make it unhealthy), and
    # probes then come every start interval, not every interval.
    box = client.containers.get(_run_raw(api, "hc-start", {
        "Test": ["CMD-SHELL", "test -e /ok"], "Interval": 3 * SECOND, "Retries": 1, "StartPeriod": 120 * SECOND,
        "StartInterval": 100 * MS}))
    assert api.inspect_container(box.id)["Config"]["Healthcheck"]["StartInterval"] == 100 * MS
    wait_for(lambda: len((_health(api, box.id) or {}).get("Log") or []) >= 2, 20, "two probes")
    health = _health(api, box.id)
    assert health is not None and health["Status"] == "starting" and health["FailingStreak"] == 0
    first, second = health["Log"][0], health["Log"][1]
    assert first["ExitCode"] == 1 and _seconds(second["Start"]) - _seconds(first["End"]) < 2
    # A success ends the start period: the next failure counts, within the period as it is.
    box.exec_run(["touch", "/ok"])
    _wait_status(api, box.id, "healthy")
    box.exec_run(["rm", "/ok"])
    health = _wait_status(api, box.id, "unhealthy")
    assert health["FailingStreak"] == 1


def _image_with_healthcheck(client: docker.DockerClient, workdir: Path) -> str:
    # Its SHELL runs CMD-SHELL probes (dockerd's getShell): here an echo that shows what it was given.
    config = {"Cmd": ["sh"], "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
              "Shell": ["/bin/echo", "shell:"],
              "Healthcheck": {"Test": ["CMD-SHELL", "echo from-image"], "Interval": 100 * MS, "Retries": 2}}
    image = build_image([busybox_layer(workdir)], config_extra={"config": config})
    archive = docker_save_archive(image, "hc-image:latest", workdir / "hc-image.tar")
    client.images.load(archive.read_bytes())
    return "hc-image:latest"


def test_image_healthcheck_inherited_merged_and_disabled(stack: Stack, client: docker.DockerClient,
                                                         tmp_path: Path) -> None:
    api = client.api
    image = _image_with_healthcheck(client, tmp_path)
    inherited = _run(client, "hc-inherit", None, image=image)
    assert api.inspect_container(inherited.id)["Config"]["Healthcheck"] == {
        "Test": ["CMD-SHELL", "echo from-image"], "Interval": 100 * MS, "Retries": 2}
    assert _wait_status(api, inherited.id, "healthy")["Log"][0]["Output"] == "shell: echo from-image\n"
    # The container's non-zero fields win, its zero ones come from the image.
    merged = _run(client, "hc-merge", {"interval": 200 * MS, "timeout": 2 * SECOND}, image=image)
    assert api.inspect_container(merged.id)["Config"]["Healthcheck"] == {
        "Test": ["CMD-SHELL", "echo from-image"], "Interval": 200 * MS, "Timeout": 2 * SECOND, "Retries": 2}
    _wait_status(api, merged.id, "healthy")
    disabled = _run(client, "hc-none", {"test": ["NONE"]}, image=image)
    # dockerd's merge fills the zero fields whatever the test, NONE too: still no probe.
    assert api.inspect_container(disabled.id)["Config"]["Healthcheck"] == {"Test": ["NONE"], "Interval": 100 * MS,
                                                                           "Retries": 2}
    assert "Health" not in api.inspect_container(disabled.id)["State"]
    plain = _run(client, "hc-plain", None)
    assert "Healthcheck" not in api.inspect_container(plain.id)["Config"]
    assert "Health" not in api.inspect_container(plain.id)["State"]
    names = {c["Names"][0] for c in api.containers(filters={"health": "none"})}
    assert names == {"/hc-none", "/hc-plain"}


def test_bad_healthchecks_refused(stack: Stack, client: docker.DockerClient) -> None:
    api = client.api
    for check, message in (({"test": "true", "interval": 10}, "Interval in Healthcheck cannot be less than 1ms"),
                           ({"test": "true", "timeout": 999}, "Timeout in Healthcheck cannot be less than 1ms"),
                           ({"test": "true", "start_period": 5}, "StartPeriod in Healthcheck cannot be less than 1ms"),
                           ({"test": "true", "retries": -1}, "Retries in Healthcheck cannot be negative")):
        with pytest.raises(docker.errors.APIError) as refused:
            api.create_container("busybox", ["true"], healthcheck=check)
        assert refused.value.status_code == 400 and message in str(refused.value.explanation)
    with pytest.raises(docker.errors.APIError) as refused:
        _run_raw(api, "hc-refused", {"Test": ["CMD", "true"], "StartInterval": 5})
    assert refused.value.status_code == 400
    assert "StartInterval in Healthcheck cannot be less than 1ms" in str(refused.value.explanation)
    with pytest.raises(docker.errors.APIError) as bad_filter:
        api.containers(filters={"health": "bogus"})
    assert bad_filter.value.status_code == 400
    assert "Unrecognised filter value for health: bogus" in str(bad_filter.value.explanation)
    assert api.containers(all=True) == []


@needs_cli
def test_cli_flags_ps_status_filter_and_events(stack: Stack, client: docker.DockerClient) -> None:
    since = time.time()
    made = cli(stack, "run", "-d", "--name", "hc-good", "--health-cmd", "true", "--health-interval", "100ms",
               "--health-timeout", "2s", "--health-retries", "1", "--health-start-period", "1s",
               "--health-start-interval", "50ms", "busybox", "sleep", "300")
    assert made.returncode == 0, made.stderr
    check = client.api.inspect_container("hc-good")["Config"]["Healthcheck"]
    assert check == {"Test": ["CMD-SHELL", "true"], "Interval": 100 * MS, "Timeout": 2 * SECOND,
                     "StartPeriod": SECOND, "StartInterval": 50 * MS, "Retries": 1}
    for args in (("--name", "hc-bad", "--health-cmd", "false", "--health-interval", "100ms",
                  "--health-retries", "1"),
                 ("--name", "hc-wait", "--health-cmd", "true", "--health-interval", "1h"),
                 ("--name", "hc-off", "--no-healthcheck")):
        made = cli(stack, "run", "-d", *args, "busybox", "sleep", "300")
        assert made.returncode == 0, made.stderr
    api = client.api
    _wait_status(api, "hc-good", "healthy")
    _wait_status(api, "hc-bad", "unhealthy")
    ps = cli(stack, "ps", "--format", "{{.Names}}|{{.Status}}")
    assert ps.returncode == 0, ps.stderr
    status = dict(line.split("|") for line in ps.stdout.splitlines())
    assert status["hc-good"].startswith("Up ") and status["hc-good"].endswith(" (healthy)")
    assert status["hc-bad"].endswith(" (unhealthy)")
    assert status["hc-wait"].endswith(" (health: starting)")
    assert "(" not in status["hc-off"]
    for value, expected in (("healthy", ["hc-good"]), ("unhealthy", ["hc-bad"]), ("starting", ["hc-wait"]),
                            ("none", ["hc-off"])):
        listed = cli(stack, "ps", "--filter", f"health={value}", "--format", "{{.Names}}")
        assert listed.returncode == 0 and listed.stdout.split() == expected, (value, listed.stdout, listed.stderr)
    refused = cli(stack, "ps", "--filter", "health=bogus")
    assert refused.returncode != 0 and "Unrecognised filter value for health: bogus" in refused.stderr
    events = cli(stack, "events", "--since", f"{since:.3f}", "--until", f"{time.time():.3f}",
                 "--filter", "event=health_status", "--format", "{{json .}}")
    assert events.returncode == 0, events.stderr
    seen = [(e["Actor"]["Attributes"]["name"], e["Action"]) for e in map(json.loads, events.stdout.splitlines())]
    assert ("hc-good", "health_status: healthy") in seen and ("hc-bad", "health_status: unhealthy") in seen
    assert all(name in ("hc-good", "hc-bad") for name, _ in seen), seen


def test_health_across_container_restarts(stack: Stack, client: docker.DockerClient) -> None:
    api = client.api
    since = int(time.time())
    box = _run(client, "hc-restart", {"test": "true", "interval": 1500 * MS, "retries": 1})
    log = _wait_status(api, box.id, "healthy")["Log"]
    box.restart(timeout=0)
    # Reset at each start as dockerd's: starting, streak 0, the log kept; then checked again.
    health = _health(api, box.id)
    assert health is not None and health["Status"] == "starting" and health["Log"][:len(log)] == log
    _wait_status(api, box.id, "healthy")
    # A restart policy's restart re-arms the monitor too: the first run exits once healthy.
    policy = client.containers.run(
        "busybox", ["sh", "-c", "if [ -e /ran ]; then exec sleep 300; fi; touch /ran; "
                                "while [ ! -e /go ]; do sleep 0.05; done; exit 3"],
        detach=True, name="hc-policy", restart_policy={"Name": "on-failure"},
        healthcheck={"test": "true", "interval": 100 * MS, "retries": 1})
    _wait_status(api, policy.id, "healthy")
    policy.exec_run(["touch", "/go"])
    wait_for(lambda: api.inspect_container(policy.id)["RestartCount"] == 1, 20, "the policy's restart")
    wait_for(lambda: api.inspect_container(policy.id)["State"]["Running"], 20, "running again")
    healthy = client.api.events(since=since, until=int(time.time()) + 30, decode=True,
                                filters={"event": "health_status", "container": policy.id})
    try:
        count = 0
        for event in healthy:
            count += event["Action"] == "health_status: healthy"
            if count == 2:
                break
    finally:
        healthy.close()
    assert count == 2
    assert _status(api, policy.id) == "healthy"


def test_pause_stops_probes(stack: Stack, client: docker.DockerClient) -> None:
    api = client.api
    box = _run(client, "hc-pause", {"test": "true", "interval": 100 * MS, "retries": 1})
    _wait_status(api, box.id, "healthy")
    box.pause()
    paused = time.time()
    # A paused container's monitor stops and its health reads unhealthy, as dockerd's; no event for it.
    assert _status(api, box.id) == "unhealthy"
    ps = api.containers(filters={"health": "unhealthy"})
    assert [c["Id"] for c in ps] == [box.id] and ps[0]["Status"].endswith("(Paused)")
    resumed = time.time()
    box.unpause()
    # Probes again once unpaused; none ran (none was recorded) while it was paused.
    health = _wait_status(api, box.id, "healthy")
    assert not [e for e in health["Log"] if paused < _seconds(e["Start"]) < resumed], health["Log"]
    assert _seconds(health["Log"][-1]["Start"]) > resumed


def test_health_across_daemon_restart(stack: Stack, client: docker.DockerClient) -> None:
    api = client.api
    box = _run(client, "hc-daemon", {"test": "test ! -e /bad", "interval": 100 * MS, "retries": 1})
    stopped = _run(client, "hc-stopped", {"test": "true", "interval": 100 * MS})
    _wait_status(api, box.id, "healthy")
    _wait_status(api, stopped.id, "healthy")
    stopped.stop(timeout=0)
    daemon = stack.procs["services.daemon"]
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(10)
    stack.start("services.daemon")
    restored = docker.DockerClient(base_url=stack.base_url, timeout=30)
    try:
        api = restored.api
        restarted = time.time()
        wait_for(lambda: _ping(restored), 20, "the daemon back")
        # The status carried over, and probes go on after the restart.
        assert _status(api, box.id) == "healthy"
        assert _status(api, stopped.id) == "unhealthy"
        wait_for(lambda: _seconds(_health(api, box.id)["Log"][-1]["Start"]) > restarted, 20,  # type: ignore[index]
                 "a probe after the restart")
        restored.containers.get(box.id).exec_run(["touch", "/bad"])
        health = _wait_status(api, box.id, "unhealthy")
        assert health["Log"][-1]["ExitCode"] == 1
    finally:
        restored.close()


def _ping(client: docker.DockerClient) -> bool:
    try:
        client.api.containers()
    except docker.errors.APIError:
        return False
    return True
