"""HostConfig's namespace/device/group/swap/link fields (dockermodel.hostconfig), legacy links' variables
(daemon.links.link_env), GroupAdd's gids (daemon.hostopts.with_groups) and prune's filters."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.errors import InvalidArgument
from services.daemon.hostopts import StartContext, apply_spec, devices_of, with_groups
from services.daemon.links import link_env, parse
from services.daemon.removal import selected
from services.dockermodel.hostconfig import inspect_fields
from services.dockermodel.request import container_config_from_request
from services.gen.skiff.daemon.v1 import Container, ContainerConfig, ContainerPruneRequest, DeviceMapping, HostConfig


def _config(host: dict[str, object], **top: object) -> ContainerConfig:
    return container_config_from_request({"Image": "busybox", "HostConfig": host, **top})


def test_fields_read_and_echoed() -> None:
    config = _config({"PidMode": "host", "UTSMode": "host", "CgroupnsMode": "private", "VolumesFrom": ["a:ro"],
                      "DeviceCgroupRules": ["c 7:* rwm"], "GroupAdd": [1000, "users"], "MemorySwap": -1,
                      "MemorySwappiness": 40, "Tmpfs": {"/t": "size=1m"}, "Isolation": "default",
                      "VolumeDriver": "local", "CPURealtimeRuntime": 950, "CPURealtimePeriod": 1000,
                      "Links": ["db:alias"]})
    shown = inspect_fields(Container(name="me", config=config))
    assert shown["PidMode"] == "host" and shown["UTSMode"] == "host" and shown["CgroupnsMode"] == "private"
    assert shown["VolumesFrom"] == ["a:ro"] and shown["DeviceCgroupRules"] == ["c 7:* rwm"]
    assert shown["GroupAdd"] == ["1000", "users"] and shown["MemorySwap"] == -1 and shown["MemorySwappiness"] == 40
    assert shown["Tmpfs"] == {"/t": "size=1m"} and shown["Isolation"] == "default"
    assert shown["CpuRealtimeRuntime"] == 950 and shown["CpuRealtimePeriod"] == 1000
    assert shown["Links"] == ["/db:/me/alias"]
    empty = inspect_fields(Container(name="x", config=_config({})))
    assert empty["MemorySwappiness"] is None and empty["VolumesFrom"] is None and "Tmpfs" not in empty
    assert inspect_fields(Container(name="x", config=_config({"MemorySwappiness": -1})))["MemorySwappiness"] is None
    on_user_net = _config({"NetworkMode": "mynet", "Links": ["db:alias"]})
    assert inspect_fields(Container(name="me", config=on_user_net))["Links"] is None


@pytest.mark.parametrize(("host", "top", "message"), [
    ({"PidMode": "bogus"}, {}, "invalid PID mode"),
    ({"UTSMode": "container:x"}, {}, "invalid UTS mode"),
    ({"CgroupnsMode": "shared"}, {}, "invalid cgroup namespace mode"),
    ({"UTSMode": "host"}, {"Hostname": "h"}, "conflicting options: hostname and the UTS mode"),
    ({"DeviceCgroupRules": ["c 1 rwm"]}, {}, "invalid device cgroup rule format"),
    ({"MemorySwappiness": 101}, {}, "valid memory swappiness range is 0-100"),
    ({"Isolation": "hyperv"}, {}, "Invalid isolation"),
    ({"VolumesFrom": ["x:rx"]}, {}, "invalid mode"),
    ({"Links": ["db:x"], "NetworkMode": "host"}, {}, "host type networking can't be used with links"),
    ({"CpuRealtimeRuntime": 2000, "CpuRealtimePeriod": 1000}, {}, "cannot be higher than cpu real-time period"),
])
def test_refused_as_dockerd(host: dict[str, object], top: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        _config(host, **top)


def test_link_env_as_dockerd() -> None:
    env = link_env("/web/my-db", "10.0.0.2", ["FOO=1", "PATH=/bin", "HOME=/root"],
                   ["5432/tcp", "80/tcp", "81/tcp", "82/udp"])
    assert env[0] == "MY_DB_PORT=tcp://10.0.0.2:80"
    assert "MY_DB_PORT_80_TCP_START=tcp://10.0.0.2:80" in env
    assert "MY_DB_PORT_80_UDP_END=udp://10.0.0.2:82" in env  # Go prints the run's last port's protocol
    assert "MY_DB_PORT_5432_TCP=tcp://10.0.0.2:5432" in env and "MY_DB_PORT_82_UDP_PROTO=udp" in env
    assert env[-2:] == ["MY_DB_NAME=/web/my-db", "MY_DB_ENV_FOO=1"]
    assert parse("/db") == ("db", "db") and parse("db:/x") == ("db", "x")


def test_group_add_gids(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/:/bin/sh\nu:x:1000:1000::/:/bin/sh\n")
    (tmp_path / "etc" / "group").write_text("root:x:0:\nstaff:x:50:u,v\nwheel:x:10:\n")
    assert with_groups({"uid": 0, "gid": 0}, tmp_path, ["1001", "wheel"]) == \
        {"uid": 0, "gid": 0, "additionalGids": [1001, 10]}
    assert with_groups({"uid": 1000, "gid": 1000}, tmp_path, [], "u")["additionalGids"] == [50]
    assert with_groups({"uid": 1000, "gid": 1000}, tmp_path, [], "1000")["additionalGids"] == [50]
    assert "additionalGids" not in with_groups({"uid": 1000, "gid": 7}, tmp_path, [], "u:7")
    with pytest.raises(InvalidArgument, match="Unable to find group nope"):
        with_groups({"uid": 0, "gid": 0}, tmp_path, ["nope"])


def test_spec_namespaces_and_resources() -> None:
    config = _config({"PidMode": "container:abc", "UTSMode": "host", "CgroupnsMode": "host",
                      "DeviceCgroupRules": ["b *:* m"], "MemorySwappiness": 10})
    spec = {"hostname": "h", "process": {"env": ["A=1"]},
            "linux": {"namespaces": [{"type": t} for t in ("mount", "uts", "pid", "ipc", "cgroup")],
                      "resources": {"devices": [{"allow": False, "access": "rwm"}]}}}
    apply_spec(spec, config, StartContext(pid_path="/proc/7/ns/pid", link_env=("X_NAME=/a/x", "A=2")))
    assert spec["linux"]["namespaces"] == [{"type": "mount"}, {"type": "pid", "path": "/proc/7/ns/pid"},
                                           {"type": "ipc"}]
    assert "hostname" not in spec
    assert spec["linux"]["resources"]["devices"][-1] == {"allow": True, "type": "b", "major": -1, "minor": -1,
                                                         "access": "m"}
    assert spec["linux"]["resources"]["memory"]["swappiness"] == 10
    assert spec["process"]["env"] == ["A=1", "X_NAME=/a/x"]  # the container's own A wins


def test_prune_filters() -> None:
    record = Container(created="2020-01-01T00:00:00Z", config=ContainerConfig(labels={"a": "1", "b": "2"},
                                                                               host=HostConfig()))
    assert selected(record, ContainerPruneRequest())
    assert not selected(record, ContainerPruneRequest(until_ns=1_000_000_000))
    assert selected(record, ContainerPruneRequest(label=["a", "b=2"]))
    assert not selected(record, ContainerPruneRequest(label=["a=2"]))
    assert not selected(record, ContainerPruneRequest(label_not=["a"]))
    assert selected(record, ContainerPruneRequest(label_not=["a", "c"]))  # excluded only when all match


def test_ipc_shm_and_oom_options() -> None:
    def spec_of(host: dict[str, object], context: StartContext | None = None) -> dict[str, object]:
        shm = {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "size=65536k"]}
        spec = {"process": {"env": []}, "mounts": [shm],
                "linux": {"namespaces": [{"type": "ipc"}], "resources": {"devices": []}}}
        apply_spec(spec, _config(host), context)
        return spec

    sized = spec_of({"ShmSize": 128 * 1024 * 1024, "OomScoreAdj": 500, "MemoryReservation": 8 << 20,
                     "OomKillDisable": True})
    assert sized["mounts"][0]["options"] == ["nosuid", "size=131072k"]
    assert sized["process"]["oomScoreAdj"] == 500
    assert sized["linux"]["resources"]["memory"] == {"reservation": 8 << 20, "disableOOMKiller": True}
    host = spec_of({"IpcMode": "host"})
    assert host["mounts"][0]["source"] == "/dev/shm" and {"type": "ipc"} not in host["linux"]["namespaces"]
    assert spec_of({"IpcMode": "none"})["mounts"] == []
    joined = spec_of({"IpcMode": "container:x"}, StartContext(ipc_path="/proc/9/ns/ipc"))
    assert {"type": "ipc", "path": "/proc/9/ns/ipc"} in joined["linux"]["namespaces"]
    shown = inspect_fields(Container(name="c", config=_config({"ShmSize": 1 << 20, "IpcMode": "shareable"})))
    assert shown["ShmSize"] == 1 << 20 and shown["IpcMode"] == "shareable" and shown["OomScoreAdj"] == 0
    for host_body, message in (({"IpcMode": "bogus"}, "invalid IPC mode"), ({"ShmSize": -1}, "SHM size"),
                               ({"OomScoreAdj": 1001}, "range for oom score adj"),
                               ({"MemoryReservation": 1024}, "Minimum memory reservation allowed is 6MB"),
                               ({"Memory": 8 << 20, "MemoryReservation": 16 << 20}, "can not be less than memory")):
        with pytest.raises(InvalidArgument, match=message):
            _config(host_body)


def test_devices_from_host_paths() -> None:
    made, allowed = devices_of([DeviceMapping(path_on_host="/dev/null", path_in_container="/dev/n",
                                              cgroup_permissions="rw")])
    assert made[0]["path"] == "/dev/n" and (made[0]["type"], made[0]["major"], made[0]["minor"]) == ("c", 1, 3)
    assert allowed == [{"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"}]
    if Path("/dev/net/tun").exists():  # a folder: every device under it, at the same place inside
        made, _ = devices_of([DeviceMapping(path_on_host="/dev/net", path_in_container="/dev/x")])
        assert "/dev/x/tun" in [d["path"] for d in made]
    with pytest.raises(InvalidArgument, match="error gathering device information"):
        devices_of([DeviceMapping(path_on_host="/dev/no-such-device")])
    with pytest.raises(InvalidArgument, match="invalid device mode"):
        _config({"Devices": [{"PathOnHost": "/dev/null", "CgroupPermissions": "rx"}]})
