"""The images critest 1.26's validation specs pull, built locally from busybox-static under their real
names (read from cri-tools' pkg/validate and pkg/framework), and pushed to a loopback registry.

Each stand-in does what the spec needs of the real one: the web servers answer 200 on their port
(busybox httpd), nginx is a process named nginx whose command line says "master process" and whose
pid is in /var/run/nginx.pid, httpd's log says "httpd -D FOREGROUND" as Apache's does, the user
images carry the ``USER`` of cri-tools' images/build, the predefined-group image the user and group
of its Dockerfile, nonewprivs a set-uid root program printing its effective uid, pause a program
in pause(2) (these two are C, built static with gcc).
busybox's applets are hard links as in the busybox image; ``pgrep`` and ``ipcs``, which Debian's
busybox-static lacks, are small scripts over /proc.
Two specs cannot pass with these stand-ins, on any engine: ``test-image-digest@sha256:9700…`` pins
a public digest no local build can have (it is not made), and MaskedPaths expects ``/bin/sh -c ls``
to fail once /bin/ls is masked, while Debian's busybox-static shell runs its ``ls`` applet in
itself (FEATURE_SH_STANDALONE) without looking at /bin/ls.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.busybox import build_rootfs  # noqa: E402
from tests.support.oci_image import (  # noqa: E402
    BuiltImage,
    Entry,
    Layer,
    build_image,
    make_layer,
    tar_of_dir,
    tar_of_entries,
)

E2E = "registry.k8s.io/e2e-test-images/"
STAGING = "gcr.io/k8s-staging-cri-tools/"
PAUSE = "registry.k8s.io/pause:3.6"

# Real busybox has www-data (33); the base rootfs of tests/support/busybox.py does not.
PASSWD_EXTRA = "www-data:x:33:33:www-data:/var/www:/bin/false\n"
GROUP_EXTRA = "www-data:x:33:\n"

# The pod's infra process as the real pause: sleeps in pause(2), reaps children, ends on
# SIGTERM/SIGINT. Not a shell loop: its `sleep` children would show in a pod-wide `pgrep sleep`.
PAUSE_C = r"""#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void leave(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  signal(SIGTERM, leave); signal(SIGINT, leave); signal(SIGCHLD, reap);
  for (;;) pause();
}
"""

# Applets of busybox 1.29 the specs run that Debian's busybox-static lacks, as scripts over /proc.
PGREP = """#!/bin/sh
# pgrep PATTERN: the pids of the processes whose name holds PATTERN
found=1
for d in /proc/[0-9]*; do
  name=$(cat "$d/comm" 2>/dev/null) || continue
  case "$name" in *"$1"*) echo "${d#/proc/}"; found=0;; esac
done
exit $found
"""
IPCS = """#!/bin/sh
# ipcs -m: the System V shared memory segments of this IPC namespace
echo "------ Shared Memory Segments --------"
echo "key        shmid      owner      perms      bytes      nattch     status"
tail -n +2 /proc/sysvipc/shm | while read -r key shmid perms size cpid lpid nattch uid rest; do
  echo "$key $shmid $uid $perms $size $nattch"
done
"""
# nginx as the specs see it: a process named nginx whose command line says "master process" and
# whose pid is in /var/run/nginx.pid, answering 200 on its port (busybox httpd, its child).
NGINX = """#!/bin/sh
echo $$ > /var/run/nginx.pid
httpd -f -p "${NGINX_PORT:-80}" -h /www &
trap 'kill $! 2>/dev/null; exit 0' TERM INT QUIT
wait $!
"""
# e2e-test-images/nonewprivs: a set-uid root program printing its effective uid.
NONEWPRIVS_C = r"""#include <stdio.h>
#include <unistd.h>
int main(void) { printf("Effective uid: %d\n", (int)geteuid()); return 0; }
"""


@dataclass(slots=True)
class StandIn:
    names: list[str]
    cmd: list[str] = field(default_factory=lambda: ["sh"])
    user: str = ""
    files: dict[str, str] = field(default_factory=dict)
    exposed: list[int] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    programs: dict[str, tuple[str, int]] = field(default_factory=dict)  # path: (C source, mode)


def _www(port: int, banner: str = "") -> list[str]:
    say = f"echo {json.dumps(banner)}; " if banner else ""
    return ["/bin/sh", "-c", f"{say}exec httpd -f -p {port} -h /www"]


NGINX_CMD = ["/usr/sbin/nginx", "-g", "daemon off;", "master process"]


INDEX = {"www/index.html": "<html><body>Welcome to nginx!</body></html>\n"}
NGINX_FILES = {**INDEX, "usr/sbin/nginx": NGINX, "var/run/.keep": ""}

STANDINS: list[StandIn] = [
    StandIn([E2E + "busybox:1.29-2"]),
    StandIn([PAUSE], cmd=["/pause"], programs={"pause": (PAUSE_C, 0o755)}),
    StandIn([E2E + "nginx:1.14-2"], cmd=NGINX_CMD, files=NGINX_FILES, exposed=[80]),
    StandIn([STAGING + "hostnet-nginx-amd64:latest"], cmd=NGINX_CMD, files=NGINX_FILES, exposed=[12003],
            env=["NGINX_PORT=12003"]),
    StandIn([E2E + "nonewprivs:1.3"], cmd=["/nonewprivs"], programs={"nonewprivs": (NONEWPRIVS_C, 0o4755)}),
    StandIn([E2E + "httpd:2.4.39-4"], cmd=_www(80, "Command line: 'httpd -D FOREGROUND'"),
            files={"www/index.html": "<html><body><h1>It works!</h1></body></html>\n"}, exposed=[80]),
    StandIn([STAGING + "test-image-latest:latest"], files={"test-image-latest": "latest\n"}),
    StandIn([STAGING + "test-image-tag:test"], files={"test-image-tag": "test\n"}),
    StandIn([STAGING + "test-image-tag:all"], files={"test-image-tag-all": "all\n"}),
    StandIn([STAGING + "test-image-1:latest"], files={"test-image-1": "1\n"}),
    StandIn([STAGING + "test-image-2:latest"], files={"test-image-2": "2\n"}),
    StandIn([STAGING + "test-image-3:latest"], files={"test-image-3": "3\n"}),
    StandIn([STAGING + f"test-image-tags:{n}" for n in (1, 2, 3)], files={"test-image-tags": "tags\n"}),
    StandIn([STAGING + "test-image-user-uid:latest"], user="1002"),
    StandIn([STAGING + "test-image-user-username:latest"], user="www-data"),
    StandIn([STAGING + "test-image-user-uid-group:latest"], user="1003:1004"),
    StandIn([STAGING + "test-image-user-username-group:latest"], user="www-data:1004"),
    StandIn([STAGING + "test-image-predefined-group:latest"], user="1000", files={
        # cri-tools' images/image-predefined-group: adduser -u 1000 default-user, addgroup -g 50000
        "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
                      "default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n",
        "etc/group": "root:x:0:\nnogroup:x:65534:\ndefault-user:x:1000:\n"
                     "group-defined-in-image:x:50000:default-user\n",
    }),
]


def base_layer(workdir: Path) -> Layer:
    """busybox-static with its applets as hard links (as the busybox image has them: masking
    /bin/ls must not mask /bin/sh), plus the applets Debian's build lacks."""
    root = workdir / "busybox-hardlinked"
    if not root.exists():
        build_rootfs(root)
        for folder in ("bin",):
            for entry in (root / folder).iterdir():
                if entry.is_symlink() and os.readlink(entry) == "busybox":
                    entry.unlink()
                    os.link(root / "bin" / "busybox", entry)
        for name, text in (("pgrep", PGREP), ("ipcs", IPCS)):
            (root / "bin" / name).write_text(text)
            (root / "bin" / name).chmod(0o755)
        (root / "var" / "run").mkdir(parents=True, exist_ok=True)
    return make_layer(tar_of_dir(root))


def compiled(workdir: Path, name: str, source: str) -> bytes:
    """A static program of the stand-ins, built once per run with gcc."""
    out = workdir / name
    if not out.exists():
        (workdir / f"{name}.c").write_text(source)
        subprocess.run(["gcc", "-static", "-Os", "-o", str(out), str(workdir / f"{name}.c")], check=True,
                       timeout=300)
    return out.read_bytes()


def build(standin: StandIn, workdir: Path, base: Layer | None = None) -> BuiltImage:
    """The stand-in as a Docker v2 image: the busybox layer (shared by all), then its own files."""
    layers = [base or base_layer(workdir)]
    files = dict(standin.files)
    if standin.user and "etc/passwd" not in files:
        etc = workdir / "busybox-hardlinked" / "etc"
        files["etc/passwd"] = (etc / "passwd").read_text() + PASSWD_EXTRA
        files["etc/group"] = (etc / "group").read_text() + GROUP_EXTRA
    entries: list[Entry] = []
    if files:
        folders = sorted({str(Path(p).parent) for p in files if "/" in p})
        entries += [Entry(d, type=b"5", mode=0o755) for d in folders]
        entries += [Entry(p, data=text.encode(), mode=0o755 if text.startswith("#!") else 0o644)
                    for p, text in sorted(files.items())]
    for path, (source, mode) in sorted(standin.programs.items()):
        entries.append(Entry(path, data=compiled(workdir, Path(path).name, source), mode=mode))
    if entries:
        layers.append(make_layer(tar_of_entries(entries)))
    inner: dict[str, object] = {
        "Cmd": standin.cmd,
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", *standin.env]}
    if standin.user:
        inner["User"] = standin.user
    if standin.exposed:
        inner["ExposedPorts"] = {f"{p}/tcp": {} for p in standin.exposed}
    return build_image(layers, cmd=standin.cmd, config_extra={"config": inner})


def _put(url: str, data: bytes, content_type: str) -> None:
    req = urllib.request.Request(url, data=data, method="PUT", headers={"Content-Type": content_type})
    with urllib.request.urlopen(req, timeout=60) as resp:
        if resp.status not in (201, 202):
            raise RuntimeError(f"PUT {url}: {resp.status}")


def _push_blob(base: str, repo: str, digest: str, data: bytes) -> None:
    head = urllib.request.Request(f"{base}/v2/{repo}/blobs/{digest}", method="HEAD")
    try:
        with urllib.request.urlopen(head, timeout=30):
            return
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise
    start = urllib.request.Request(f"{base}/v2/{repo}/blobs/uploads/", data=b"", method="POST")
    with urllib.request.urlopen(start, timeout=30) as resp:
        location = resp.headers["Location"]
    if location.startswith("/"):
        location = base + location
    sep = "&" if "?" in location else "?"
    _put(f"{location}{sep}digest={digest}", data, "application/octet-stream")


def push(image: BuiltImage, name: str, registry: str) -> None:
    """Push ``image`` to ``registry`` (host:port, plain http) as the repository and tag of ``name``,
    its registry host dropped: hosts.toml sends ``<host>/<repo>`` pulls to ``registry/<repo>``."""
    _, _, path = name.partition("/")
    repo, _, tag = path.rpartition(":")
    base = f"http://{registry}"
    for layer in image.layers:
        _push_blob(base, repo, layer.digest, layer.blob)
    _push_blob(base, repo, image.config_digest, image.config)
    _put(f"{base}/v2/{repo}/manifests/{tag}", image.manifest, image.manifest_type)


def build_and_push(workdir: Path, registry: str) -> list[str]:
    """Every stand-in pushed; the names made."""
    made: list[str] = []
    workdir.mkdir(parents=True, exist_ok=True)
    base = base_layer(workdir)
    for standin in STANDINS:
        image = build(standin, workdir, base)
        for name in standin.names:
            push(image, name, registry)
            made.append(name)
    return made


def registry_hosts() -> list[str]:
    return sorted({s.split("/", 1)[0] for st in STANDINS for s in st.names})
