"""``skiff soak`` end to end: a faulted soak of a private engine loses nothing; a fault made to lose
something on purpose is reported and fails the run; and the engine bugs the soak found, each pinned
by a deterministic test of its own."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest
import requests

from services.soak.engine import Engine, cgroup_parent_of, processes_mentioning
from tests.conftest import needs_root
from tests.e2e.stack import Stack, busybox_archive
from tests.support.tasks import wait_for

REPO = Path(__file__).resolve().parents[2]


def soak(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.up", "soak", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def explain(done: subprocess.CompletedProcess[str], logs: Path) -> str:
    tails = [f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
             for log in sorted(logs.glob("*.log"))] if logs.is_dir() else []
    return f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}\n" + "\n".join(tails)


def test_a_faulted_soak_loses_nothing(tmp_path: Path) -> None:
    """The issue's CI gate: 200 launches at 20 at once, a service or a shim SIGKILLed every few seconds.

    The issue names a fault every 5 s; on a quiet machine the 200 launches end in about 15 s, before
    the cycle of four fault kinds comes round (at 5 s only the daemon and highlevel were killed, at
    3 s the shim was not), so the gate injects every 2 s: every kind is exercised wherever it runs.

    Its failures of one run in four had these causes, each fixed: a record's temp file left by a
    daemon killed inside a create (daemon/store.py), a failed create's snapshot mount left when
    highlevel was killed inside the Prepare (daemon/containers.py), a stale snapshot number after
    kill-highlevel (highlevel snapshotter), and on a loaded machine the tool's own attempt bound
    and fault pace (soak cli/faults: launches wait for the engine, a fault waits for a success).
    """
    needs_root()
    report, logs = tmp_path / "report.json", tmp_path / "logs"
    done = soak("--start-engine", "--load", str(busybox_archive(tmp_path)), "--count", "200", "--concurrency", "20",
                "--faults", "kill-daemon,kill-highlevel,kill-apiserver,kill-shim", "--fault-every", "2s",
                "--report", str(report), "--keep-engine-logs", str(logs), timeout=600)
    assert done.returncode == 0, explain(done, logs)
    account = json.loads(report.read_text())
    assert account["launches"]["succeeded"] == 200
    assert account["lost"]["count"] == account["wrong_exit_codes"]["count"] == 0
    assert account["log_lines"]["lost"] == account["log_lines"]["duplicated"] == 0
    assert not any(account["leaks"].values()) and not account["hangs"]["by_route"]
    kinds = {f["kind"] for f in account["faults"]}
    assert kinds == {"kill-daemon", "kill-highlevel", "kill-apiserver", "kill-shim"}, account["faults"]
    assert account["latency"]["POST /containers/{id}/start"]["p99"] > 0
    assert "verdict: PASS" in done.stdout


def test_a_fault_that_loses_something_fails_the_run(prefix: Path, tmp_path: Path) -> None:
    """Behind the tool's back, one container is removed and another's shim SIGKILLed before its
    process exited (no exit status written: the engine reports 137): the account names both, exit 1."""
    needs_root()
    root = prefix / "root"
    report, logs = tmp_path / "report.json", tmp_path / "logs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.up", "soak", "--start-engine", "--root", str(root), "--load",
         str(busybox_archive(tmp_path)), "--count", "3", "--concurrency", "3", "--hold", "20",
         "--report", str(report), "--keep-engine-logs", str(logs)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client = docker.DockerClient(base_url=f"unix://{root}/run/skiff/skiff.sock", timeout=30, version="1.41")

        def running() -> list[dict[str, object]]:
            with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
                # Not the warm-up launch, soak-<run id>-0: the run id is hex and may itself begin with 0.
                found = [c for c in client.api.containers(filters={"label": "org.skiff.soak"})
                         if not str(c["Names"][0]).endswith("-0")]
                return found if len(found) == 3 else []
            return []

        try:
            victims = wait_for(running, 60, "the soak's three containers running")
        except AssertionError:
            proc.terminate()
            out, err = proc.communicate(timeout=90)
            raise AssertionError(explain(subprocess.CompletedProcess(proc.args, proc.returncode, out, err),
                                         logs)) from None
        client.api.remove_container(victims[0]["Id"], force=True)
        shim = root / "run" / "skiff" / "highlevel" / "t" / str(victims[1]["Id"]) / "shim.pid"
        os.kill(int(shim.read_text()), signal.SIGKILL)
        client.close()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, f"{out}\n{err}"
    account = json.loads(report.read_text())
    # The removed one is lost (gone at its check) or, when the tool saw it between the kill and the
    # removal, killed (137) where it chose another code; the one whose shim died reports 137.
    flagged = " ".join(account["lost"]["cases"] + account["wrong_exit_codes"]["cases"])
    for victim in victims[:2]:
        assert str(victim["Names"][0]).lstrip("/") in flagged, account
    assert "137" in " ".join(account["wrong_exit_codes"]["cases"])
    assert "verdict: FAIL" in out


def test_a_sigterm_ends_the_run_and_stops_its_engine(prefix: Path, tmp_path: Path) -> None:
    """A run started in a shell's background (SIGINT ignored there) could only be SIGKILLed, its
    private engine, shims and mounts left behind, and no account written. SIGTERM (and ^C) wind it
    down: no more launches, those under way checked and removed, the account written, exit 130, the
    engine stopped, nothing of it running or mounted."""
    needs_root()
    root = prefix / "root"
    report = tmp_path / "report.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.up", "soak", "--start-engine", "--root", str(root), "--load",
         str(busybox_archive(tmp_path)), "--count", "1000", "--concurrency", "2", "--hold", "5",
         "--report", str(report)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        # Two at once: the run's launches (the warm-up before them is one container alone).
        wait_for(lambda: len(list((root / "run" / "skiff" / "highlevel" / "t").glob("*/shim.pid"))) >= 2, 90,
                 "the soak's containers running")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=90)
        running = processes_mentioning(str(root))
        mounted = [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(root) in line]
        cgroups = [str(h) for h in Path("/sys/fs/cgroup").iterdir() if (h / cgroup_parent_of(root)).exists()]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        Engine(root).stop()  # whatever the run left
    assert proc.returncode == 130, f"{out}\n{err}"
    assert running == [] and mounted == [] and cgroups == [], (running, mounted, cgroups, err)
    account = json.loads(report.read_text())
    assert any(note.startswith("interrupted") for note in account["notes"]), account["notes"]
    assert account["lost"]["count"] == account["not_removed"]["count"] == 0 and not any(account["leaks"].values())


RUNTIME_KILLING_ITS_SHIM = """#!/bin/sh
# A runtime that SIGKILLs the shim that called it for `start`: the task was made, its shim dies.
for arg in "$@"; do
  if [ "$arg" = start ]; then kill -9 $PPID; exit 1; fi
done
exec {lowlevel} "$@"
"""


def test_a_start_whose_shim_died_is_a_500_not_a_304(prefix: Path, tmp_path: Path) -> None:
    """Found by the soak (kill-shim): a start failing with the shim gone answered 304 "already
    started", so the client believed its container ran; it is a failed start (500), as dockerd's."""
    needs_root()
    runtime = tmp_path / "shim-killer"
    runtime.write_text(RUNTIME_KILLING_ITS_SHIM.format(lowlevel=REPO / ".venv" / "bin" / "skiff-lowlevel"))
    runtime.chmod(runtime.stat().st_mode | stat.S_IXUSR)
    s = Stack(prefix, str(runtime))
    try:
        s.start_all()
        client = docker.DockerClient(base_url=s.base_url, timeout=30)
        with open(busybox_archive(tmp_path), "rb") as archive:
            client.images.load(archive.read())
        cid = client.api.create_container("busybox", ["true"])["Id"]
        with pytest.raises(docker.errors.APIError) as failed:
            client.api.start(cid)
        assert failed.value.response.status_code == 500, failed.value
        assert client.api.containers(all=True, filters={"id": cid})[0]["State"] != "running"
        client.api.remove_container(cid, force=True)
        client.close()
        s.stop_all()
        assert s.leftovers([cid]) == []
    finally:
        s.force_cleanup()


def test_a_snapshot_no_record_owns_goes_at_the_daemon_start(prefix: Path, tmp_path: Path) -> None:
    """Found by the soak (kill-daemon): a create cut by a daemon kill between highlevel's Prepare and
    the record's save left the container's snapshot mounted for ever. Made here by taking the
    record away while the daemon is down: its next start removes the snapshot and its mount."""
    needs_root()
    s = Stack(prefix, os.environ.get("SKIFF_TEST_RUNTIME") or "skiff-lowlevel")
    try:
        s.start_all()
        client = docker.DockerClient(base_url=s.base_url, timeout=30)
        with open(busybox_archive(tmp_path), "rb") as archive:
            client.images.load(archive.read())
        cid = client.api.create_container("busybox", ["true"])["Id"]
        mounted = [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(prefix) in line]
        assert mounted, "the container's snapshot is mounted at create"
        s.procs["services.daemon"].kill()
        s.procs["services.daemon"].wait(10)
        folder = s.paths.daemon_lib / "containers" / cid
        assert folder.is_dir()
        subprocess.run(["rm", "-rf", str(folder)], check=True, timeout=30)
        s.start("services.daemon")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
                str(prefix) in line for line in Path("/proc/self/mountinfo").read_text().splitlines()):
            time.sleep(0.1)
        assert not [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(prefix) in line]
        assert client.api.containers(all=True) == []
        client.close()
        s.stop_all()
        assert s.leftovers([cid]) == []
    finally:
        s.force_cleanup()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_apiserver_serves_prometheus_metrics(prefix: Path, tmp_path: Path) -> None:
    """``skiff-apiserver --metrics-addr`` (gauges read every ``--metrics-refresh`` 0.5 s): requests by
    route and status, the launch histogram, running containers, shims, and a daemon restart counted
    (its socket's server pid changed)."""
    import urllib.request

    from tests.e2e.stack import accepts

    needs_root()
    s = Stack(prefix, os.environ.get("SKIFF_TEST_RUNTIME") or "skiff-lowlevel")
    address = f"127.0.0.1:{free_port()}"
    for bad in ("0", "-1", "soon", "nan"):
        refused = subprocess.run([sys.executable, "-m", "services.apiserver", "--root", str(prefix), "--metrics-addr",
                                  address, "--metrics-refresh", bad], cwd=REPO, capture_output=True, text=True,
                                 timeout=30)
        assert refused.returncode == 2 and "--metrics-refresh" in refused.stderr, refused.stderr
    api = None
    try:
        s.start("services.highlevel")
        s.start("services.daemon")
        api = subprocess.Popen([sys.executable, "-m", "services.apiserver", "--root", str(prefix), "--metrics-addr",
                                address, "--metrics-refresh", "0.5"],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: accepts(s.paths.api_socket), 30, "the apiserver")
        client = docker.DockerClient(base_url=s.base_url, timeout=30)
        with open(busybox_archive(tmp_path), "rb") as archive:
            client.images.load(archive.read())
        running = client.containers.run("busybox", ["sleep", "60"], detach=True)
        with pytest.raises(docker.errors.NotFound):
            client.api.inspect_container("no-such-container")

        def scrape() -> str:
            with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as answer:
                return answer.read().decode()

        def when_counted() -> str | None:
            text = scrape()
            return text if "skiff_containers_running 1.0" in text else None

        text = wait_for(when_counted, 30, "the running gauge")
        assert 'skiff_api_requests_total{method="POST",route="/containers/{id}/start",status="204"} 1.0' in text
        assert 'route="/containers/{id}/json",status="404"' in text
        assert "skiff_launch_seconds_count 1.0" in text and 'skiff_launch_seconds_bucket{le="60.0"} 1.0' in text
        assert "skiff_shims 1.0" in text
        s.procs["services.daemon"].kill()
        s.procs["services.daemon"].wait(10)
        s.start("services.daemon")
        wait_for(lambda: 'skiff_service_restarts_total{service="daemon"} 1.0' in scrape(), 30, "the restart count")
        running.remove(force=True)
        client.close()
    finally:
        if api is not None:
            api.terminate()
            api.wait(15)
        s.stop_all()
        s.force_cleanup()
