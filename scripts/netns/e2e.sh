#!/usr/bin/env bash
# End-to-end run on an emulated cluster (DESIGN.md section 7): 4 hosts, each
# a network namespace with a 1 Gbit/s full-duplex link (tc tbf both ways) to
# a bridge. h0 runs the coordinator (embedded etcd on 10.77.0.1:2379); h1..h3
# run one worker each. From h0 a 3-worker fine-tuning job is submitted to the
# coordinator; every worker trains its share of each batch, experts travel
# between hosts over gRPC and dense gradients are ring-all-reduced over the
# shaped links. The job's loss curve must match a single-process run of the
# same job (|diff| <= 1e-6 per step; measured 4e-8 to 8e-8, also with the
# machine busy; test/e2e/train_test.go says why they differ at all). Every
# connection is mutual TLS (scripts/dev-ca.sh certificates; etcd on https
# with client certificates, workers' gRPC, the ranks' collective groups and
# lanes, encrypted gossip), and the job's paths lie in the workers'
# --data-root. Everything is torn down on exit.
#
#   scripts/netns/e2e.sh            (needs root; about a minute)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
net=scripts/netns/cluster.sh
export SY_CLUSTER=sye2e SY_SUBNET=10.78.0
work=$(mktemp -d /tmp/switchyard-netns-e2e.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	$net down >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT

go build -o "$work/switchyard" ./cmd/switchyard
go build -o "$work/coordinator" ./cmd/coordinator
$net up 4 1gbit >/dev/null
ip0=$($net ip h0)
etcd="https://$ip0:2379"
# Mutual TLS everywhere, as across real hosts: a development CA, etcd's
# certificate naming h0's address, workers w1..w3, the CLI's client
# certificate.
"$work/switchyard" dev-ca "$work/tls" --workers 3 --frontends 1 --hosts "$ip0" >/dev/null
tls() { echo "--tls-cert $work/tls/$1.crt --tls-key $work/tls/$1.key --tls-ca $work/tls/ca.crt"; }
# The job's inputs are copied into the work folder, the workers' data root
# (a job's paths must resolve inside it).
mkdir -p "$work/in"
cp -r "$root/testdata/golden/qwen2_moe" "$work/in/model"
cp "$root/testdata/golden/tokenizer_bpe_gpt2/tokenizer.json" "$work/in/tokenizer.json"
cp "$root/testdata/text/opticks.txt" "$work/in/opticks.txt"
model=$work/in/model
tok=$work/in/tokenizer.json
text=$work/in/opticks.txt

$net run h0 "$work/coordinator" --listen-client-urls "$etcd" --listen-peer-urls "https://$ip0:2380" \
	--data-dir "$work/etcd" --cluster emu --model "$model" --name c0 $(tls coordinator) >"$work/coordinator.log" 2>&1 &
pids+=($!)
for i in 1 2 3; do
	ip=$($net ip h$i)
	$net run h$i "$work/switchyard" worker --etcd "$etcd" --cluster emu --id "w$i" --listen "$ip:0" \
		--gossip "$ip:0" --model "$model" --keep-bf16=false --job-step-timeout 30s --data-root "$work" $(tls "w$i") >"$work/w$i.log" 2>&1 &
	pids+=($!)
done
deadline=$((SECONDS + 60))
until [ "$(grep -c '^worker: id=' "$work"/w*.log 2>/dev/null | awk -F: '{s+=$2} END {print s+0}')" -eq 3 ]; do
	if [ $SECONDS -gt $deadline ]; then
		echo "netns e2e: workers did not start"; tail -n 20 "$work"/*.log; exit 1
	fi
	sleep 0.2
done
echo "netns e2e: coordinator on h0 ($etcd), workers w1..w3 on hosts h1..h3, links shaped to 1 Gbit/s both ways, mutual TLS everywhere"

steps=12
args=(--text "$text" --tokenizer "$tok" --init-from "$model" --steps "$steps" --batch 6 --seq-len 32 --eval-every 0 --save-every 6)
start=$SECONDS
$net run h0 "$work/switchyard" train --etcd "$etcd" --cluster emu --workers 3 --out "$work/dist" "${args[@]}" $(tls client) 2>&1 | tail -n 3
echo "netns e2e: distributed job took $((SECONDS - start)) s"
$net run h0 "$work/switchyard" status --etcd "$etcd" --cluster emu $(tls client) | tail -n 4
"$work/switchyard" train --out "$work/single" "${args[@]}" >/dev/null 2>&1

python3 - "$work/dist/checkpoint-$(printf %07d $steps)/trainer_state.json" "$work/single/checkpoint-$(printf %07d $steps)/trainer_state.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))["losses"]
s = json.load(open(sys.argv[2]))["losses"]
assert len(d) == len(s), (len(d), len(s))
worst = max(abs(a - b) for a, b in zip(d, s))
print(f"netns e2e: 3 workers on 3 emulated hosts, mutual TLS, vs one process, {len(d)} steps: worst |loss diff| {worst:.2e}")
sys.exit(0 if worst <= 1e-6 else 1)
PY
echo "netns e2e: PASS"
