"""``typing.NamedTuple``'s class syntax without importing ``typing`` on the monitor's path.

``typing`` costs about 2 ms of import (and each ``typing.NamedTuple`` class more) in a
monitor that runs every few seconds on every node. Modules write::

    TYPE_CHECKING = False  # mypy treats this name as true
    if TYPE_CHECKING:
        from typing import NamedTuple
    else:
        from ipsec_vip.tuples import NamedTuple

so mypy checks the real ``typing.NamedTuple`` while the runtime class is the same
``collections.namedtuple`` that ``typing`` would have built, with the class body's
methods, properties and docstring.
"""

from __future__ import annotations

from collections import namedtuple


class _Maker(type):
    def __new__(mcs, name: str, bases: tuple[type, ...], ns: dict[str, object]) -> type:
        if not bases:  # NamedTuple itself
            return super().__new__(mcs, name, bases, ns)
        fields = list(ns.get("__annotations__", {}))  # type: ignore[call-overload]
        defaults = [ns[f] for f in fields if f in ns]
        if any(f not in ns for f in fields[len(fields) - len(defaults):]):
            raise TypeError(f"{name}: a field without a default follows one with a default")
        base = namedtuple(name, fields, defaults=defaults, module=str(ns.get("__module__")))  # type: ignore[misc]
        body = {k: v for k, v in ns.items() if k not in fields}
        body["__slots__"] = ()
        return type(name, (base,), body)


class NamedTuple(metaclass=_Maker):
    """Base for ``class X(NamedTuple): field: type = default`` (see the module docstring)."""
