"""Push, remove, pull back and prepare against a real docker-registry on 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from services.highlevel.images import transfer
from services.highlevel.images.progress import ProgressEvent, ProgressStatus
from services.highlevel.images.registry import AuthError, Credentials
from tests.conftest import needs_root
from tests.integration.images.conftest import FAST, make_manager
from tests.support.oci_image import BuiltImage, store_image
from tests.support.registry import run_registry


@pytest.mark.parametrize(("auth", "tls"), [(False, False), (True, False), (False, True), (True, True)],
                         ids=["plain", "basic-auth", "tls", "basic-auth+tls"])
def test_push_remove_pull_prepare(prefix: Path, multi_image: BuiltImage, auth: bool, tls: bool) -> None:
    needs_root()
    with run_registry(prefix / "registry", auth=auth, tls=tls) as reg:
        opts = dataclasses.replace(FAST, ca_file=reg.ca.ca_cert if reg.ca else None)
        creds = {f"{reg.host}:{reg.port}": Credentials(*next(iter(reg.users.items())))} if auth else None
        name = f"{reg.host}:{reg.port}/skiff/multi:v1"
        with make_manager(prefix, options=opts) as m:
            store_image(m, name, multi_image)
            if auth:
                with pytest.raises(AuthError):
                    asyncio.run(transfer.push(m, name))
            pushed: list[ProgressEvent] = []
            digest = asyncio.run(transfer.push(m, name, credentials=creds, progress=pushed.append))
            assert digest == multi_image.manifest_digest
            assert {ProgressStatus.PUSHED} <= {e.status for e in pushed}
            # Pushing again finds every blob there already.
            again: list[ProgressEvent] = []
            asyncio.run(transfer.push(m, name, credentials=creds, progress=again.append))
            assert ProgressStatus.PUSHED not in {e.status for e in again}

            asyncio.run(m.remove(name))
            assert m.content.list() == [] and m.store.list() == [] and m.snapshots.list() == []

            events: list[ProgressEvent] = []
            info = asyncio.run(transfer.pull(m, name, credentials=creds, progress=events.append))
            assert info.id == multi_image.config_digest
            assert info.manifest_digest == multi_image.manifest_digest
            assert info.repo_tags == [name]
            statuses = [e.status for e in events]
            for s in (ProgressStatus.PULLING_FS_LAYER, ProgressStatus.DOWNLOAD_COMPLETE,
                      ProgressStatus.EXTRACTING, ProgressStatus.PULL_COMPLETE):
                assert s in statuses
            rootfs = asyncio.run(m.prepare(name, "ctr"))
            assert (rootfs / "bin" / "busybox").is_file()
            assert (rootfs / "data" / "keep").exists() and not (rootfs / "data" / "gone").exists()

            # Pulling again: every layer already there.
            events.clear()
            asyncio.run(transfer.pull(m, name, credentials=creds, progress=events.append))
            assert ProgressStatus.DOWNLOADING not in {e.status for e in events}
            assert ProgressStatus.ALREADY_EXISTS in {e.status for e in events}


def test_cross_repository_mount(prefix: Path, busybox_image: BuiltImage) -> None:
    needs_root()
    with run_registry(prefix / "registry") as reg, make_manager(prefix) as m:
        a = f"{reg.host}:{reg.port}/team/a:1"
        b = f"{reg.host}:{reg.port}/team/b:1"
        store_image(m, a, busybox_image)
        asyncio.run(transfer.push(m, a))
        m.tag(a, b)
        events: list[ProgressEvent] = []
        asyncio.run(transfer.push(m, b, progress=events.append))
        assert ProgressStatus.MOUNTED in {e.status for e in events}
        assert ProgressStatus.PUSHED not in {e.status for e in events}
        asyncio.run(m.remove(a))
        asyncio.run(m.remove(b))
        assert asyncio.run(transfer.pull(m, b)).id == busybox_image.config_digest
