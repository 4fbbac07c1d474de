"""The lab: network namespaces with real charons (core), a Pacemaker cluster (cluster), a mesh
(mesh), the watch daemon's helpers (watch), a Debian root and systemd-nspawn (debroot, nspawn)
and ``make demo`` (demo). Tests, ``make bench`` and the demo import it as equals."""
