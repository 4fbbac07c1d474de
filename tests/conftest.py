"""Shared fixtures (real charons in network namespaces, see lab/core.py) and the tiers' one root check.

Tiers (markers declared in pyproject.toml): an unmarked test needs neither root nor a daemon and
runs in ``make test-fast`` as an ordinary user. ``charon`` and ``cluster`` tests run daemons in
network namespaces, so they count as ``root`` too. A root test is skipped for other users, and
fails under CI (CI runs as root: a skip there would hide a whole tier).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from lab import core as lab

_IMPLY_ROOT = ("charon", "cluster")
_DAEMON_FIXTURES = {"charon": "charon", "gwlab": "charon"}  # fixture -> the marker its users must carry


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = []
    for item in items:
        if any(item.get_closest_marker(m) for m in _IMPLY_ROOT):
            item.add_marker(pytest.mark.root)
        for fixture, marker in _DAEMON_FIXTURES.items():
            if fixture in getattr(item, "fixturenames", ()) and not item.get_closest_marker(marker):
                unmarked.append(f"{item.nodeid} (uses {fixture}: mark it {marker})")
    if unmarked:
        raise pytest.UsageError("tests use a daemon without its tier marker:\n  " + "\n  ".join(unmarked))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") and os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("this test needs root; CI must run it")
        pytest.skip("needs root (namespaces, daemons, nftables, packages)")


@pytest.fixture(scope="module")
def charon() -> Iterator[lab.Charon]:
    """A standalone charon in its own namespace."""
    lab.clean_leftovers()
    c = lab.Charon.start(f"c{os.urandom(2).hex()}")
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def gwlab() -> Iterator[lab.Lab]:
    """gw1 + road-warrior client + server, charons running, no VIP yet."""
    lb = lab.Lab.build(("gw1",))
    try:
        yield lb
    finally:
        lb.destroy()


@pytest.fixture(autouse=True)
def _no_nft_in_the_hosts_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Code run inside the test process (the host's network namespace) never changes the host's
    nftables: a handoff's drop rule there would drop real IKE traffic. The tests that need nft run
    the agent or the CLI inside a namespace of their own (other processes, untouched by this)."""
    from ipsec_vip import droprule

    def refuse(args: list[str], stdin: str | None = None, timeout: float = 10.0) -> str:
        raise droprule.NftUnavailable("tests never run nft in the host's namespace")
    monkeypatch.setattr(droprule, "installed", lambda: False)  # as on a host without nft
    monkeypatch.setattr(droprule, "_run", refuse)

