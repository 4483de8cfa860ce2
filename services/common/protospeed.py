"""betterproto's attribute hooks, same semantics at about a quarter of the cost.

betterproto's ``Message`` defines ``__getattribute__`` and ``__setattr__`` in Python, and every
field read or write of every message passes through them (the rust codec's too). Its read looks
up ``_group_current`` and then ``self._betterproto`` (itself a read through the same hook, then a
class property) before reading the field; its write calls ``hasattr`` twice through the hook.
Under a burst of launches those hooks were the largest single item of the daemon's Python CPU
(28% of its samples holding the GIL), 14-15% of highlevel's and the apiserver's.

These replacements keep what the originals do, observably:

- a read of a ``oneof`` member that is not its group's current one raises ``AttributeError``
  (once ``__post_init__`` ran);
- a field still holding ``PLACEHOLDER`` reads as its default, stored on first read;
- a write marks the message as set (``_serialized_on_wire``), makes a ``oneof`` member its
  group's current one (the others back to ``PLACEHOLDER``), and marks a field-less message
  value as on the wire;

with the per-class facts (its oneof groups, whether it has fields) looked up once per class.
``tests/unit/test_protospeed.py`` checks them against the originals, message by message.
"""

from __future__ import annotations

from typing import Any

from betterproto import PLACEHOLDER, Message

_get = object.__getattribute__
_set = object.__setattr__
_ORIGINAL = (Message.__getattribute__, Message.__setattr__)


class _ClassFacts:
    __slots__ = ("group_by_field", "fields_by_group", "fieldless")

    def __init__(self, cls: type[Message]) -> None:
        meta = cls._betterproto
        self.group_by_field: dict[str, str] = dict(meta.oneof_group_by_field)
        self.fields_by_group = meta.oneof_field_by_group
        self.fieldless = not meta.meta_by_field_name


_FACTS: dict[type, _ClassFacts] = {}


def _facts(cls: type[Message]) -> _ClassFacts:
    facts = _FACTS.get(cls)
    if facts is None:
        facts = _FACTS[cls] = _ClassFacts(cls)
    return facts


def _getattribute(self: Message, name: str) -> Any:
    cls = type(self)
    facts = _FACTS.get(cls) or _facts(cls)
    if facts.group_by_field:
        group = facts.group_by_field.get(name)
        if group is not None:
            current = _get(self, "__dict__").get("_group_current")
            if current is not None and current[group] != name:
                raise AttributeError(f"{group!r} is set to {current[group]!r}, not {name!r}", name=name, obj=self)
    value = _get(self, name)
    if value is not PLACEHOLDER:
        return value
    value = self._get_field_default(name)
    _set(self, name, value)
    return value


def _setattr(self: Message, attr: str, value: Any) -> None:
    if isinstance(value, Message):
        vcls = type(value)
        if (_FACTS.get(vcls) or _facts(vcls)).fieldless:
            value._serialized_on_wire = True
    fields = _get(self, "__dict__")
    if attr != "_serialized_on_wire":
        fields["_serialized_on_wire"] = True
    current = fields.get("_group_current")
    if current is not None:  # __post_init__ had already run
        cls = type(self)
        facts = _FACTS.get(cls) or _facts(cls)
        group = facts.group_by_field.get(attr) if facts.group_by_field else None
        if group is not None:
            for field in facts.fields_by_group[group]:
                if field.name == attr:
                    current[group] = attr
                else:
                    _set(self, field.name, PLACEHOLDER)
    _set(self, attr, value)


def install() -> None:
    """Puts the replacements on ``betterproto.Message`` (every generated class inherits them)."""
    Message.__getattribute__ = _getattribute  # type: ignore[method-assign]
    Message.__setattr__ = _setattr  # type: ignore[method-assign]


def uninstall() -> None:
    """betterproto's own hooks back (the tests compare both)."""
    Message.__getattribute__, Message.__setattr__ = _ORIGINAL  # type: ignore[method-assign]

