"""common/protospeed.py's hooks behave as betterproto's own, on our messages and on a oneof."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import betterproto

from services.common import protospeed
from services.gen.skiff.daemon.v1 import ContainerConfig, CreateContainerRequest
from services.gen.skiff.highlevel.v1 import CreateTaskRequest


@dataclass(eq=False, repr=False)
class Choice(betterproto.Message):
    number: int = betterproto.int32_field(1, group="pick")
    word: str = betterproto.string_field(2, group="pick")
    inner: Choice = betterproto.message_field(3)
    empty: Nothing = betterproto.message_field(4)


@dataclass(eq=False, repr=False)
class Nothing(betterproto.Message):
    pass


def outcome(action: Callable[[], Any]) -> Any:
    try:
        return ("value", action())
    except AttributeError as exc:
        return ("AttributeError", str(exc))


def scenario() -> list[Any]:
    seen: list[Any] = []
    c = Choice()
    seen += [outcome(lambda: c.number), outcome(lambda: c.word), c._serialized_on_wire, bool(c)]
    c.word = "x"
    seen += [outcome(lambda: c.number), outcome(lambda: c.word), c._serialized_on_wire,
             betterproto.which_one_of(c, "pick")]
    c.number = 7
    seen += [outcome(lambda: c.word), outcome(lambda: c.number), betterproto.which_one_of(c, "pick")]
    seen += [bytes(c), Choice().parse(bytes(c)).number, Choice().parse(bytes(Choice(word="y"))).word]
    seen += [outcome(lambda: Choice().parse(bytes(Choice(word="y"))).number)]
    inner = c.inner  # a default made on first read, kept
    seen += [inner is c.inner, inner._serialized_on_wire]
    c.empty = Nothing()
    seen += [c.empty._serialized_on_wire, bytes(c)]
    both = Choice(number=1, word="z")  # two members at once: the last in field order is current
    seen += [betterproto.which_one_of(both, "pick"), outcome(lambda: both.number), outcome(lambda: both.word)]
    config = ContainerConfig(image="busybox", cmd=["true"], env=["A=1"])
    request = CreateContainerRequest(name="n", config=config)
    wire = bytes(request)
    back = CreateContainerRequest().parse(wire)
    seen += [wire, back == request, back.config.image, back.config.working_dir, back.config.labels,
             back.to_dict(), repr(back), CreateTaskRequest(id="t").to_json()]
    return seen


def test_same_as_betterproto() -> None:
    protospeed.uninstall()
    expected = scenario()
    assert any(seen[0] == "AttributeError" for seen in expected if isinstance(seen, tuple))
    protospeed.install()
    try:
        assert betterproto.Message.__getattribute__ is protospeed._getattribute
        assert scenario() == expected
    finally:
        protospeed.uninstall()
