#!/usr/bin/env bash
# An emulated cluster on one machine (DESIGN.md section 7): N hosts, each a
# network namespace with one 1500-MTU veth link to a bridge that lives in
# its own namespace. tc tbf shapes BOTH directions of every link to RATE
# (egress on the host side = upload, egress on the bridge side = download),
# so each host has a full-duplex NIC of RATE. The kernel has no netem:
# delay, if needed, is emulated in user space.
#
#   scripts/netns/cluster.sh up N RATE     create hosts h0..h{N-1} (RATE: tc syntax, e.g. 1gbit)
#   scripts/netns/cluster.sh down          remove everything (kills processes left in the hosts)
#   scripts/netns/cluster.sh run HOST CMD  run CMD inside HOST (h3 or 3)
#   scripts/netns/cluster.sh ip HOST       print HOST's address
#   scripts/netns/cluster.sh status        show hosts, links and qdisc counters
#
# Host hI has address 10.77.0.(I+1)/24 on eth0 (SY_SUBNET overrides the
# 10.77.0 prefix). Namespaces are named SY_CLUSTER-hI and SY_CLUSTER-br
# (SY_CLUSTER defaults to "sy"), so two clusters with different names and
# subnets can coexist. "up" replaces a cluster of the same name; "down" is
# idempotent. Needs root (ip netns, tc).
#
# tbf settings: burst = max(RATE/250, 64 KiB) bytes, at least one timer
# tick's worth of tokens even at HZ=250 (so a message smaller than that
# leaves at veth speed: only bulk transfers see RATE). Queue limits: the
# downlink (bridge side, like a switch port's buffer) holds SY_TBF_LATENCY
# (default 20ms) of RATE; the uplink (host side, like a NIC's queue,
# which TCP small queues keep bounded) SY_TBF_UP_LATENCY (default 200ms),
# so that a host sending to many peers at once is slowed down by its NIC,
# not by drops in its own queue.
#
# A script that brings a cluster up should tear it down on exit:
#
#   trap 'scripts/netns/cluster.sh down' EXIT
#   scripts/netns/cluster.sh up 4 1gbit
#   scripts/netns/cluster.sh run h1 bin/worker --listen "$(scripts/netns/cluster.sh ip h1):7070" &
#   scripts/netns/cluster.sh run h0 bin/coordinator ...
set -euo pipefail

NAME=${SY_CLUSTER:-sy}
SUBNET=${SY_SUBNET:-10.77.0}
LATENCY=${SY_TBF_LATENCY:-20ms}
UP_LATENCY=${SY_TBF_UP_LATENCY:-200ms}
BR="$NAME-br"

die() { echo "netns: $*" >&2; exit 1; }

host_ns() { # h3 | 3 -> sy-h3
	local h=${1#h}
	[[ "$h" =~ ^[0-9]+$ ]] || die "bad host '$1' (want hN or N)"
	echo "$NAME-h$h"
}

# rate_bps RATE -> bits per second (tc units: bit kbit mbit gbit, or bare bits)
rate_bps() {
	local r=${1,,}
	case "$r" in
	*gbit) echo $(( ${r%gbit} * 1000000000 )) ;;
	*mbit) echo $(( ${r%mbit} * 1000000 )) ;;
	*kbit) echo $(( ${r%kbit} * 1000 )) ;;
	*bit) echo "${r%bit}" ;;
	*[!0-9]*) die "rate '$1': use bit, kbit, mbit or gbit" ;;
	*) echo "$r" ;;
	esac
}

our_namespaces() {
	ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${NAME}-(h[0-9]+|br)\$" || true
}

down() {
	local ns pids
	for ns in $(our_namespaces); do
		pids=$(ip netns pids "$ns" 2>/dev/null || true)
		if [ -n "$pids" ]; then
			kill $pids 2>/dev/null || true
		fi
	done
	for ns in $(our_namespaces); do
		pids=$(ip netns pids "$ns" 2>/dev/null || true)
		for _ in 1 2 3 4 5 6 7 8 9 10; do
			[ -z "$pids" ] && break
			sleep 0.2
			pids=$(ip netns pids "$ns" 2>/dev/null || true)
		done
		[ -n "$pids" ] && kill -KILL $pids 2>/dev/null || true
		ip netns del "$ns" 2>/dev/null || true
	done
}

shape() { # NS DEV RATE LATENCY: tbf on DEV's egress
	local bps burst
	bps=$(rate_bps "$3")
	burst=$(( bps / 8 / 250 ))
	(( burst < 65536 )) && burst=65536
	ip netns exec "$1" tc qdisc replace dev "$2" root tbf rate "$3" burst "$burst" latency "$4"
}

up() {
	local n=$1 rate=$2 i ns
	[[ "$n" =~ ^[0-9]+$ ]] && (( n >= 1 && n <= 250 )) || die "N must be 1..250"
	rate_bps "$rate" >/dev/null
	down
	ip netns add "$BR"
	ip -n "$BR" link set lo up
	ip -n "$BR" link add br0 type bridge
	ip -n "$BR" link set br0 up
	ip netns exec "$BR" sysctl -qw net.bridge.bridge-nf-call-iptables=0 2>/dev/null || true
	for ((i = 0; i < n; i++)); do
		ns=$(host_ns "$i")
		ip netns add "$ns"
		ip -n "$ns" link set lo up
		ip -n "$BR" link add "v$i" mtu 1500 type veth peer name eth0 netns "$ns"
		ip -n "$BR" link set "v$i" master br0
		ip -n "$BR" link set "v$i" up
		ip -n "$ns" link set eth0 mtu 1500
		ip -n "$ns" addr add "$SUBNET.$((i + 1))/24" dev eth0
		ip -n "$ns" link set eth0 up
		# TCP buffers up to 16 MiB (per-namespace sysctls; best effort).
		ip netns exec "$ns" sysctl -qw net.ipv4.tcp_rmem="4096 131072 16777216" net.ipv4.tcp_wmem="4096 16384 16777216" 2>/dev/null || true
		shape "$ns" eth0 "$rate" "$UP_LATENCY" # upload
		shape "$BR" "v$i" "$rate" "$LATENCY"   # download
	done
	echo "netns: $n hosts ($NAME-h0..$NAME-h$((n - 1)), $SUBNET.1..$SUBNET.$n), $rate each way per host"
}

status() {
	local ns
	for ns in $(our_namespaces); do
		echo "== $ns"
		ip -n "$ns" -br addr
		ip netns exec "$ns" tc -s qdisc show | grep -A2 tbf || true
	done
}

cmd=${1:-}
shift || true
case "$cmd" in
up) [ $# -eq 2 ] || die "usage: up N RATE"; up "$1" "$2" ;;
down) down ;;
run)
	[ $# -ge 2 ] || die "usage: run HOST CMD..."
	ns=$(host_ns "$1"); shift
	exec ip netns exec "$ns" "$@"
	;;
ip) [ $# -eq 1 ] || die "usage: ip HOST"; h=$(host_ns "$1"); echo "$SUBNET.$(( ${h##*-h} + 1 ))" ;;
status) status ;;
*) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
esac
