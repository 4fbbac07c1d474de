#!/bin/sh
# swanctl-agent.sh start|stop|monitor - the baseline peer of the benchmark: a plain strongSwan
# CLI agent in shell, the way StarlingX drives charon (swanctl --load-conns, --list-conns,
# --list-sas, --terminate), with the semantics of ocf:ipsec-vip:strongswan:
#   start:   load the file's credentials and connections if this node holds the VIP (else 1)
#   monitor: 7 if not started here; 0 if the VIP is held and every connection it loaded is listed; else 1
#   stop:    unload the connections (swanctl --load-conns of an empty file); once the VIP is gone,
#            terminate their SAs; 0
# Parameters as OCF_RESKEY_vip, OCF_RESKEY_config, OCF_RESKEY_vici_socket; state in $HA_RSCTMP.
# A benchmark baseline, not a product: swanctl --load-conns/--load-creds replace *all* VICI-loaded
# connections/credentials, so two such resources on one charon would unload each other's.
SWANCTL=/usr/sbin/swanctl
VIP=${OCF_RESKEY_vip:?vip missing}
CONF=${OCF_RESKEY_config:-/etc/ipsec-vip/swanctl.conf}
URI=${OCF_RESKEY_vici_socket:-unix:///var/run/charon.vici}
STATE=${HA_RSCTMP:-/run/resource-agents}/swanctl-agent-${OCF_RESOURCE_INSTANCE:-default}.conns
held() { /usr/sbin/ip -o addr show | grep -qF " ${VIP%/*}/"; }
listed() { "$SWANCTL" --list-conns --uri "$URI" 2>/dev/null | sed -n 's/^\([^ ][^:]*\): IKE.*/\1/p'; }
case $1 in
start)
    held || { echo "ocf-exit-reason:VIP $VIP not held here" >&2; exit 1; }
    "$SWANCTL" --load-creds --noprompt --file "$CONF" --uri "$URI" >/dev/null || exit 1
    "$SWANCTL" --load-conns --file "$CONF" --uri "$URI" >/dev/null || exit 1
    listed >"$STATE.new" && mv "$STATE.new" "$STATE"
    [ -s "$STATE" ] || exit 1
    exit 0 ;;
monitor)
    [ -f "$STATE" ] || exit 7
    held || exit 1
    listed | awk 'NR==FNR { want[$0] = 1; next } { delete want[$0] } END { for (k in want) exit 1 }' "$STATE" - \
        || exit 1
    exit 0 ;;
stop)
    [ -f "$STATE" ] || exit 0
    empty=${STATE}.empty
    echo 'connections { }' >"$empty"
    "$SWANCTL" --load-conns --file "$empty" --uri "$URI" >/dev/null 2>&1
    if ! held; then
        "$SWANCTL" --list-sas --uri "$URI" 2>/dev/null | sed -n 's/^\([^ ][^:]*\): #\([0-9]*\),.*/\2/p' |
            while read -r id; do "$SWANCTL" --terminate --ike-id "$id" --force --uri "$URI" >/dev/null 2>&1; done
    fi
    rm -f "$STATE" "$empty"
    exit 0 ;;
meta-data|validate-all) exit 0 ;;
*) exit 3 ;;
esac
