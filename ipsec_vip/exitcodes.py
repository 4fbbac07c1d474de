"""The exit codes users can rely on, in one table: the README/docs tables and the man pages'
EXIT STATUS sections are generated from it (``python -m ipsec_vip.exitcodes``), and tests check
that the published copies match. Not imported by the agent's actions."""

from __future__ import annotations

# action -> (code, when); the agent's codes (OCF 1.1; 190 = Pacemaker's "degraded").
AGENT: dict[str, tuple[tuple[int, str], ...]] = {
    "start": ((0, "loaded (or already started: nothing disturbed)"),
              (1, "the VIP is not held here (nothing loaded), or charon unreachable or failing"),
              (5, "strongSwan's charon is not installed; stateful mode: charon has no ha plugin, or ha_fifo is "
                  "missing or not a FIFO (nothing loaded)"),
              (6, "parameters invalid, config does not parse, or charon refused it (rolled back); stateful "
                  "mode: a selected connection's pool is defined in the config (nothing loaded: it belongs in "
                  "charon.plugins.ha.pools)")),
    "stop": ((0, "nothing of ours is left loaded (also with a dead charon or a broken config)"),
             (1, "charon did not answer in time: our connections may still be loaded")),
    "monitor": ((0, "started: charon answers, every connection loaded, VIP held"),
                (1, "started but broken: connections gone, VIP gone, charon not answering"),
                (7, "not started here (a probe: also wherever nothing of ours can run)"),
                (8, "stateful mode: promoted and healthy (0 then means unpromoted and healthy)"),
                (9, "stateful mode: promoted but broken: charon or connections gone, VIP gone, or our SAs "
                    "passive here (the peer took the segment: both nodes promoted?)"),
                (190, "degraded, at OCF_CHECK_LEVEL=10: an initiator connection is not established")),
    "promote": ((0, "stateful mode: segment active here, every synced CHILD_SA of ours rekeyed"),
                (1, "the VIP is not held here (nothing changed), or charon refused the rekeys"),
                (3, "the resource is a primitive, not a promotable clone")),
    "demote": ((0, "stateful mode: segment dropped here, our SAs kept as passive copies, no DELETE sent"),
               (3, "the resource is a primitive, not a promotable clone")),
    "notify": ((0, "always; post-start on the promoted node: our state resent to the peer that started (only "
                   "clones created with `notify=true`; without, the starting instance asks for it)"),),
    "validate-all": ((0, "valid"),
                     (4, "level 10: the state directory under HA_RSCTMP is unsafe or unusable"),
                     (5, "level 10: charon not installed, or not answering on vici_socket"),
                     (6, "parameters or config invalid (stateful mode: also a selected connection's pool defined "
                         "in the config); level 10: interface absent")),
    "meta-data, usage": ((0, "always, as any user"),),
    "anything else": ((3, "not implemented"),),
}

# ipsec-vip(8)
CLI: tuple[tuple[int, str], ...] = (
    (0, "success (check: every finding ok; watch: stopped by SIGTERM or SIGINT)"),
    (1, "failure: charon unreachable or refusing, the VIP not held (up), problems found (check), "
        "drift found (mesh check)"),
    (2, "the command line does not parse (unknown command or option, missing argument)"),
    (5, "strongSwan's charon is not installed"),
    (6, "an argument's value or the config is invalid (as the agent's 6), the mesh inventory or its PSK file "
        "is invalid (nothing written)"),
)


def markdown() -> str:
    """Both tables as Markdown (what docs/agent.md carries between its markers)."""
    rows = ["| action | exit | when |", "|---|---|---|"]
    for action, codes in AGENT.items():
        rows += [f"| `{action}` | {code} | {text} |" for code, text in codes]
    rows += ["", "| `ipsec-vip` exit | when |", "|---|---|"]
    rows += [f"| {code} | {text} |" for code, text in CLI]
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
