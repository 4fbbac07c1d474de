"""The swanctl.conf reader against swanctl itself, over the corpus in tests/configs/.

Each corpus directory holds a ``swanctl.conf`` (plus whatever it includes and the files its
relative certificate names point to: ``swanctl --file`` resolves them beside the file). Two
proofs per config:

- byte for byte: ``swanctl --load-all --file`` talks to a recording VICI server; every
  ``load-conn``, ``load-pool`` and ``load-shared`` message it sends must equal, in order,
  what the library builds;
- in charon: the config loaded once by swanctl and once by the library into a real charon
  must make charon report the same ``list-conns``, ``get-pools`` and ``get-shared``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vici.protocol import Message

from ipsec_vip import swanctl
from ipsec_vip.errors import ConfigError
from ipsec_vip.vici_session import Vici
from lab import core as lab
from tests.vici_fakes import Recorder

CORPUS = Path(__file__).parent / "configs"
CASES = sorted(d.name for d in CORPUS.iterdir() if (d / "swanctl.conf").exists())


def _need_swanctl() -> None:
    if not os.access(lab.SWANCTL, os.X_OK):
        if os.environ.get("CI"):
            pytest.fail("swanctl is not installed; CI must run the corpus comparison")
        pytest.skip("swanctl not installed")


def _load_lib(case: str, monkeypatch: pytest.MonkeyPatch) -> swanctl.SwanctlConfig:
    monkeypatch.setenv("SWANCTL_DIR", "/nonexistent")  # swanctl --file ignores it: so must we
    return swanctl.load(str(CORPUS / case / "swanctl.conf"))


def _swanctl_load_all(case: str, uri: str) -> str:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SWANCTL_DIR": "/nonexistent"}
    p = lab.run(lab.SWANCTL, "--load-all", "--file", str(CORPUS / case / "swanctl.conf"), "--uri", uri,
                env=env)
    assert "invalid config file" not in p.stderr, p.stderr
    assert "failed" not in p.stdout, p.stdout
    return p.stdout


def test_corpus_covers_the_grammar() -> None:
    """The corpus is the proof; keep it from shrinking unnoticed."""
    assert len(CASES) >= 12
    text = "\n".join(p.read_bytes().decode() for p in CORPUS.rglob("*.conf"))
    for feature in ("include ", " : ", " =\n", '"', "#", "0x", "0s", "\r\n", "certs =", "pubkeys ="):
        assert feature in text, feature


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[Recorder]:
    r = Recorder(tmp_path / "rec.vici")
    yield r
    r.close()


@pytest.mark.parametrize("case", CASES)
def test_same_messages_as_swanctl(case: str, recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    _need_swanctl()
    _swanctl_load_all(case, recorder.uri)
    cfg = _load_lib(case, monkeypatch)
    theirs = {cmd: [Message.serialize(m) for m in recorder.sent(cmd)]
              for cmd in ("load-conn", "load-pool", "load-shared")}
    mine = {
        "load-conn": [Message.serialize({n: b}) for n, b in cfg.connections.items()],
        "load-pool": [Message.serialize({n: b}) for n, b in cfg.pools.items()],
        "load-shared": [Message.serialize(s) for s in cfg.secrets],
    }
    assert theirs["load-conn"], "swanctl loaded no connection: the case proves nothing"
    for cmd, sent in theirs.items():
        assert mine[cmd] == sent, (cmd, recorder.sent(cmd), _mine_decoded(cmd, cfg))


def _mine_decoded(cmd: str, cfg: swanctl.SwanctlConfig) -> Any:
    return {"load-conn": cfg.connections, "load-pool": cfg.pools,
            "load-shared": [s["id"] for s in cfg.secrets]}[cmd]


# --------------------------------------------------------------------------- in a real charon
def _report(charon: lab.Charon) -> dict[str, Any]:
    with charon.vici() as s:
        conns = {}
        for item in s.list_conns():
            for name, body in item.items():
                conns[name] = lab.decode(body)
        return {"conns": conns, "pools": lab.decode(s.get_pools()),
                "shared": sorted(lab.decode(s.get_shared()["keys"]))}


@pytest.mark.charon
@pytest.mark.parametrize("case", CASES)
def test_charon_reports_the_same(case: str, charon: lab.Charon, monkeypatch: pytest.MonkeyPatch) -> None:
    charon.clear()
    _swanctl_load_all(case, charon.uri)
    theirs = _report(charon)
    charon.clear()
    cfg = _load_lib(case, monkeypatch)
    with Vici(charon.uri, timeout=10) as v:
        for secret in cfg.secrets:
            v.request("load-shared", secret)
        for name, body in cfg.pools.items():
            v.request("load-pool", {name: body})
        v.request("load-conn", cfg.connections)  # one batched message, as the agent sends
    mine = _report(charon)
    charon.clear()
    assert theirs["conns"], "charon lists nothing: the case proves nothing"
    assert mine == theirs


# --------------------------------------------------------------------------- where we differ
LENIENT = {
    # swanctl silently drops the reference, the secret, or loads a byte of garbage;
    # the agent refuses instead (exit 6) so a typo never loads a half-configured VPN.
    "missing-ref": "connections {\n c : nothere {\n  local_addrs = 192.0.2.100\n }\n}\n",
    "ref-cycle": "connections {\n c : connections.d { local_addrs = 192.0.2.100 }\n"
                 " d : connections.c { x = 1 }\n}\n",
    "secret-missing": "secrets {\n ike-x { id = a }\n}\n",
    "bad-hex": "secrets {\n ike-x { secret = 0xZZ }\n}\n",
    "odd-hex": "secrets {\n ike-x { secret = 0x123 }\n}\n",  # swanctl guesses a leading 0
    "colon-inside-a-byte": "secrets {\n ike-x { secret = 0x1:2 }\n}\n",  # swanctl sends 0x02
    "unknown-secret-type": "secrets {\n IKE-x { secret = abc }\n}\n",
}
BOTH_REFUSE = {
    "quoted-section-name": 'connections {\n "c" { local_addrs = 192.0.2.100 }\n}\n',
    "unclosed": "connections {\n c {\n  local_addrs = 192.0.2.100\n }\n",
    "no-key": "connections {\n c {\n  = x\n }\n}\n",
    "stray-brace": "}\n",
}


DIFFERENCES = [(name, text, True) for name, text in BOTH_REFUSE.items()] + \
              [(name, text, False) for name, text in LENIENT.items()]


@pytest.mark.parametrize(("name", "text", "swanctl_refuses"), DIFFERENCES, ids=[d[0] for d in DIFFERENCES])
def test_refusals(name: str, text: str, swanctl_refuses: bool, recorder: Recorder, tmp_path: Path) -> None:
    """Both refuse broken syntax; the library also refuses what swanctl lets through."""
    _need_swanctl()
    f = tmp_path / "swanctl.conf"
    f.write_text(text)
    p = lab.run(lab.SWANCTL, "--load-all", "--file", str(f), "--uri", recorder.uri, check=False)
    assert ("invalid config file" in p.stderr) is swanctl_refuses, p.stderr
    if swanctl_refuses:
        assert not recorder.sent("load-conn")
    with pytest.raises(ConfigError, match=r"swanctl.conf"):
        swanctl.load(str(f))
