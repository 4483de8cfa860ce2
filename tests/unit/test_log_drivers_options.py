"""services/daemon/logdrivers.py: dockerd 20.10's checks of HostConfig.LogConfig at create and at start,
its words, go-units' sizes and Go's number and bool parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.errors import Internal, InvalidArgument
from services.daemon import logdrivers
from services.gen.skiff.daemon.v1 import Container, ContainerConfig, HostConfig


def _record(driver: str, opts: dict[str, str], **config: object) -> Container:
    cfg = ContainerConfig(image="busybox:latest", host=HostConfig(log_driver=driver, log_opts=opts), **config)
    return Container(id="ab" * 32, name="web", config=cfg, image_id="sha256:" + "cd" * 32,
                     path_args=["sh", "-c", "true"], log_path="/x/container.log")


@pytest.mark.parametrize(("text", "decimal", "binary"), [
    ("10", 10, 10), ("10k", 10_000, 10_240), ("10K", 10_000, 10_240), ("1.5m", 1_500_000, 1_572_864),
    ("2g", 2 * 10**9, 2 * 2**30), ("3kb", 3000, 3072), ("3KiB", 3000, 3072), ("4 m", 4_000_000, 4 * 2**20),
    ("7b", 7, 7),
])
def test_human_sizes(text: str, decimal: int, binary: int) -> None:
    assert logdrivers.human_size(text) == decimal
    assert logdrivers.human_size(text, binary=True) == binary


@pytest.mark.parametrize("text", ["", "big", "-1", "1x", "k", "1 kk"])
def test_human_size_refused_with_go_units_words(text: str) -> None:
    with pytest.raises(ValueError, match=f"^invalid size: '{text}'$"):
        logdrivers.human_size(text)


def test_go_atoi_and_parse_bool() -> None:
    assert logdrivers.go_atoi("+5") == 5 and logdrivers.go_atoi("-3") == -3
    for bad in ("", "1.0", "0x10", " 1"):
        with pytest.raises(ValueError, match=f'^strconv.Atoi: parsing "{bad}": invalid syntax$'):
            logdrivers.go_atoi(bad)
    with pytest.raises(ValueError, match="value out of range"):
        logdrivers.go_atoi("9" * 20)
    assert [logdrivers.parse_bool(t) for t in ("1", "t", "TRUE", "True", "0", "F", "false")] == \
        [True, True, True, True, False, False, False]
    assert logdrivers.parse_bool("yes") is None and logdrivers.parse_bool("tRue") is None


def test_check_create() -> None:
    assert logdrivers.check_create("", {"max-file": "100"}) == "json-file"
    assert logdrivers.check_create("none", {"mode": "bogus", "anything": "x"}) == "none"
    assert logdrivers.check_create("local", {"max-size": "nonsense", "mode": "non-blocking",
                                             "max-buffer-size": "4m", "cache-disabled": "true"}) == "local"
    cases = [
        ("json-file", {"zzz": "1", "aaa": "1"}, "unknown log opt 'aaa' for json-file log driver"),
        ("local", {"env": "X"}, "unknown log opt 'env' for log driver local"),
        ("syslog", {}, 'error looking up logging plugin syslog: plugin "syslog" not found'),
        ("asdf", {"mode": "x"}, "logger: logging mode not supported: x"),
        ("json-file", {"mode": "blocking", "max-buffer-size": "1m"},
         "logger: max-buffer-size option is only supported with 'mode=non-blocking'"),
        ("json-file", {"cache-disabled": "nope"}, "invalid value for option cache-disabled: nope"),
    ]
    for driver, opts, message in cases:
        with pytest.raises(InvalidArgument) as caught:
            logdrivers.check_create(driver, opts)
        assert caught.value.message == message


def test_task_log_settings() -> None:
    default = logdrivers.task_log(_record("json-file", {}))
    assert (default.max_size, default.max_file, default.compress, default.format) == (0, 1, False, "")
    alone = logdrivers.task_log(_record("json-file", {"max-file": "100"}))
    assert (alone.max_size, alone.max_file) == (0, 100)  # max-file alone: no rotation, as dockerd
    sized = logdrivers.task_log(_record("json-file", {"max-size": "10k", "max-file": "3", "compress": "1"}))
    assert (sized.max_size, sized.max_file, sized.compress) == (10_000, 3, True)
    local = logdrivers.task_log(_record("local", {}))
    assert (local.max_size, local.max_file, local.compress, local.format) == (20 * 1024 * 1024, 5, True, "local")
    local = logdrivers.task_log(_record("local", {"max-file": "1", "compress": "false", "max-size": "1m"}))
    assert (local.max_size, local.max_file, local.compress) == (1_000_000, 1, False)
    none = logdrivers.task_log(_record("none", {"max-file": "junk"}))
    assert (none.max_size, none.max_file, none.format) == (logdrivers.ATTACH_FEED_SIZE, 2, "")


def test_task_log_refusals_are_failed_starts() -> None:
    with pytest.raises(Internal) as caught:
        logdrivers.task_log(_record("json-file", {"max-file": "0"}))
    assert caught.value.message == "failed to initialize logging driver: max-file cannot be less than 1"
    with pytest.raises(Internal) as caught:
        logdrivers.task_log(_record("local", {"max-file": "-2", "compress": "false"}))
    assert caught.value.message == "failed to initialize logging driver: max file count cannot be less than 0"


def test_json_file_attrs() -> None:
    record = _record("json-file", {"labels": "team,gone", "labels-regex": "^com\\.", "env": "A,MISSING",
                                   "env-regex": "^X_", "tag": "{{.Name}}/{{.ID}} {{.ImageName}} {{ .DaemonName }}"},
                     labels={"team": "blue", "com.x": "1", "other": "2"}, env=["A=1", "X_B=2", "Y=3", "NOVALUE"])
    attrs = logdrivers.task_log(record).attrs
    assert attrs == {"team": "blue", "com.x": "1", "A": "1", "X_B": "2",
                     "tag": f"web/{'ab' * 6} busybox:latest docker"}
    with pytest.raises(Internal, match="can't evaluate field Nope"):
        logdrivers.task_log(_record("json-file", {"tag": "{{.Nope}}"}))


def test_paths() -> None:
    folder, run = Path("/lib/c/ID"), Path("/run/skiff")
    assert logdrivers.log_path("json-file", folder, run, "ID") == "/lib/c/ID/ID-json.log"
    assert logdrivers.log_path("local", folder, run, "ID") == "/lib/c/ID/local-logs/container.log"
    assert logdrivers.log_path("none", folder, run, "ID") == "/run/skiff/daemon/attach/ID.json"
    assert not logdrivers.readable(_record("none", {})) and logdrivers.readable(_record("", {}))
