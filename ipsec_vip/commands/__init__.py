"""One module per ``ipsec-vip`` sub-command; each has ``register(subparsers)``."""
