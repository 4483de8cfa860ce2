"""Contexts kept between builds (services/daemon/builds/kept_contexts.py), on a real folder: the same
bytes give the same extracted folder (and its COPY picks) again, other bytes a folder of their own,
a context in use is never removed, at most KEEP unused ones stay (none after a prune), a refused
context leaves nothing, and a body given as a file (a context too big for memory) is read like one
given as bytes."""

from __future__ import annotations

import asyncio
import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument
from services.daemon.builds.kept_contexts import KEEP, KeptContexts


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tf:
        for name, body in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tf.addfile(info, io.BytesIO(body))
    return out.getvalue()


async def _acquire(kept: KeptContexts, body: bytes):  # type: ignore[no-untyped-def]
    return await kept.acquire(body, len(body), hashlib.sha256(body).hexdigest(), "")


async def _settle(kept: KeptContexts) -> None:
    while kept._removals:
        await asyncio.gather(*kept._removals)


def test_same_bytes_reuse_the_folder_other_bytes_get_their_own(tmp_path: Path) -> None:
    async def scenario() -> None:
        kept = KeptContexts(tmp_path / "contexts")
        one = _tar({"Dockerfile": b"FROM busybox\nCOPY a /a\n", "a": b"one"})
        first = await _acquire(kept, one)
        first.picks[("copy", ("a",))] = "memo"  # type: ignore[assignment]
        kept.release(first)
        again = await _acquire(kept, one)
        assert again is first and again.picks[("copy", ("a",))] == "memo"
        changed = await _acquire(kept, _tar({"Dockerfile": b"FROM busybox\nCOPY a /a\n", "a": b"two"}))
        assert changed.root != first.root and (changed.root / "a").read_bytes() == b"two"
        assert (first.root / "a").read_bytes() == b"one"
        kept.release(again)
        kept.release(changed)
        await _settle(kept)
        assert sorted(p.name for p in (tmp_path / "contexts").iterdir()) == sorted([first.root.name, changed.root.name])

    asyncio.run(scenario())


def test_at_most_keep_unused_and_never_one_in_use(tmp_path: Path) -> None:
    async def scenario() -> None:
        kept = KeptContexts(tmp_path / "contexts")
        busy = await _acquire(kept, _tar({"Dockerfile": b"FROM busybox\n", "busy": b"b"}))
        made = []
        for i in range(KEEP + 3):
            ctx = await _acquire(kept, _tar({"Dockerfile": b"FROM busybox\n", "n": str(i).encode()}))
            made.append(ctx)
            kept.release(ctx)
        await _settle(kept)
        left = {p.name for p in (tmp_path / "contexts").iterdir()}
        assert busy.root.name in left and (busy.root / "busy").exists()
        assert left - {busy.root.name} == {c.root.name for c in made[-KEEP:]}  # the most recently used
        kept.release(busy)
        await _settle(kept)
        assert len(list((tmp_path / "contexts").iterdir())) == KEEP
        # docker builder prune: the unused ones go, one in use stays.
        again = await _acquire(kept, _tar({"Dockerfile": b"FROM busybox\n", "n": str(KEEP + 2).encode()}))
        kept.drop_unused()
        await _settle(kept)
        assert [p.name for p in (tmp_path / "contexts").iterdir()] == [again.root.name]

    asyncio.run(scenario())


def test_a_refused_context_leaves_nothing_and_a_spilled_body_reads_alike(tmp_path: Path) -> None:
    async def scenario() -> None:
        kept = KeptContexts(tmp_path / "contexts")
        with pytest.raises(InvalidArgument):
            await _acquire(kept, _tar({"Dockerfile": b"FROM busybox\n", "../out": b"x"}))
        await _settle(kept)
        assert list((tmp_path / "contexts").iterdir()) == []
        assert not (tmp_path / "out").exists()
        body = _tar({"Dockerfile": b"FROM busybox\n", "big": b"x" * 4096})
        spilled = tmp_path / "body"
        spilled.write_bytes(body)
        ctx = await kept.acquire(spilled, len(body), hashlib.sha256(body).hexdigest(), "")
        assert (ctx.root / "big").read_bytes() == b"x" * 4096
        assert await _acquire(kept, body) is ctx  # the same bytes, however they came
        kept.release(ctx)
        kept.release(ctx)

    asyncio.run(scenario())
