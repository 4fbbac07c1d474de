"""The same cluster set up with crmsh, as the README shows, and one planned move."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab import cluster
from lab import core as lab
from tests.test_failover import PSK, assert_clean, measure, wait_conns

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def crmcl() -> Iterator[cluster.Cluster]:
    c = cluster.Cluster.build(("gw1", "gw2"))
    try:
        conf = c.work / "swanctl.conf"
        conf.write_text(lab.GATEWAY_CONF % {"vip": lab.VIP, "psk": PSK})
        conf.chmod(0o600)
        c.nodes["gw1"].on("crm", "configure", stdin=cluster.crm_configure(str(conf)))
        where = c.wait_any("vpn")
        wait_conns(c, where)
        assert c.client is not None
        lab.client_load(c.client, PSK)
        assert lab.client_initiate(c.client)
        yield c
    finally:
        c.destroy()


def test_crm_standby_moves_the_tunnel(crmcl):
    first = crmcl.locate("vpn")[0]
    second = next(n for n in crmcl.nodes if n != first)
    measure(crmcl, "crm standby", lambda: crmcl.nodes[first].on("crm", "node", "standby", first), second)
    assert_clean(crmcl, first)
    crmcl.nodes[first].on("crm", "node", "online", first)
