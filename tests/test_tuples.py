"""ipsec_vip.tuples builds what typing.NamedTuple builds, without importing typing."""

from __future__ import annotations

import typing

import pytest

from ipsec_vip.tuples import NamedTuple


class Ours(NamedTuple):
    """doc"""

    a: int
    b: list[str] = []  # noqa: RUF012 (a default, as in typing.NamedTuple)

    @property
    def twice(self) -> int:
        return 2 * self.a

    @classmethod
    def make(cls, a: int) -> Ours:
        return cls(a)


class Theirs(typing.NamedTuple):
    a: int
    b: list[str] = []  # noqa: RUF012


def test_same_behaviour_as_typing_namedtuple():
    o, t = Ours(1), Theirs(1)
    assert tuple(o) == tuple(t) and o == t
    assert o._fields == t._fields and o._field_defaults == t._field_defaults
    assert o._replace(a=3) == Ours(3) and isinstance(o._replace(a=3), Ours)
    assert o._asdict() == t._asdict()
    assert repr(Ours.make(2)) == "Ours(a=2, b=[])" and Ours(2).twice == 4
    assert Ours.__doc__ == "doc" and Ours.__module__ == __name__ and Ours.__name__ == "Ours"
    with pytest.raises(AttributeError):
        o.c = 1  # type: ignore[attr-defined]


def test_a_field_without_default_after_one_with_is_refused():
    with pytest.raises(TypeError, match="without a default follows"):
        class Bad(NamedTuple):
            a: int = 1
            b: int
