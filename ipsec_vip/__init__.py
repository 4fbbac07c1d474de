"""ipsec-vip: strongSwan connections that follow a floating IP address."""

__version__ = "0.1.0"
