"""Log drivers as dockerd 20.10 has them (issue 11): none, json-file's options (max-file alone, compress,
labels/env/tag, bad values), the local driver's file format, rotation and reading, unknown drivers, and
what docker info lists. docker-py throughout; the docker CLI where it is installed."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import docker
import pytest
from docker.types import LogConfig

from services.daemon import locallog
from tests.e2e.stack import Stack
from tests.support.tasks import wait_for

HAS_CLI = shutil.which("docker") is not None
needs_cli = pytest.mark.skipif(not HAS_CLI, reason="docker CLI not installed")


def cli(stack: Stack, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DOCKER_HOST=stack.base_url, DOCKER_CONFIG=str(stack.prefix / "docker-config"))
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, env=env)


def _create(client: docker.DockerClient, cmd: str, driver: str, config: dict[str, str] | None = None,
            **kwargs: object) -> str:
    host = client.api.create_host_config(log_config=LogConfig(type=driver, config=config or {}))
    return client.api.create_container("busybox", ["sh", "-c", cmd], host_config=host, **kwargs)["Id"]


def _run(client: docker.DockerClient, cmd: str, driver: str, config: dict[str, str] | None = None,
         **kwargs: object) -> str:
    container_id = _create(client, cmd, driver, config, **kwargs)
    client.api.start(container_id)
    assert client.api.wait(container_id, timeout=30)["StatusCode"] == 0
    return container_id


def _folder(stack: Stack, container_id: str) -> Path:
    return stack.paths.daemon_lib / "containers" / container_id


def _api_error(call: object, *args: object, **kwargs: object) -> docker.errors.APIError:
    with pytest.raises(docker.errors.APIError) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    return caught.value


# ---- none ----


def test_none_driver_writes_nothing_and_logs_answer_501(stack: Stack, client: docker.DockerClient) -> None:
    # docker-py's run returns no output for a driver it cannot read, as with dockerd.
    assert client.containers.run("busybox", "echo hello", log_config={"type": "none"}) is None
    container_id = _create(client, "echo out; echo err >&2", "none")
    stream = client.api.attach(container_id, stdout=True, stderr=True, stream=True, logs=False)
    client.api.start(container_id)
    attached = b"".join(stream)
    assert sorted(attached.split()) == [b"err", b"out"]  # attach still works
    assert client.api.wait(container_id, timeout=30)["StatusCode"] == 0
    info = client.api.inspect_container(container_id)
    assert info["HostConfig"]["LogConfig"] == {"Type": "none", "Config": {}}
    assert info["LogPath"] == ""
    error = _api_error(client.api.logs, container_id)
    assert error.status_code == 501
    assert error.explanation == "configured logging driver does not support reading"
    assert not [p for p in _folder(stack, container_id).rglob("*") if "log" in p.name]
    client.api.remove_container(container_id)
    assert not list((stack.paths.run / "daemon" / "attach").glob(f"{container_id}*"))


def test_none_driver_takes_any_option(client: docker.DockerClient) -> None:
    container_id = _run(client, "true", "none", {"max-file": "bogus", "whatever": "x"})
    assert client.api.inspect_container(container_id)["HostConfig"]["LogConfig"]["Config"] == \
        {"max-file": "bogus", "whatever": "x"}


@needs_cli
def test_none_driver_cli(stack: Stack, client: docker.DockerClient) -> None:
    run = cli(stack, "run", "--name", "quiet", "--log-driver", "none", "busybox", "echo", "hi")
    assert run.returncode == 0 and run.stdout == "hi\n", run.stderr
    logs = cli(stack, "logs", "quiet")
    assert logs.returncode != 0
    assert "configured logging driver does not support reading" in logs.stderr


# ---- json-file ----


def test_json_file_max_file_without_max_size(stack: Stack, client: docker.DockerClient) -> None:
    container_id = _run(client, "echo one; echo two", "json-file", {"max-file": "100"})
    info = client.api.inspect_container(container_id)
    assert info["HostConfig"]["LogConfig"] == {"Type": "json-file", "Config": {"max-file": "100"}}
    assert client.api.logs(container_id) == b"one\ntwo\n"
    assert info["LogPath"].endswith(f"{container_id}-json.log") and not os.path.exists(info["LogPath"] + ".1")
    # The default driver with options: Type "" is json-file's.
    other = _run(client, "true", "", {"max-file": "100"})
    assert client.api.inspect_container(other)["HostConfig"]["LogConfig"] == \
        {"Type": "json-file", "Config": {"max-file": "100"}}
    plain = _run(client, "true", "json-file", None)
    assert client.api.inspect_container(plain)["HostConfig"]["LogConfig"] == {"Type": "json-file", "Config": {}}


@pytest.mark.parametrize(("config", "message"), [
    ({"foo": "bar"}, "unknown log opt 'foo' for json-file log driver"),
    ({"mode": "bogus"}, "logger: logging mode not supported: bogus"),
    ({"max-buffer-size": "1m"}, "logger: max-buffer-size option is only supported with 'mode=non-blocking'"),
    ({"mode": "non-blocking", "max-buffer-size": "lots"},
     "error parsing option max-buffer-size: invalid size: 'lots'"),
    ({"cache-disabled": "maybe"}, "invalid value for option cache-disabled: maybe"),
])
def test_json_file_refused_at_create(client: docker.DockerClient, config: dict[str, str], message: str) -> None:
    error = _api_error(_create, client, "true", "json-file", config)
    assert error.status_code == 400
    assert error.explanation == message


@pytest.mark.parametrize(("config", "message"), [
    ({"max-file": "0"}, "max-file cannot be less than 1"),
    ({"max-file": "x"}, 'strconv.Atoi: parsing "x": invalid syntax'),
    ({"max-size": "big"}, "invalid size: 'big'"),
    ({"max-size": "0"}, "max-size must be a positive number"),
    ({"compress": "yes"}, 'strconv.ParseBool: parsing "yes": invalid syntax'),
    ({"compress": "true", "max-file": "3"},
     "compress cannot be true when max-file is less than 2 or max-size is not set"),
    ({"compress": "true", "max-size": "1k"},
     "compress cannot be true when max-file is less than 2 or max-size is not set"),
])
def test_json_file_bad_values_fail_the_start(client: docker.DockerClient, config: dict[str, str],
                                             message: str) -> None:
    # dockerd reads the values when the logger starts: the create passes, the start answers 500.
    container_id = _create(client, "true", "json-file", config)
    error = _api_error(client.api.start, container_id)
    assert error.status_code == 500
    assert error.explanation == f"failed to initialize logging driver: {message}"
    assert client.api.inspect_container(container_id)["State"]["Running"] is False


def test_json_file_compress_labels_env_tag(stack: Stack, client: docker.DockerClient) -> None:
    config = {"max-size": "1k", "max-file": "3", "compress": "true", "labels": "team,absent", "env": "STAGE",
              "env-regex": "^X_", "tag": "{{.Name}}/{{.ID}}", "mode": "non-blocking", "max-buffer-size": "4m"}
    container_id = _run(client, "i=0; while [ $i -lt 200 ]; do echo line-$i; i=$((i+1)); done", "json-file",
                        config, labels={"team": "blue", "other": "x"}, environment=["STAGE=prod", "X_A=1", "Y=2"],
                        name="tagged")
    info = client.api.inspect_container(container_id)
    assert info["HostConfig"]["LogConfig"]["Config"] == config
    path = Path(info["LogPath"])
    wait_for(lambda: not path.with_name(path.name + ".1").exists(), 10, "the rotated file compressed")
    assert path.with_name(path.name + ".1.gz").exists() and path.with_name(path.name + ".2.gz").exists()
    rotated = gzip.decompress(path.with_name(path.name + ".1.gz").read_bytes()).decode().splitlines()
    entry = json.loads(rotated[0])
    assert list(entry) == ["log", "stream", "attrs", "time"]
    assert entry["attrs"] == {"team": "blue", "STAGE": "prod", "X_A": "1", "tag": f"tagged/{container_id[:12]}"}
    lines = client.api.logs(container_id).decode().splitlines()
    # Three files of 1 KB: the newest lines, in order, none lost between the files.
    assert lines == [f"line-{i}" for i in range(200 - len(lines), 200)] and len(lines) > 10


@needs_cli
def test_json_file_cli_max_file_alone(stack: Stack, client: docker.DockerClient) -> None:
    run = cli(stack, "run", "--rm", "--log-opt", "max-file=3", "busybox", "echo", "hi")
    assert run.returncode == 0 and run.stdout == "hi\n", run.stderr
    bad = cli(stack, "run", "--rm", "--log-opt", "max-file=0", "busybox", "true")
    assert bad.returncode != 0
    assert "failed to initialize logging driver: max-file cannot be less than 1" in bad.stderr


# ---- local ----


def _local_file(stack: Stack, container_id: str) -> Path:
    return _folder(stack, container_id) / "local-logs" / "container.log"


def test_local_driver_format_and_logs(stack: Stack, client: docker.DockerClient) -> None:
    container_id = _run(client, "echo out-1; echo err-1 >&2; echo out-2; printf tail", "local")
    info = client.api.inspect_container(container_id)
    assert info["HostConfig"]["LogConfig"] == {"Type": "local", "Config": {}}
    assert info["LogPath"] == ""  # dockerd keeps the local driver's file private
    data = _local_file(stack, container_id).read_bytes()
    messages, used = locallog.split(data)
    assert used == len(data)
    records = [locallog.decode_entry(m) for m in messages]
    assert sorted((r.source, r.line) for r in records) == \
        [("stderr", b"err-1"), ("stdout", b"out-1"), ("stdout", b"out-2"), ("stdout", b"tail")]
    assert [r.partial for r in records if r.line == b"tail"] == [True]
    assert client.api.logs(container_id, stderr=False) == b"out-1\nout-2\ntail"
    assert client.api.logs(container_id, stdout=False) == b"err-1\n"
    assert client.api.logs(container_id, tail=1) == b"tail"
    stamped = client.api.logs(container_id, timestamps=True, stderr=False).decode().splitlines()
    assert [line.split(" ", 1)[1] for line in stamped] == ["out-1", "out-2", "tail"]
    moment = datetime.strptime(stamped[0].split(" ")[0][:26], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC)
    assert abs(moment.timestamp() - time.time()) < 60


def test_local_driver_rotates_compressed_and_reads_across(stack: Stack, client: docker.DockerClient) -> None:
    count = 600
    container_id = _run(client, f"i=0; while [ $i -lt {count} ]; do echo line-$i; i=$((i+1)); done", "local",
                        {"max-size": "2k", "max-file": "4"})
    log = _local_file(stack, container_id)
    wait_for(lambda: not Path(f"{log}.1").exists(), 10, "the rotated file compressed")
    names = sorted(p.name for p in log.parent.iterdir())
    assert names == ["container.log", "container.log.1.gz", "container.log.2.gz", "container.log.3.gz"]
    lines = client.api.logs(container_id).decode().splitlines()
    assert lines == [f"line-{i}" for i in range(count - len(lines), count)] and len(lines) > 100
    assert client.api.logs(container_id, tail=5).decode().splitlines() == [f"line-{i}" for i in range(count - 5, count)]
    # Without compression: plain rotated files.
    plain = _run(client, f"i=0; while [ $i -lt {count} ]; do echo line-$i; i=$((i+1)); done", "local",
                 {"max-size": "2k", "max-file": "2", "compress": "false"})
    names = sorted(p.name for p in _local_file(stack, plain).parent.iterdir())
    assert names == ["container.log", "container.log.1"]


def test_local_driver_follow_since_until(stack: Stack, client: docker.DockerClient) -> None:
    container_id = _create(client, "echo early; sleep 1.2; echo late; sleep 0.5; echo last", "local")
    client.api.start(container_id)
    followed = b"".join(client.api.logs(container_id, stream=True, follow=True))
    assert followed == b"early\nlate\nlast\n"
    stamped = client.api.logs(container_id, timestamps=True).decode().splitlines()
    times = [datetime.strptime(s.split(" ")[0][:26], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC)
             for s in stamped]
    middle = (times[0].timestamp() + times[1].timestamp()) / 2
    assert client.api.logs(container_id, since=middle) == b"late\nlast\n"
    assert client.api.logs(container_id, until=middle) == b"early\n"


@pytest.mark.parametrize(("config", "create_error", "start_error"), [
    ({"labels": "a"}, "unknown log opt 'labels' for log driver local", None),
    ({"compress": "true", "max-file": "1"}, None, "compression cannot be enabled when max file count is 1"),
    ({"max-file": "1"}, None, "compression cannot be enabled when max file count is 1"),
    ({"max-file": "-1", "compress": "false"}, None, "max file count cannot be less than 0"),
    ({"max-size": "huge"}, None, "invalid value for max-size: huge: invalid size: 'huge'"),
    ({"max-file": "many"}, None, 'invalid value for max-file: many: strconv.Atoi: parsing "many": invalid syntax'),
    ({"compress": "no"}, None, 'error reading compress log option: strconv.ParseBool: parsing "no": invalid syntax'),
])
def test_local_driver_options_checked(client: docker.DockerClient, config: dict[str, str], create_error: str | None,
                                      start_error: str | None) -> None:
    if create_error:
        error = _api_error(_create, client, "true", "local", config)
        assert (error.status_code, error.explanation) == (400, create_error)
        return
    container_id = _create(client, "true", "local", config)
    error = _api_error(client.api.start, container_id)
    assert (error.status_code, error.explanation) == (500, f"failed to initialize logging driver: {start_error}")


@needs_cli
def test_local_driver_cli(stack: Stack, client: docker.DockerClient) -> None:
    run = cli(stack, "run", "--name", "loc", "--log-driver", "local", "--log-opt", "max-size=10m", "busybox",
              "sh", "-c", "echo a; echo b")
    assert run.returncode == 0 and run.stdout == "a\nb\n", run.stderr  # attached through the local file
    logs = cli(stack, "logs", "--tail", "1", "loc")
    assert logs.returncode == 0 and logs.stdout == "b\n", logs.stderr
    fmt = cli(stack, "inspect", "-f", "{{.HostConfig.LogConfig.Type}} {{json .HostConfig.LogConfig.Config}}", "loc")
    assert fmt.stdout.strip() == 'local {"max-size":"10m"}'


# ---- unknown drivers, docker info ----


def test_unknown_driver_refused(client: docker.DockerClient) -> None:
    for driver in ("asdf", "syslog"):
        error = _api_error(_create, client, "true", driver)
        assert error.status_code == 400
        assert error.explanation == f'error looking up logging plugin {driver}: plugin "{driver}" not found'
    assert client.api.containers(all=True) == []


def test_info_lists_the_drivers(stack: Stack, client: docker.DockerClient) -> None:
    info = client.info()
    assert info["LoggingDriver"] == "json-file"
    assert info["Plugins"]["Log"] == ["json-file", "local"]
    if HAS_CLI:
        out = cli(stack, "info", "--format", "{{.LoggingDriver}} {{json .Plugins.Log}}")
        assert out.stdout.strip() == 'json-file ["json-file","local"]', out.stderr
        run = cli(stack, "run", "--rm", "--log-driver", "asdf", "busybox", "true")
        assert run.returncode != 0 and 'error looking up logging plugin asdf: plugin "asdf" not found' in run.stderr

