"""The operators' README and the reference docs agree with the code and the lab (no root needed)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from ipsec_vip import exitcodes
from lab import cluster

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_is_a_first_screen_not_a_reference():
    assert len(README) < 15_000
    for must in ("make demo", "make check", "## Install from packages", "## Without Pacemaker"):
        assert must in README


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_resolves():
    """README, docs/ and bench/README.md: every relative link names a file that exists, and an
    anchor a heading of that file."""
    broken = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]:
        for link in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"[a-z]+:", link):
                continue
            path, _, anchor = link.partition("#")
            target = (doc.parent / path).resolve() if path else doc
            if not target.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {link}")
            elif anchor and target.suffix == ".md" and anchor not in {
                    _slug(h) for h in re.findall(r"^#+ (.*)$", target.read_text(), re.M)}:
                broken.append(f"{doc.relative_to(ROOT)}: {link} (no such heading)")
    assert broken == []


def test_published_exit_codes_are_the_code_table():
    text = (ROOT / "docs" / "agent.md").read_text()
    block = text.split("<!-- exitcodes:begin -->\n", 1)[1].split("<!-- exitcodes:end -->", 1)[0]
    assert block == exitcodes.markdown(), "regenerate: python -m ipsec_vip.exitcodes"


def _blocks(after: str) -> list[str]:
    """The shell code blocks of the README section whose heading starts with ``after``."""
    section = README.split(after, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def _norm(line: str) -> str:
    """A recipe line without what only the lab sets (nic=, monitor intervals, the config path)."""
    line = re.sub(r"\s+", " ", line.replace("\\\n", " ")).strip()
    line = re.sub(r" nic=\S+", "", line)
    line = re.sub(r"interval=\d+s", "interval=*", line)
    return re.sub(r"config=\S+", "config=*", line)


def test_the_lab_runs_the_readmes_pcs_recipe():
    readme = [_norm(c) for block in _blocks("## Create the resource")
              for c in re.split(r"\n(?=pcs )", block.replace("\\\n", " ")) if c.startswith("pcs ")]
    lab = {_norm(shlex.join(c)) for c in cluster.pcs_commands("/x.conf")}
    assert readme and set(readme) <= lab, set(readme) - lab


def test_the_lab_runs_the_readmes_crm_recipe():
    block = next(b for b in _blocks("## Create the resource") if b.startswith("crm configure"))
    readme = [_norm(line) for line in block.replace("\\\n", " ").splitlines()[1:-1]]
    lab = [_norm(line) for line in cluster.crm_configure("/x.conf").replace("\\\n", " ").splitlines()]
    # the lab's group holds one more VIP after the README's (the README says to add them there)
    missing = [r for r in readme if not any(x == r or x.startswith(r + " ") for x in lab)]
    assert readme and not missing, missing


def test_the_lab_runs_the_handoff_docs_recipes():
    """docs/handoff.md's pcs and crm recipes are what lab/cluster.py runs (lab-only options aside)."""
    text = (ROOT / "docs" / "handoff.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text.split("## Pacemaker", 1)[1].split("\n## ", 1)[0], re.S)
    pcs = [_norm(c) for c in re.split(r"\n(?=pcs )", blocks[0].replace("\\\n", " ")) if c.startswith("pcs ")]
    lab = [_norm(shlex.join(c)) for c in cluster.pcs_commands("/x.conf")]
    assert pcs == [x for x in lab if "vpn-backvip" not in x], pcs  # the lab has one more VIP, vpn-backvip
    crm = [_norm(line) for line in blocks[1].replace("\\\n", " ").splitlines()[1:-1]]
    lab_crm = [_norm(line) for line in cluster.crm_configure("/x.conf").replace("\\\n", " ").splitlines()]
    missing = [r for r in crm if not any(x == r or x.startswith(r + " ") for x in lab_crm)]
    assert crm and not missing, missing


def _recipe(block: str, prefix: str) -> list[str]:
    return [_norm(c) for c in re.split(rf"\n(?={prefix})", block.replace("\\\n", " ")) if c.startswith(prefix)]


def test_the_lab_runs_the_stateful_recipes():
    """README's and docs/stateful.md's promotable recipes are what lab/cluster.py runs, but for
    the lab's own monitor intervals, nic= and its inside VIP (vpn-backvip)."""
    lab = [_norm(shlex.join(c)) for c in cluster.pcs_stateful_commands("/x.conf", "vpn.xml")]
    lab = [x for x in lab if "vpn-backvip" not in x]
    readme = _recipe(_blocks("## Stateful failover")[0], "pcs ")
    docs = (ROOT / "docs" / "stateful.md").read_text()
    pcs_doc = re.findall(r"```\n(.*?)```", docs.split("## pcs", 1)[1], re.S)[0]
    assert readme == lab and _recipe(pcs_doc, "pcs ") == lab
    crm_doc = re.findall(r"```\n(.*?)```", docs.split("## crm", 1)[1], re.S)[0]
    crm = [_norm(line) for line in crm_doc.replace("\\\n", " ").splitlines()]
    lab_crm = [_norm(line) for line in cluster.crm_stateful_configure("/x.conf").replace("\\\n", " ").splitlines()]
    assert crm and not [line for line in crm if line not in lab_crm]


def test_the_keepalived_lab_runs_the_docs_configuration():
    """docs/keepalived.md's keepalived.conf is gw1's in lab/keepalived.py word for word (gw2's differs
    in its priority only); its unicast and sub-second excerpts are what the lab's variants add."""
    from lab import keepalived

    blocks = re.findall(r"```\n(.*?)```", (ROOT / "docs" / "keepalived.md").read_text(), re.S)
    assert blocks[0] == keepalived.vrrp_config("gw1")
    gw2 = keepalived.vrrp_config("gw2").splitlines()
    assert [a for a, b in zip(blocks[0].splitlines(), gw2) if a != b] == [line for line in blocks[0].splitlines()
                                                                          if "priority" in line]
    unicast = keepalived.vrrp_config("gw1", unicast=True)
    assert blocks[1] in unicast and blocks[1] not in keepalived.vrrp_config("gw1")
    subsecond = keepalived.vrrp_config("gw1", advert_int="0.2")
    assert blocks[2] in subsecond and "auth_pass" not in subsecond
