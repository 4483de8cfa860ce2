from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
from services.highlevel.images.manifest import chain_ids, sha256_digest
from services.highlevel.images.reference import parse_reference

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "full", "familiar"),
    [
        ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("index.docker.io/library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("user/app:v1", "docker.io/user/app:v1", "user/app:v1"),
        ("localhost:5000/x:tag", "localhost:5000/x:tag", "localhost:5000/x:tag"),
        ("localhost/x", "localhost/x:latest", "localhost/x:latest"),
        ("quay.io/a/b/c", "quay.io/a/b/c:latest", "quay.io/a/b/c:latest"),
        (f"busybox@{D}", f"docker.io/library/busybox@{D}", f"busybox@{D}"),
        (f"127.0.0.1:5000/x:t@{D}", f"127.0.0.1:5000/x:t@{D}", f"127.0.0.1:5000/x:t@{D}"),
    ],
)
def test_normalise(text: str, full: str, familiar: str) -> None:
    ref = parse_reference(text)
    assert str(ref) == full
    assert ref.familiar == familiar


@pytest.mark.parametrize("text", ["", "UPPER", "a b", "x@sha256:zz", "x:" + "t" * 200, "a/../b"])
def test_invalid(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_reference(text)


def test_chain_ids_follow_the_oci_spec() -> None:
    a, b = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    assert chain_ids([a, b]) == [a, sha256_digest(f"{a} {b}".encode())]
