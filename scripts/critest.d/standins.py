"""The images critest 1.26's validation specs pull, built locally from busybox-static under their real
names (read from cri-tools' pkg/validate and pkg/framework), and pushed to a loopback registry.

Each stand-in does what the spec needs of the real one: the web servers answer 200 on their port
(busybox httpd), httpd's log says "httpd -D FOREGROUND" as Apache's does, the user images carry the
``USER`` of cri-tools' images/build, the predefined-group image the user and group of its Dockerfile.
``test-image-digest@sha256:9700…`` pins a public digest no local build can have: it is not made.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.oci_image import BuiltImage, Entry, build_image, busybox_layer, make_layer, tar_of_entries  # noqa: E402

E2E = "registry.k8s.io/e2e-test-images/"
STAGING = "gcr.io/k8s-staging-cri-tools/"
PAUSE = "registry.k8s.io/pause:3.6"

# Real busybox has www-data (33); the base rootfs of tests/support/busybox.py does not.
PASSWD_EXTRA = "www-data:x:33:33:www-data:/var/www:/bin/false\n"
GROUP_EXTRA = "www-data:x:33:\n"

# A pause that ends on SIGTERM/SIGINT as the real one (sh as pid 1 would ignore them otherwise).
PAUSE_CMD = ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"]


@dataclass(slots=True)
class StandIn:
    names: list[str]
    cmd: list[str] = field(default_factory=lambda: ["sh"])
    user: str = ""
    files: dict[str, str] = field(default_factory=dict)
    exposed: list[int] = field(default_factory=list)


def _www(port: int, banner: str = "") -> list[str]:
    say = f"echo {json.dumps(banner)}; " if banner else ""
    return ["/bin/sh", "-c", f"{say}exec httpd -f -p {port} -h /www"]


INDEX = {"www/index.html": "<html><body>Welcome to nginx!</body></html>\n"}

STANDINS: list[StandIn] = [
    StandIn([E2E + "busybox:1.29-2"]),
    StandIn([PAUSE], cmd=PAUSE_CMD),
    StandIn([E2E + "nginx:1.14-2"], cmd=_www(80), files=INDEX, exposed=[80]),
    StandIn([STAGING + "hostnet-nginx-amd64:latest"], cmd=_www(12003), files=INDEX, exposed=[12003]),
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


def build(standin: StandIn, workdir: Path) -> BuiltImage:
    """The stand-in as a Docker v2 image: the busybox layer (shared by all), then its own files."""
    layers = [busybox_layer(workdir)]
    files = dict(standin.files)
    if standin.user and "etc/passwd" not in files:
        base = (workdir / "busybox-rootfs" / "etc")
        files["etc/passwd"] = (base / "passwd").read_text() + PASSWD_EXTRA
        files["etc/group"] = (base / "group").read_text() + GROUP_EXTRA
    if files:
        folders = sorted({str(Path(p).parent) for p in files if "/" in p})
        entries = [Entry(d, type=b"5", mode=0o755) for d in folders]
        entries += [Entry(p, data=text.encode()) for p, text in sorted(files.items())]
        layers.append(make_layer(tar_of_entries(entries)))
    inner: dict[str, object] = {
        "Cmd": standin.cmd, "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}
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
    for standin in STANDINS:
        image = build(standin, workdir)
        for name in standin.names:
            push(image, name, registry)
            made.append(name)
    return made


def registry_hosts() -> list[str]:
    return sorted({s.split("/", 1)[0] for st in STANDINS for s in st.names})
