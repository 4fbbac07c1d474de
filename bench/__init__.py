"""``make bench``: ocf:ipsec-vip:strongswan beside its peers, measured in one run (``python -m bench``)."""
