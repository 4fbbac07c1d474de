"""Bad input: each case gives the contract's code, exactly one exit reason, no traceback,
and leaves charon exactly as it was."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lab import core as lab

pytestmark = pytest.mark.charon

GOOD = """connections {
  rw {
    local_addrs = %(vip)s
    mobike = no
    local {
      auth = psk
      id = vpn.example.com
    }
    remote {
      auth = psk
    }
    children {
      rw {
        local_ts = 198.51.100.0/24
      }
    }
  }
}
secrets {
  ike-x {
    id = vpn.example.com
    secret = "bad-input-psk-0123456789abcdef0123"
  }
}
"""

REFUSED_PROPOSAL = GOOD.replace("mobike = no", "mobike = no\n    proposals = aes999-nonsense-modp1")
REFUSED_VALUE = GOOD.replace("mobike = no", "mobike = maybe")
REFUSED_POOL = (GOOD.replace("mobike = no", "mobike = no\n    pools = p")
                + "pools {\n  p {\n    addrs = not-an-address\n  }\n}\n")


@pytest.fixture(scope="module")
def bad(gwlab, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    files = {
        "good": GOOD % {"vip": lab.VIP},
        "syntax": "connections {\n  rw {\n    local_addrs = 192.0.2.100\n",
        "empty": "",
        "other-vip": GOOD % {"vip": "192.0.2.200"},
        "refused-proposal": REFUSED_PROPOSAL % {"vip": lab.VIP},
        "refused-value": REFUSED_VALUE % {"vip": lab.VIP},
        "refused-pool": REFUSED_POOL % {"vip": lab.VIP},
        "cycle-a": "include cycle-b\n",
        "cycle-b": "include cycle-a\n",
        "bad-ref": "connections {\n  rw : nosuch {\n    local_addrs = 192.0.2.100\n  }\n}\n",
        "binary": "\x00\xff\xfe{{{}}}=\n",
    }
    for name, text in files.items():
        (d / name).write_text(text, errors="surrogateescape")
    (d / "unreadable").mkdir()  # a directory where a file is expected
    gwlab.add_vip("gw1")
    yield {"lab": gwlab, "dir": d, "rsctmp": str(d / "rsctmp")}
    gwlab.del_vip("gw1")


def snapshot(c: lab.Charon):
    return sorted(c.conns()), sorted(c.shared()), sorted(c.pools())


def p(b, **kw):
    gw = b["lab"].gateways["gw1"]
    out = {"vip": lab.VIP, "config": str(b["dir"] / "good"), "vici_socket": gw.uri}
    for k, v in kw.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = str(b["dir"] / v) if k == "config" and not v.startswith("/") else v
    return out


CASES = [
    # (id, action, params, expected rc)
    ("missing vip", "start", {"vip": None}, 6),
    ("empty vip", "validate-all", {"vip": ""}, 6),
    ("vip 10.0.0.256", "start", {"vip": "10.0.0.256"}, 6),
    ("vip hostname", "validate-all", {"vip": "vpn.example.com"}, 6),
    ("broken ipv6", "start", {"vip": "2001:db8:::1"}, 6),
    ("bad prefix", "validate-all", {"vip": "192.0.2.100/40"}, 6),
    ("unknown connection", "start", {"connections": "nosuch"}, 6),
    ("one of two unknown", "validate-all", {"connections": "rw, nosuch"}, 6),
    ("invalid connection name", "start", {"connections": "a.b"}, 6),
    ("config missing", "start", {"config": "does-not-exist"}, 6),
    ("config unreadable (a directory)", "validate-all", {"config": "unreadable"}, 6),
    ("config syntax error", "start", {"config": "syntax"}, 6),
    ("include cycle", "validate-all", {"config": "cycle-a"}, 6),
    ("unknown template", "start", {"config": "bad-ref"}, 6),
    ("binary garbage", "validate-all", {"config": "binary"}, 6),
    ("empty config", "start", {"config": "empty"}, 6),
    ("no connection for this vip", "start", {"config": "other-vip"}, 6),
    ("relative config path", "validate-all", {"config": "/../x"[1:]}, 6),
    ("socket missing", "start", {"vici_socket": "unix:///nonexistent/charon.vici"}, 1),
    ("socket not unix", "validate-all", {"vici_socket": "tcp://127.0.0.1:4502"}, 6),
    ("charon refuses proposal", "start", {"config": "refused-proposal"}, 6),
    ("charon refuses value", "start", {"config": "refused-value"}, 6),
    ("charon refuses pool", "start", {"config": "refused-pool"}, 6),
    ("vip not held", "start", {"vip": "192.0.2.99", "connections": "rw"}, 1),
    ("bad interface name", "validate-all", {"interface": "eth0/../x"}, 6),
    ("start_without_vip junk", "start", {"start_without_vip": "maybe"}, 6),
    ("vip on another interface", "start", {"interface": "eth1"}, 1),
    ("socket missing at level 10", "validate-all", {"vici_socket": "unix:///nonexistent/charon.vici"}, 5, "10"),
    ("interface missing at level 10", "validate-all", {"interface": "nosuch9"}, 6, "10"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(bad, case):
    _, action, kw, rc, *level = case
    gw = bad["lab"].gateways["gw1"]
    before = snapshot(gw)
    extra = {"OCF_CHECK_LEVEL": level[0]} if level else {}
    r = lab.agent(action, p(bad, **kw), netns=bad["lab"].ns("gw1"), rsctmp=bad["rsctmp"], **extra)
    assert r.rc == rc, r.stderr
    assert len(r.reasons) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert "bad-input-psk" not in r.stderr + r.stdout
    assert snapshot(gw) == before
    state = Path(bad["rsctmp"]) / "ipsec-vip"
    assert not state.exists() or [f for f in os.listdir(state) if f != "lock"] == []
    # the same input never breaks a probe or a stop
    probe = lab.agent("monitor", p(bad, **kw), netns=bad["lab"].ns("gw1"), rsctmp=bad["rsctmp"],
                      OCF_RESKEY_CRM_meta_interval="0")
    assert probe.rc == 7, probe.stderr
    stop = lab.agent("stop", p(bad, **kw), netns=bad["lab"].ns("gw1"), rsctmp=bad["rsctmp"])
    assert stop.rc == 0, stop.stderr


def test_good_config_validates(bad):
    r = lab.agent("validate-all", p(bad), netns=bad["lab"].ns("gw1"), rsctmp=bad["rsctmp"], OCF_CHECK_LEVEL="10")
    assert r.rc == 0, r.stderr
    assert r.reasons == []


def test_mobike_on_is_warned_about(bad, tmp_path):
    f = tmp_path / "mobike.conf"
    f.write_text((GOOD % {"vip": lab.VIP}).replace("mobike = no", "mobike = yes"))
    r = lab.agent("validate-all", p(bad, config=str(f)), netns=bad["lab"].ns("gw1"), rsctmp=bad["rsctmp"])
    assert r.rc == 0
    assert "mobike" in r.stderr


def test_unreachable_socket_reason_says_what_to_fix(bad, tmp_path):
    gw = bad["lab"].gateways["gw1"]
    r = lab.agent("start", p(bad, vici_socket="unix:///nonexistent/charon.vici"), netns=bad["lab"].ns("gw1"),
                  rsctmp=bad["rsctmp"])
    assert r.rc == 1
    # charon runs in that namespace, on another socket: the reason says so and names the socket
    assert f"charon runs (pid {gw.pid})" in r.reasons[0] and "/nonexistent/charon.vici" in r.reasons[0]
    ns = lab.add_netns("nocharon")
    try:
        r = lab.agent("start", p(bad, vici_socket="unix:///nonexistent/charon.vici", start_without_vip="true"),
                      netns=ns, rsctmp=str(tmp_path))
        assert r.rc == 1 and "charon is not running" in r.reasons[0], r.stderr
    finally:
        lab.remove_netns(ns)
