#!/usr/bin/env bash
# cluster.sh runs a single-node Kubernetes on this machine, every part built
# from source through the Go module proxy, and takes it down again.
#
#   scripts/k8s/cluster.sh build   build (or find cached) binaries and images
#   scripts/k8s/cluster.sh up      build if needed, start the cluster, wait until
#                                  the node is Ready and cluster DNS answers;
#                                  last line: k8s: up kubeconfig=<path>
#   scripts/k8s/cluster.sh down    stop all of it and restore the host; last
#                                  line: k8s: down (idempotent)
#
# Build (Go >= 1.26 and gcc; cached in <cache>/<version>/{bin,images}, each
# piece rebuilt only when missing or, for the extras, built at another
# version; ~10 min on 2 vCPUs when nothing is cached, 0 s when all is):
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
#   kube-proxy, kubectl from the wrapper module scripts/k8s/kube
#   (k8s.io/kubernetes $KUBE_VERSION; regenerate its go.mod with kube/gen.sh),
#   etcd from scripts/k8s/etcd (go.etcd.io/etcd/server/v3 at the version the
#   main module pins), CoreDNS from scripts/k8s/coredns, crictl from
#   scripts/k8s/crictl, and the pause binary from build/pause/linux/pause.c
#   of the kubernetes module (gcc -static). Images, OCI image-layout tarballs
#   made with tar and sha256sum: localhost/switchyard/pause:3.10.1 (the
#   sandbox image), localhost/switchyard/coredns:<version>, and
#   localhost/switchyard/busybox:1.35 (Debian's busybox-static) for tests,
#   as scripts/k8s/smoke-test.sh uses it.
#
# up installs Debian's containerd, runc, containernetworking-plugins, iptables,
# nftables, conntrack and busybox-static with apt when missing (down leaves
# them installed; no init system starts their daemons), makes a PKI with openssl,
# creates a bridge holding the node address, and runs etcd, kube-apiserver
# (PodSecurity admission on: namespaces labelled
# pod-security.kubernetes.io/enforce=restricted are enforced), the
# controller-manager, scheduler, containerd, kubelet (cgroupfs, cgroup v1),
# kube-proxy (iptables) as host processes, pods on a CNI bridge with
# host-local IPAM, and CoreDNS as a pod behind the kube-dns Service at
# $SWITCHYARD_K8S_DNS_IP (the kubelet's clusterDNS). A FORWARD rule drops
# whatever the pod network sends to any interface but its own bridge, so no
# pod traffic leaves the machine. down stops every process by its recorded
# PID, removes every pod sandbox with crictl (killing the shims and what
# they run if containerd is gone), removes the interfaces, iptables chains
# (and the empty nftables tables iptables-nft made), network namespaces,
# mounts, kubepods cgroups and folders up made, and restores the sysctls to
# the baseline that up recorded. If up fails half way, run down. up on a
# running cluster prints its kubeconfig line again; on a half-stopped one it
# runs down first. Bring-up takes ~15 s, down ~3 s; the cluster idles at
# ~700 MiB resident (apiserver 270, controller-manager 115, kubelet 80).
#
# Environment (defaults in brackets):
#   SWITCHYARD_K8S_DIR     run folder: all state, logs, PIDs [/tmp/switchyard-k8s]
#   SWITCHYARD_K8S_CACHE   build cache; binaries in <cache>/<version>/bin
#                          [$HOME/.cache/switchyard-k8s]
#   KUBE_VERSION           Kubernetes version; must match kube/go.mod [v1.34.4]
#   SWITCHYARD_K8S_NODE    node name [switchyard-k8s]
#   SWITCHYARD_K8S_NODE_CIDR  node address on the bridge sy-k8s0 [10.213.0.1/24]
#   SWITCHYARD_K8S_POD_CIDR   pod subnet on the bridge sy-k8s-cni0 [10.244.0.0/24]
#   SWITCHYARD_K8S_SVC_CIDR   Service subnet [10.96.0.0/16]
#   SWITCHYARD_K8S_DNS_IP     ClusterIP of kube-dns [10.96.0.10]
#   SWITCHYARD_K8S_ETCD_PORT  etcd client port on 127.0.0.1 (peer: +1) [12379]
#   SWITCHYARD_K8S_TIMEOUT    seconds to wait for each readiness step [180]
#
# The run folder <run> holds: kubeconfig (admin, O=system:masters), bin ->
# the cached binaries (kubectl is <run>/bin/kubectl), pki/, etcd/,
# containerd/ (config.toml, root, state, socket containerd.sock), kubelet/
# (root dir), cni/, logs/<component>.log, pids/<component>.pid, baseline/
# (sysctls and host paths as up found them), manifests/ (what up applied).
# To use the cluster:
#   export KUBECONFIG=<run>/kubeconfig; <run>/bin/kubectl get pods -A
# To load an image (a docker-archive or OCI tarball) into the cluster:
#   ctr --address <run>/containerd/containerd.sock -n k8s.io images import IMAGE.tar
# and use it with imagePullPolicy: Never; nothing can be pulled here. The
# node's address is on the bridge sy-k8s0; NodePorts listen only there.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

KUBE_VERSION=${KUBE_VERSION:-v1.34.4}
run=${SWITCHYARD_K8S_DIR:-/tmp/switchyard-k8s}
cache=${SWITCHYARD_K8S_CACHE:-$HOME/.cache/switchyard-k8s}/$KUBE_VERSION
bin=$cache/bin
images=$cache/images
node=${SWITCHYARD_K8S_NODE:-switchyard-k8s}
node_cidr=${SWITCHYARD_K8S_NODE_CIDR:-10.213.0.1/24}
node_ip=${node_cidr%/*}
pod_cidr=${SWITCHYARD_K8S_POD_CIDR:-10.244.0.0/24}
svc_cidr=${SWITCHYARD_K8S_SVC_CIDR:-10.96.0.0/16}
dns_ip=${SWITCHYARD_K8S_DNS_IP:-10.96.0.10}
etcd_port=${SWITCHYARD_K8S_ETCD_PORT:-12379}
timeout=${SWITCHYARD_K8S_TIMEOUT:-180}

node_br=sy-k8s0     # holds the node address (this kernel has no dummy links)
cni_br=sy-k8s-cni0  # the pods' bridge, made by the CNI bridge plugin
fw_chain=SY-K8S-FWD # our FORWARD rules

# Versions of what the cache holds besides the Kubernetes binaries.
etcd_version=$(sed -n 's#^require go.etcd.io/etcd/server/v3 ##p' "$here/etcd/go.mod")
coredns_version=$(sed -n 's#^require github.com/coredns/coredns ##p' "$here/coredns/go.mod")
crictl_version=$(sed -n 's#^require sigs.k8s.io/cri-tools ##p' "$here/crictl/go.mod")
pause_version=3.10.1 # build/pause/Makefile's TAG in Kubernetes v1.34
busybox_tag=1.35
pause_image=localhost/switchyard/pause:$pause_version
coredns_image=localhost/switchyard/coredns:${coredns_version#v}
busybox_image=localhost/switchyard/busybox:$busybox_tag

kube_cmds=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
# Host processes, in start order; down stops them in reverse.
components=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy)
# Sysctls the kubelet, kube-proxy and the CNI bridge may change.
sysctls=(
	net.ipv4.ip_forward net.ipv4.conf.all.route_localnet
	net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
	vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
	kernel.keys.root_maxkeys kernel.keys.root_maxbytes
)
# Host paths the runtime stack writes to whatever it is told. Only our kubelet
# uses the first ones: down removes them if they did not exist before up.
kubelet_paths=(/var/log/pods /var/log/containers /var/lib/kubelet)
# Any containerd or CNI user shares these (containerd 1.6 puts its shims'
# sockets in /run/containerd/s whatever its state dir): down removes our CNI
# cache files and, if the path is new since up, its empty folders.
shared_paths=(/run/containerd /var/lib/cni /etc/cni /opt/cni)

say() { echo "k8s: $*"; }
die() {
	echo "k8s: error: $*" >&2
	exit 1
}

usage() {
	sed -n '2,71p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

# wait_for DESC CMD...: run CMD every half second until it succeeds or
# $timeout seconds pass.
wait_for() {
	local desc=$1 deadline=$((SECONDS + timeout))
	shift
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || die "timed out after ${timeout}s waiting for $desc"
		sleep 0.5
	done
}

# ---------------------------------------------------------------- build ----

# go_build MODDIR LDFLAGS NAME=PKG...: build the missing binaries of MODDIR's
# module in one go build per binary (the shared packages compile once, in
# the build cache), static and stripped, into $bin.
go_build() {
	local moddir=$1 ldflags=$2 spec name pkg t
	shift 2
	for spec in "$@"; do
		name=${spec%%=*} pkg=${spec#*=}
		[[ -x $bin/$name ]] && continue
		t=$SECONDS
		(cd "$moddir" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $ldflags" -o "$bin/$name.tmp" "$pkg")
		mv "$bin/$name.tmp" "$bin/$name"
		say "built $name in $((SECONDS - t))s"
	done
}

build_kube() {
	local v=k8s.io/component-base/version c=k8s.io/client-go/pkg/version minor
	minor=${KUBE_VERSION#v1.}
	minor=${minor%%.*}
	local ldflags="-X $v.gitVersion=$KUBE_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean
		-X $c.gitVersion=$KUBE_VERSION -X $c.gitMajor=1 -X $c.gitMinor=$minor -X $c.gitTreeState=clean"
	grep -q "^require k8s.io/kubernetes $KUBE_VERSION\$" "$here/kube/go.mod" ||
		die "kube/go.mod is not at $KUBE_VERSION: KUBE_VERSION=$KUBE_VERSION $here/kube/gen.sh"
	local specs=() cmd
	for cmd in "${kube_cmds[@]}"; do specs+=("$cmd=k8s.io/kubernetes/cmd/$cmd"); done
	go_build "$here/kube" "${ldflags//$'\n'/ }" "${specs[@]}"
}

# forget_stale NAME VERSION: drop a cached NAME (binary and image) that was
# built at another version than VERSION.
forget_stale() {
	local stamp=$bin/.$1.version
	[[ -f $stamp && $(<"$stamp") == "$2" ]] && return
	rm -f "$bin/$1" "$images/$1.tar"
	echo "$2" >"$stamp"
}

build_etcd() {
	forget_stale etcd "$etcd_version"
	go_build "$here/etcd" "-X go.etcd.io/etcd/api/v3/version.GitSHA=$etcd_version" etcd=.
}

build_crictl() {
	forget_stale crictl "$crictl_version"
	go_build "$here/crictl" "-X sigs.k8s.io/cri-tools/pkg/version.Version=$crictl_version" \
		crictl=sigs.k8s.io/cri-tools/cmd/crictl
}

build_coredns() {
	forget_stale coredns "$coredns_version"
	go_build "$here/coredns" "-X github.com/coredns/coredns/coremain.GitCommit=$coredns_version" coredns=.
}

# build_pause: the sandbox container's binary, from the C file that ships in
# the kubernetes module.
build_pause() {
	forget_stale pause "$pause_version"
	[[ -x $bin/pause ]] && return
	local src t=$SECONDS
	src=$(cd "$here/kube" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c
	need_cmd gcc gcc
	gcc -Os -Wall -Werror -static -DVERSION="v$pause_version-switchyard" -o "$bin/pause.tmp" "$src"
	mv "$bin/pause.tmp" "$bin/pause"
	say "built pause in $((SECONDS - t))s"
}

# oci_image ROOTFS NAME:TAG OUT.tar ENTRYPOINT...: write an OCI image-layout
# tarball of ROOTFS, one uncompressed layer, with the annotations
# `ctr images import` names the image by.
oci_image() {
	local rootfs=$1 ref=$2 out=$3
	shift 3
	local d layer config manifest entry
	d=$(mktemp -d)
	mkdir -p "$d/blobs/sha256"
	tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$rootfs" -cf "$d/layer.tar" .
	layer=$(blob "$d" "$d/layer.tar")
	entry=$(printf '"%s",' "$@")
	printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":[%s],"Env":["PATH=/bin:/usr/bin:/sbin:/usr/sbin"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
		"${entry%,}" "${layer%% *}" >"$d/config.json"
	config=$(blob "$d" "$d/config.json")
	printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
		${config} ${layer} >"$d/manifest.json"
	manifest=$(blob "$d" "$d/manifest.json")
	printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
		${manifest} "$ref" "${ref##*:}" >"$d/index.json"
	echo '{"imageLayoutVersion":"1.0.0"}' >"$d/oci-layout"
	tar -C "$d" -cf "$out.tmp" oci-layout index.json blobs
	mv "$out.tmp" "$out"
	rm -rf "$d"
}

# blob DIR FILE: move FILE into DIR's blob store; print "<sha256> <size>".
blob() {
	local sum size
	sum=$(sha256sum "$2" | cut -d' ' -f1)
	size=$(stat -c %s "$2")
	mv "$2" "$1/blobs/sha256/$sum"
	echo "$sum $size"
}

build_images() {
	mkdir -p "$images"
	local r
	r=$(mktemp -d)
	if [[ ! -f $images/pause.tar ]]; then
		install -D "$bin/pause" "$r/pause/pause"
		oci_image "$r/pause" "$pause_image" "$images/pause.tar" /pause
	fi
	if [[ ! -f $images/coredns.tar ]]; then
		install -D "$bin/coredns" "$r/coredns/coredns"
		oci_image "$r/coredns" "$coredns_image" "$images/coredns.tar" /coredns
	fi
	if [[ ! -f $images/busybox.tar ]]; then
		need_pkg busybox-static /bin/busybox
		mkdir -p "$r/busybox/bin" "$r/busybox/etc" "$r/busybox/tmp"
		cp /bin/busybox "$r/busybox/bin/busybox"
		local applet
		for applet in $("$r/busybox/bin/busybox" --list); do
			[[ $applet == busybox ]] || ln -s busybox "$r/busybox/bin/$applet"
		done
		printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$r/busybox/etc/passwd"
		printf 'root:x:0:\nnobody:x:65534:\n' >"$r/busybox/etc/group"
		chmod 1777 "$r/busybox/tmp"
		oci_image "$r/busybox" "$busybox_image" "$images/busybox.tar" /bin/sh
	fi
	rm -rf "$r"
}

cmd_build() {
	mkdir -p "$bin" "$images"
	local t=$SECONDS
	command -v go >/dev/null || die "no go on PATH: the modules need Go >= 1.26 (Debian's golang-go is too old)"
	build_kube
	build_etcd
	build_coredns
	build_crictl
	build_pause
	build_images
	say "build done in $((SECONDS - t))s: $bin"
}

# ------------------------------------------------------------- packages ----

apt_updated=
# need_pkg PACKAGE FILE: apt-get install PACKAGE unless FILE exists.
need_pkg() {
	[[ -e $2 ]] && return
	if [[ -z $apt_updated ]]; then
		apt-get update -qq >/dev/null
		apt_updated=1
	fi
	say "installing $1"
	# No init system starts the daemons these packages ship; keep it so.
	DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq --no-install-recommends "$1" >/dev/null
	[[ -e $2 ]] || die "$1 installed but $2 is missing"
}

# need_cmd CMD PACKAGE
need_cmd() { command -v "$1" >/dev/null || need_pkg "$2" "/usr/bin/$1"; }

install_packages() {
	need_pkg containerd /usr/bin/containerd
	need_pkg runc /usr/sbin/runc
	need_pkg containernetworking-plugins /usr/lib/cni/bridge
	need_pkg iptables /usr/sbin/iptables
	need_pkg nftables /usr/sbin/nft # down deletes the empty tables iptables-nft made
	need_pkg conntrack /usr/sbin/conntrack
	need_pkg busybox-static /bin/busybox
}

# ------------------------------------------------------------- baseline ----

# record_baseline: what down restores: the sysctls, which host paths,
# network namespaces and iptables chains existed.
record_baseline() {
	local b=$run/baseline k v
	[[ -d $b ]] && return # a half-done up recorded it already
	mkdir -p "$b.tmp"
	for k in "${sysctls[@]}"; do
		v=$(sysctl -n "$k" 2>/dev/null) && printf '%s=%s\n' "$k" "$v"
	done >"$b.tmp/sysctl"
	for k in "${kubelet_paths[@]}" "${shared_paths[@]}"; do [[ -e $k ]] && echo "$k"; done >"$b.tmp/paths"
	ls /run/netns 2>/dev/null >"$b.tmp/netns" || true
	for k in iptables ip6tables; do
		"$k-save" 2>/dev/null | sed -n 's/^\*//p' >"$b.tmp/$k-tables"
		our_chains "$k" >"$b.tmp/$k"
	done
	mv "$b.tmp" "$b"
}

# our_chains IPTABLES: print "TABLE CHAIN" for each chain named like the ones
# kube-proxy, the kubelet, the CNI plugins and this script make.
our_chains() {
	local t
	for t in filter nat mangle raw; do
		"$1-save" -t "$t" 2>/dev/null | sed -n "s/^:\(KUBE-[^ ]*\|CNI-[^ ]*\|$fw_chain\) .*/$t \1/p"
	done
}

restore_sysctls() {
	local f=$run/baseline/sysctl line
	[[ -f $f ]] || return 0
	while IFS= read -r line; do
		sysctl -qw "$line" 2>/dev/null || echo "k8s: warning: cannot restore $line" >&2
	done <"$f"
}

# ------------------------------------------------------------- network ----

setup_network() {
	if ! ip link show "$node_br" >/dev/null 2>&1; then
		ip link add "$node_br" type bridge
	fi
	ip addr replace "$node_cidr" dev "$node_br"
	ip link set "$node_br" up
	sysctl -qw net.ipv4.ip_forward=1
	# Pod traffic may only go back to the pods' bridge (or to this host,
	# which is INPUT, not FORWARD); nothing from elsewhere reaches the pods.
	iptables -N "$fw_chain" 2>/dev/null || iptables -F "$fw_chain"
	iptables -A "$fw_chain" -s "$pod_cidr" ! -o "$cni_br" -j DROP
	iptables -A "$fw_chain" -d "$pod_cidr" ! -i "$cni_br" -j DROP
	ensure_forward_first
}

# ensure_forward_first: our FORWARD jump is rule 1, ahead of kube-proxy's.
ensure_forward_first() {
	while iptables -D FORWARD -j "$fw_chain" 2>/dev/null; do :; done
	iptables -I FORWARD 1 -j "$fw_chain"
}

write_cni_config() {
	mkdir -p "$run/cni/net.d" "$run/cni/ipam"
	cat >"$run/cni/net.d/10-switchyard.conflist" <<-EOF
		{
		  "cniVersion": "0.4.0",
		  "name": "switchyard-k8s",
		  "plugins": [{
		    "type": "bridge",
		    "bridge": "$cni_br",
		    "isGateway": true,
		    "ipMasq": false,
		    "hairpinMode": true,
		    "ipam": {
		      "type": "host-local",
		      "dataDir": "$run/cni/ipam",
		      "ranges": [[{"subnet": "$pod_cidr"}]],
		      "routes": [{"dst": "0.0.0.0/0"}]
		    }
		  }]
		}
	EOF
}

# teardown_network: remove our interfaces and iptables chains (those that
# were not there at the baseline), and the pods' network namespaces.
teardown_network() {
	local link
	# Pods' veths normally went with their network namespaces.
	for link in $(ip -o link show master "$cni_br" 2>/dev/null | awk -F': ' '{ print $2 }'); do
		ip link del "${link%@*}" 2>/dev/null || true
	done
	for link in "$cni_br" "$node_br"; do ip link del "$link" 2>/dev/null || true; done
	local ipt
	for ipt in iptables ip6tables; do
		command -v "$ipt" >/dev/null || continue
		remove_chains "$ipt" "$run/baseline/$ipt"
		remove_empty_tables "$ipt" "$run/baseline/$ipt-tables"
	done
	local ns
	for ns in $(ls /run/netns 2>/dev/null); do
		[[ $ns == cni-* ]] || continue
		grep -qx "$ns" "$run/baseline/netns" 2>/dev/null && continue
		umount "/run/netns/$ns" 2>/dev/null || umount -l "/run/netns/$ns" 2>/dev/null || true
		rm -f "/run/netns/$ns"
	done
}

# remove_chains IPTABLES BASELINE: delete the jumps into, then the chains
# themselves, that our_chains lists now and BASELINE did not.
remove_chains() {
	local ipt=$1 baseline=$2 new table chain rule
	if [[ -f $baseline ]]; then
		new=$(our_chains "$ipt" | grep -vxF -f "$baseline" || true)
	else # down ran already: only our own chain can be left
		new=$(our_chains "$ipt" | grep " $fw_chain\$" || true)
	fi
	[[ -n $new ]] || return 0
	while read -r table chain; do
		"$ipt-save" -t "$table" 2>/dev/null | sed -n "s/^-A \(.* -j $chain\)\( .*\)\{0,1\}\$/-D \1\2/p" |
			while IFS= read -r rule; do
				eval "$ipt -w -t $table $rule" 2>/dev/null || true
			done
	done <<<"$new"
	while read -r table chain; do "$ipt" -w -t "$table" -F "$chain" 2>/dev/null || true; done <<<"$new"
	while read -r table chain; do "$ipt" -w -t "$table" -X "$chain" 2>/dev/null || true; done <<<"$new"
}

# remove_empty_tables IPTABLES BASELINE: iptables-nft makes a kernel nftables
# table the first time anyone touches it; delete those that BASELINE did not
# list and that hold no rules, no chains of their own and no DROP policy.
remove_empty_tables() {
	local ipt=$1 baseline=$2 family=ip t
	[[ -f $baseline && -x /usr/sbin/nft ]] || return 0
	"$ipt" -V 2>/dev/null | grep -q nf_tables || return 0
	[[ $ipt == ip6tables ]] && family=ip6
	for t in $("$ipt-save" 2>/dev/null | sed -n 's/^\*//p'); do
		grep -qxF "$t" "$baseline" && continue
		"$ipt-save" -t "$t" 2>/dev/null | grep -qE '^-A |^:[^ ]+ (-|DROP)' && continue
		nft delete table "$family" "$t" 2>/dev/null || true
	done
}

# ------------------------------------------------------------------ PKI ----

# cert NAME SUBJECT EXTENDED_KEY_USAGE [SUBJECT_ALT_NAMES]: a key and a
# certificate signed by the cluster CA, in $run/pki.
cert() {
	local p=$run/pki name=$1 subj=$2 eku=$3 san=${4:-}
	openssl req -new -newkey rsa:2048 -nodes -keyout "$p/$name.key" -subj "$subj" -out "$p/$name.csr" 2>/dev/null
	{
		echo "basicConstraints=CA:FALSE"
		echo "keyUsage=critical,digitalSignature,keyEncipherment"
		echo "extendedKeyUsage=$eku"
		[[ -z $san ]] || echo "subjectAltName=$san"
	} >"$p/$name.ext"
	openssl x509 -req -in "$p/$name.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial \
		-days 365 -extfile "$p/$name.ext" -out "$p/$name.crt" 2>/dev/null
	rm "$p/$name.csr" "$p/$name.ext"
}

make_pki() {
	local p=$run/pki svc_ip
	mkdir -p "$p"
	chmod 700 "$p"
	svc_ip=$(first_ip "$svc_cidr")
	openssl req -x509 -newkey rsa:2048 -nodes -keyout "$p/ca.key" -out "$p/ca.crt" -days 3650 \
		-subj "/CN=switchyard-k8s-ca" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
	cert etcd-server "/CN=etcd" serverAuth "IP:127.0.0.1,DNS:localhost"
	cert apiserver-etcd-client "/CN=kube-apiserver-etcd-client" clientAuth
	cert apiserver "/CN=kube-apiserver" serverAuth \
		"IP:$node_ip,IP:127.0.0.1,IP:$svc_ip,DNS:$node,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
	cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
	cert admin "/O=system:masters/CN=kubernetes-admin" clientAuth
	cert controller-manager "/CN=system:kube-controller-manager" clientAuth
	cert scheduler "/CN=system:kube-scheduler" clientAuth
	cert kube-proxy "/CN=system:kube-proxy" clientAuth
	# The kubelet's one certificate: client to the apiserver, server on :10250.
	cert kubelet "/O=system:nodes/CN=system:node:$node" serverAuth,clientAuth "IP:$node_ip,DNS:$node"
	openssl genrsa -out "$p/sa.key" 2048 2>/dev/null
	openssl rsa -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
}

# first_ip CIDR: the first host address, e.g. 10.96.0.0/16 -> 10.96.0.1.
first_ip() {
	local net=${1%/*}
	echo "${net%.*}.$((${net##*.} + 1))"
}

# kubeconfig FILE CERT_NAME: a kubeconfig with CERT_NAME's credentials.
kubeconfig() {
	local p=$run/pki
	cat >"$1" <<-EOF
		apiVersion: v1
		kind: Config
		clusters:
		- name: switchyard-k8s
		  cluster:
		    server: https://$node_ip:6443
		    certificate-authority-data: $(base64 -w0 "$p/ca.crt")
		users:
		- name: $2
		  user:
		    client-certificate-data: $(base64 -w0 "$p/$2.crt")
		    client-key-data: $(base64 -w0 "$p/$2.key")
		contexts:
		- name: switchyard-k8s
		  context: {cluster: switchyard-k8s, user: $2}
		current-context: switchyard-k8s
	EOF
	chmod 600 "$1"
}

# ------------------------------------------------------------ processes ----

# start NAME CMD...: run CMD in its own session, log to logs/NAME.log,
# record its PID in pids/NAME.pid.
start() {
	local name=$1
	shift
	setsid "$@" >"$run/logs/$name.log" 2>&1 </dev/null &
	echo $! >"$run/pids/$name.pid"
}

# ours PID: PID runs and is one of ours (its command line names $run).
ours() {
	[[ -r /proc/$1/cmdline ]] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -- "$run/"
}

# alive NAME: the process recorded for NAME runs.
alive() {
	local f=$run/pids/$1.pid
	[[ -f $f ]] && ours "$(<"$f")"
}

# check_alive NAME: fail (and show the log's tail) if NAME died.
check_alive() {
	alive "$1" && return
	tail -n 20 "$run/logs/$1.log" >&2 || true
	die "$1 exited; log: $run/logs/$1.log"
}

# stop NAME: SIGTERM, then SIGKILL after 10 s, the process recorded for NAME.
stop() {
	local f=$run/pids/$1.pid pid i
	[[ -f $f ]] || return 0
	pid=$(<"$f")
	if ours "$pid"; then
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 100; i++)); do
			ours "$pid" || break
			sleep 0.1
		done
		ours "$pid" && kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$f"
}

start_etcd() {
	local p=$run/pki
	mkdir -p -m 700 "$run/etcd"
	start etcd "$bin/etcd" --name "$node" --data-dir "$run/etcd" \
		--listen-client-urls "https://127.0.0.1:$etcd_port" --advertise-client-urls "https://127.0.0.1:$etcd_port" \
		--listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
		--initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
		--initial-cluster "$node=http://127.0.0.1:$((etcd_port + 1))" \
		--cert-file "$p/etcd-server.crt" --key-file "$p/etcd-server.key" \
		--client-cert-auth --trusted-ca-file "$p/ca.crt"
	wait_for etcd curl -sf --cacert "$p/ca.crt" --cert "$p/apiserver-etcd-client.crt" \
		--key "$p/apiserver-etcd-client.key" "https://127.0.0.1:$etcd_port/health"
}

start_apiserver() {
	local p=$run/pki
	start kube-apiserver "$bin/kube-apiserver" \
		--advertise-address="$node_ip" --bind-address="$node_ip" --secure-port=6443 \
		--etcd-servers="https://127.0.0.1:$etcd_port" --etcd-cafile="$p/ca.crt" \
		--etcd-certfile="$p/apiserver-etcd-client.crt" --etcd-keyfile="$p/apiserver-etcd-client.key" \
		--client-ca-file="$p/ca.crt" --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-account-key-file="$p/sa.pub" --service-account-signing-key-file="$p/sa.key" \
		--service-cluster-ip-range="$svc_cidr" \
		--authorization-mode=Node,RBAC \
		--enable-admission-plugins=NodeRestriction,PodSecurity \
		--allow-privileged=true \
		--kubelet-client-certificate="$p/apiserver-kubelet-client.crt" \
		--kubelet-client-key="$p/apiserver-kubelet-client.key" \
		--kubelet-certificate-authority="$p/ca.crt" \
		--kubelet-preferred-address-types=InternalIP,Hostname \
		--profiling=false
	wait_for kube-apiserver "$bin/kubectl" --kubeconfig "$run/kubeconfig" get --raw /readyz
}

start_controller_manager() {
	local p=$run/pki k=$run/controller-manager.kubeconfig
	kubeconfig "$k" controller-manager
	start kube-controller-manager "$bin/kube-controller-manager" \
		--kubeconfig="$k" --authentication-kubeconfig="$k" --authorization-kubeconfig="$k" \
		--bind-address=127.0.0.1 --leader-elect=false \
		--service-account-private-key-file="$p/sa.key" --root-ca-file="$p/ca.crt" \
		--cluster-signing-cert-file="$p/ca.crt" --cluster-signing-key-file="$p/ca.key" \
		--use-service-account-credentials --service-cluster-ip-range="$svc_cidr" \
		--profiling=false
}

start_scheduler() {
	local k=$run/scheduler.kubeconfig
	kubeconfig "$k" scheduler
	start kube-scheduler "$bin/kube-scheduler" \
		--kubeconfig="$k" --authentication-kubeconfig="$k" --authorization-kubeconfig="$k" \
		--bind-address=127.0.0.1 --leader-elect=false --profiling=false
}

start_containerd() {
	local c=$run/containerd
	mkdir -p "$c"
	cat >"$c/config.toml" <<-EOF
		version = 2
		root = "$c/root"
		state = "$c/state"
		[grpc]
		  address = "$c/containerd.sock"
		[plugins."io.containerd.internal.v1.opt"]
		  path = "$c/opt"
		[plugins."io.containerd.grpc.v1.cri"]
		  sandbox_image = "$pause_image"
		  # root here lacks CAP_SYS_RESOURCE: runc cannot lower a sandbox's
		  # oom_score_adj below ours, so do not ask it to.
		  restrict_oom_score_adj = true
		  [plugins."io.containerd.grpc.v1.cri".containerd]
		    default_runtime_name = "runc"
		    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
		      runtime_type = "io.containerd.runc.v2"
		      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
		        SystemdCgroup = false
		        BinaryName = "/usr/sbin/runc"
		        Root = "$c/runc"
		  [plugins."io.containerd.grpc.v1.cri".cni]
		    bin_dir = "/usr/lib/cni"
		    conf_dir = "$run/cni/net.d"
	EOF
	start containerd /usr/bin/containerd --config "$c/config.toml"
	wait_for containerd ctr --address "$c/containerd.sock" version
	local img
	for img in pause coredns busybox; do
		ctr --address "$c/containerd.sock" -n k8s.io images import "$images/$img.tar" >/dev/null
	done
}

start_kubelet() {
	local p=$run/pki k=$run/kubelet.kubeconfig
	mkdir -p "$run/kubelet" "$run/pod-logs"
	kubeconfig "$k" kubelet
	cat >"$run/kubelet.yaml" <<-EOF
		apiVersion: kubelet.config.k8s.io/v1beta1
		kind: KubeletConfiguration
		address: $node_ip
		port: 10250
		readOnlyPort: 0
		healthzBindAddress: 127.0.0.1
		healthzPort: 10248
		cgroupDriver: cgroupfs
		failCgroupV1: false
		failSwapOn: false
		containerRuntimeEndpoint: unix://$run/containerd/containerd.sock
		podLogsDir: $run/pod-logs
		tlsCertFile: $p/kubelet.crt
		tlsPrivateKeyFile: $p/kubelet.key
		rotateCertificates: false
		authentication:
		  anonymous: {enabled: false}
		  webhook: {enabled: true}
		  x509: {clientCAFile: $p/ca.crt}
		authorization:
		  mode: Webhook
		clusterDomain: cluster.local
		clusterDNS: [$dns_ip]
		resolvConf: /etc/resolv.conf
	EOF
	start kubelet "$bin/kubelet" --config="$run/kubelet.yaml" --kubeconfig="$k" \
		--node-ip="$node_ip" --hostname-override="$node" \
		--root-dir="$run/kubelet" --cert-dir="$run/kubelet/pki"
}

start_kube_proxy() {
	local k=$run/kube-proxy.kubeconfig
	kubeconfig "$k" kube-proxy
	cat >"$run/kube-proxy.yaml" <<-EOF
		apiVersion: kubeproxy.config.k8s.io/v1alpha1
		kind: KubeProxyConfiguration
		clientConnection:
		  kubeconfig: $k
		mode: iptables
		hostnameOverride: $node
		clusterCIDR: $pod_cidr
		metricsBindAddress: 127.0.0.1:10249
		healthzBindAddress: 127.0.0.1:10256
		nodePortAddresses: ["$node_ip/32"]
		iptables:
		  # true would set net.ipv4.conf.all.route_localnet.
		  localhostNodePorts: false
		# Zeros leave the conntrack sysctls alone.
		conntrack:
		  maxPerCore: 0
		  min: 0
		  tcpEstablishedTimeout: 0s
		  tcpCloseWaitTimeout: 0s
	EOF
	start kube-proxy "$bin/kube-proxy" --config="$run/kube-proxy.yaml"
}

# ------------------------------------------------------------ cluster DNS ----

start_coredns() {
	mkdir -p "$run/manifests"
	local m=$run/manifests/coredns.yaml
	cat >"$m" <<-EOF
		apiVersion: v1
		kind: ServiceAccount
		metadata: {name: coredns, namespace: kube-system}
		---
		apiVersion: rbac.authorization.k8s.io/v1
		kind: ClusterRole
		metadata: {name: "system:coredns"}
		rules:
		- apiGroups: [""]
		  resources: [endpoints, services, pods, namespaces]
		  verbs: [list, watch]
		- apiGroups: [discovery.k8s.io]
		  resources: [endpointslices]
		  verbs: [list, watch]
		---
		apiVersion: rbac.authorization.k8s.io/v1
		kind: ClusterRoleBinding
		metadata: {name: "system:coredns"}
		roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
		subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
		---
		apiVersion: v1
		kind: ConfigMap
		metadata: {name: coredns, namespace: kube-system}
		data:
		  Corefile: |
		    .:53 {
		        errors
		        health {
		            lameduck 1s
		        }
		        ready
		        kubernetes cluster.local in-addr.arpa ip6.arpa {
		            pods insecure
		            fallthrough in-addr.arpa ip6.arpa
		            ttl 30
		        }
		        cache 30
		        loadbalance
		        reload
		    }
		---
		apiVersion: apps/v1
		kind: Deployment
		metadata:
		  name: coredns
		  namespace: kube-system
		  labels: {k8s-app: kube-dns}
		spec:
		  replicas: 1
		  selector:
		    matchLabels: {k8s-app: kube-dns}
		  template:
		    metadata:
		      labels: {k8s-app: kube-dns}
		    spec:
		      serviceAccountName: coredns
		      priorityClassName: system-cluster-critical
		      dnsPolicy: Default
		      containers:
		      - name: coredns
		        image: $coredns_image
		        imagePullPolicy: Never
		        args: [-conf, /etc/coredns/Corefile]
		        ports:
		        - {name: dns, containerPort: 53, protocol: UDP}
		        - {name: dns-tcp, containerPort: 53, protocol: TCP}
		        resources:
		          requests: {cpu: 50m, memory: 32Mi}
		          limits: {memory: 128Mi}
		        securityContext:
		          allowPrivilegeEscalation: false
		          readOnlyRootFilesystem: true
		          capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}
		        livenessProbe:
		          httpGet: {path: /health, port: 8080}
		          periodSeconds: 10
		        readinessProbe:
		          httpGet: {path: /ready, port: 8181}
		          periodSeconds: 2
		        volumeMounts:
		        - {name: config, mountPath: /etc/coredns, readOnly: true}
		      volumes:
		      - name: config
		        configMap: {name: coredns}
		---
		apiVersion: v1
		kind: Service
		metadata:
		  name: kube-dns
		  namespace: kube-system
		  labels: {k8s-app: kube-dns}
		spec:
		  clusterIP: $dns_ip
		  selector: {k8s-app: kube-dns}
		  ports:
		  - {name: dns, port: 53, protocol: UDP}
		  - {name: dns-tcp, port: 53, protocol: TCP}
	EOF
	kubectl apply -f "$m" >/dev/null
}

kubectl() { "$bin/kubectl" --kubeconfig "$run/kubeconfig" "$@"; }

node_ready() {
	[[ $(kubectl get node "$node" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}') == True ]]
}

dns_answers() {
	busybox nslookup kubernetes.default.svc.cluster.local "$dns_ip" | grep -q "$(first_ip "$svc_cidr")"
}

# ------------------------------------------------------------------ up ----

cmd_up() {
	local t0=$SECONDS t c all=1
	if [[ -d $run/pids ]]; then
		for c in "${components[@]}"; do alive "$c" || all=; done
		if [[ -n $all ]]; then
			say "already up"
			say "up kubeconfig=$run/kubeconfig"
			return
		fi
		say "$run holds a stopped or partial cluster: taking it down first"
		cmd_down
	fi
	cmd_build
	install_packages
	t=$SECONDS
	mkdir -p "$run/logs" "$run/pids"
	record_baseline
	ln -sfn "$bin" "$run/bin"
	setup_network
	write_cni_config
	make_pki
	kubeconfig "$run/kubeconfig" admin
	start_etcd
	start_apiserver
	start_controller_manager
	start_scheduler
	start_containerd
	start_kubelet
	start_kube_proxy
	wait_for "node $node Ready" node_ready
	for c in "${components[@]}"; do check_alive "$c"; done
	start_coredns
	wait_for "cluster DNS at $dns_ip" dns_answers
	ensure_forward_first
	for c in "${components[@]}"; do check_alive "$c"; done
	say "up in $((SECONDS - t))s ($((SECONDS - t0))s with build and packages); logs in $run/logs, kubectl: $run/bin/kubectl"
	say "up kubeconfig=$run/kubeconfig"
}

# ---------------------------------------------------------------- down ----

# remove_pods: stop and remove every pod sandbox through the CRI, so the CNI
# plugin deletes its veths and addresses and containerd its netns mounts;
# then kill whatever shims are left of ours.
remove_pods() {
	local sock=$run/containerd/containerd.sock
	if alive containerd && [[ -x $bin/crictl ]]; then
		"$bin/crictl" --runtime-endpoint "unix://$sock" --timeout 20s rmp --all --force >/dev/null 2>&1 || true
	fi
	local pid
	for pid in $(pgrep -f -- "containerd-shim-runc-v2 .*-address $sock" || true); do
		ours "$pid" && kill -KILL "$pid" 2>/dev/null || true
	done
}

# unmount_run: unmount everything under the run folder, deepest first.
unmount_run() {
	local mnt
	awk -v r="$run/" 'index($5, r) == 1 { print $5 }' /proc/self/mountinfo | sort -r -u |
		while IFS= read -r mnt; do
			umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
		done
}

# remove_cgroups: kill what still runs in the kubelet's cgroup hierarchy
# (containers whose shim was killed), then remove it.
remove_cgroups() {
	local d pids i
	for ((i = 0; i < 50; i++)); do
		pids=$(find /sys/fs/cgroup/pids/kubepods -name cgroup.procs -exec cat {} + 2>/dev/null || true)
		[[ -n $pids ]] || break
		kill -KILL $pids 2>/dev/null || true
		sleep 0.1
	done
	for d in /sys/fs/cgroup/*/kubepods; do
		[[ -d $d ]] || continue
		find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
	done
}

# remove_host_paths: what the stack left in host paths (see kubelet_paths,
# shared_paths). Without a baseline (down ran already) it leaves them alone.
remove_host_paths() {
	local b=$run/baseline/paths p
	[[ -f $b ]] || return 0
	# libcni's result cache: our network's, and containerd's loopback ones
	# for our sandboxes (left when containerd died before it ran CNI DEL).
	rm -f /var/lib/cni/results/switchyard-k8s-*
	for p in "$run"/containerd/state/io.containerd.grpc.v1.cri/sandboxes/*; do
		[[ -d $p ]] && rm -f "/var/lib/cni/results/cni-loopback-${p##*/}-lo"
	done
	for p in "${kubelet_paths[@]}"; do
		[[ -e $p ]] && ! grep -qxF "$p" "$b" && rm -rf "$p"
	done
	for p in "${shared_paths[@]}"; do
		[[ -d $p ]] && ! grep -qxF "$p" "$b" && find "$p" -depth -type d -empty -delete
	done
	return 0
}

cmd_down() {
	local t=$SECONDS c
	if [[ -d $run ]]; then
		stop kube-proxy
		stop kubelet
		remove_pods
		stop containerd
		remove_pods # shims containerd left running
		for ((c = ${#components[@]} - 1; c >= 0; c--)); do stop "${components[c]}"; done
		if [[ -x $bin/kube-proxy ]]; then
			"$bin/kube-proxy" --cleanup >/dev/null 2>&1 || true
		fi
	fi
	teardown_network
	unmount_run
	remove_cgroups
	remove_host_paths
	restore_sysctls
	rm -rf "$run"
	say "down in $((SECONDS - t))s"
	say "down"
}

main() {
	[[ $# -eq 1 ]] || usage
	[[ $run == /?*/?* ]] || die "SWITCHYARD_K8S_DIR=$run: want an absolute path at least two levels deep (down removes it)"
	case $1 in
	build) cmd_build ;;
	up) cmd_up ;;
	down) cmd_down ;;
	*) usage ;;
	esac
}

main "$@"
