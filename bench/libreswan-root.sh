#!/bin/sh
# libreswan-root.sh ROOT - build (once) a Debian 12 minbase root with libreswan and resource-agents
# for the upstream peer (ocf:heartbeat:ipsec). Debian's libreswan conflicts with its strongSwan
# packages, so it never touches the host's package set. Recipe: shared/lab/upstream-ipsec.md.
# Idempotent: exits at once when ROOT is ready; a half-built root is removed and rebuilt.
set -eu
ROOT=${1:?usage: libreswan-root.sh ROOT}
RA=/usr/lib/ocf/resource.d/heartbeat/ipsec
[ -x "$ROOT/usr/libexec/ipsec/pluto" ] && [ -f "$ROOT$RA" ] && [ -f "$ROOT/.ipsec-vip-bench-ready" ] && exit 0
MIRROR=${MIRROR:-$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
[ -n "$MIRROR" ] || MIRROR=$(awk '/^deb / && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
if [ -z "$MIRROR" ]; then
    echo "no Debian mirror in this host's apt sources (/etc/apt/sources.list.d/debian.sources or" \
         "/etc/apt/sources.list): set MIRROR=<your mirror's URL> and run again" >&2
    exit 1
fi
command -v debootstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; }
if grep -q " $ROOT/" /proc/self/mounts; then echo "mounts under $ROOT, refusing to rebuild" >&2; exit 1; fi
rm -rf "$ROOT"
mkdir -p "$(dirname "$ROOT")"
echo "building $ROOT (debootstrap bookworm from $MIRROR, about a minute)" >&2
debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 || { tail -20 "$ROOT.log" >&2; exit 1; }
SEC=$(echo "$MIRROR" | sed 's#/debian/*$#/debian-security#')
printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-security main\n' "$MIRROR" "$MIRROR" "$SEC" \
    >"$ROOT/etc/apt/sources.list"
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod +x "$ROOT/usr/sbin/policy-rc.d"
inroot() { unshare -m sh -c 'mount -t proc proc "$0/proc" && exec chroot "$0" env DEBIAN_FRONTEND=noninteractive "$@"' "$ROOT" "$@"; }
inroot apt-get update -qq >>"$ROOT.log" 2>&1
inroot apt-get install -y -qq libreswan resource-agents iproute2 procps >>"$ROOT.log" 2>&1 || { tail -20 "$ROOT.log" >&2; exit 1; }
[ -f "$ROOT/etc/ipsec.conf.dist" ] || cp "$ROOT/etc/ipsec.conf" "$ROOT/etc/ipsec.conf.dist"
touch "$ROOT/.ipsec-vip-bench-ready"
