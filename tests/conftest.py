"""Shared fixtures: real charons in network namespaces (see tests/lab.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests import lab


def _need_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the real-daemon tests need root; CI must run them")
        pytest.skip("needs root (network namespaces)")


@pytest.fixture(scope="module")
def charon() -> Iterator[lab.Charon]:
    """A standalone charon in its own namespace."""
    _need_root()
    lab.clean_leftovers()
    c = lab.Charon.start(f"c{os.urandom(2).hex()}")
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def gwlab() -> Iterator[lab.Lab]:
    """gw1 + road-warrior client + server, charons running, no VIP yet."""
    _need_root()
    lb = lab.Lab.build(("gw1",))
    try:
        yield lb
    finally:
        lb.destroy()
