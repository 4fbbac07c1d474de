"""``ipsec-vip mesh``: encrypt a whole cluster from one inventory (node-to-node tunnels on every
encrypted network, tunnels to every VIP, firewall rules). See docs/mesh.md."""
