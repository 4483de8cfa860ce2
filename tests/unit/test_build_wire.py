"""The build's wire pieces without a stack: the apiserver's hand-framed BuildChunk encodes as
betterproto does (and the daemon decodes it back), and the daemon's Outlet joins the texts queued
together into one message, keeps the order of everything else, and holds all back when quiet."""

from __future__ import annotations

import asyncio

import pytest

from services.apiserver.build import FramedChunk
from services.daemon.builds.outlet import Outlet
from services.gen.skiff.daemon.v1 import BuildChunk, BuildMessage, BuildOptions


@pytest.mark.parametrize("options, data", [
    (BuildOptions(dockerfile="sub/Dockerfile", tags=["a:1", "b"], remove=True, memory=3 << 30), b"x" * 70000),
    (BuildOptions(quiet=True), b""),
    (None, b"\x00\xff" * 200),
    (None, b"a"),
])
def test_framed_chunk_encodes_as_betterproto(options: BuildOptions | None, data: bytes) -> None:
    framed = FramedChunk(options=options, data=data) if options is not None else FramedChunk(data=data)
    plain = BuildChunk(options=options, data=data) if options is not None else BuildChunk(data=data)
    encoded = framed.SerializeToString()
    assert encoded == bytes(plain)
    back = BuildChunk().parse(encoded)
    assert back.data == data and back.options == (options or BuildOptions())


async def _drain(outlet: Outlet) -> list[BuildMessage]:
    return [m async for m in outlet.messages()]


def test_outlet_joins_texts_and_keeps_the_order() -> None:
    async def scenario() -> list[BuildMessage]:
        outlet = Outlet(quiet=False)
        for text in ("Step 1/2 : FROM busybox\n", " ---> abc\n", "Step 2/2 : ENV A=1\n"):
            await outlet.emit(text)
        outlet.succeed("sha256:" + "f" * 64, ["x:latest"])
        outlet.end()
        return await _drain(outlet)

    messages = asyncio.run(scenario())
    assert [m.stream for m in messages] == [
        ["Step 1/2 : FROM busybox\n", " ---> abc\n", "Step 2/2 : ENV A=1\n"], [],
        ["Successfully built ffffffffffff\n", "Successfully tagged x:latest\n"]]
    assert messages[1].image_id == "sha256:" + "f" * 64


def test_quiet_outlet_holds_back_until_the_outcome() -> None:
    async def scenario(fail: bool) -> list[BuildMessage]:
        outlet = Outlet(quiet=True)
        await outlet.emit("Step 1/1 : RUN false\n")
        if fail:
            outlet.fail("The command '/bin/sh -c false' returned a non-zero code: 1", 1)
        else:
            outlet.succeed("sha256:" + "e" * 64, [])
        outlet.end()
        return await _drain(outlet)

    ok = asyncio.run(scenario(False))
    assert [(m.stream, m.image_id) for m in ok] == [(["sha256:" + "e" * 64 + "\n"], "")]
    failed = asyncio.run(scenario(True))
    assert failed[0].stream == ["Step 1/1 : RUN false\n"]
    assert failed[1].error.endswith("non-zero code: 1") and failed[1].error_code == 1
