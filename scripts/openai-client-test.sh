#!/usr/bin/env bash
# openai-client-test.sh [PORT]: the official openai npm client against
# `switchyard serve`.
#
# Installs test/openai's locked `openai` package into
# test/openai/node_modules (npm ci), builds switchyard, serves the golden
# mixtral model (the gpt2 test tokenizer, one local worker process) on
# 127.0.0.1:PORT (default 18431) behind an API key, waits until /health
# answers 200, then runs test/openai/client.mjs: with the key, a chat
# completion, a streamed one, completions (whole and streamed) and the model
# list; with a wrong key and with none, openai.AuthenticationError (401,
# invalid_api_key). The server is stopped on any exit. The last line is
# "openai-client: PASS" (exit 0) or "openai-client: FAIL <reason>" (exit 1).
# Needs go, node (>= 20), npm with the npm registry reachable (the first
# time), and curl.
set -euo pipefail

cd "$(dirname "$0")/.."
port="${1:-18431}"
key="sk-switchyard-openai-client-test"
model_name="golden"
base="http://127.0.0.1:${port}"

tmp="$(mktemp -d)"
pid=""
cleanup() {
	if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true # serve shuts down and stops its worker
		for _ in $(seq 1 100); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
	fi
	{ wait "$pid"; } 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
	if [[ -s "$tmp/serve.log" ]]; then
		echo "--- serve log (last 30 lines):" >&2
		tail -n 30 "$tmp/serve.log" >&2
	fi
	echo "openai-client: FAIL $*"
	exit 1
}

for cmd in go node npm curl; do
	command -v "$cmd" >/dev/null || fail "$cmd is not installed"
done
if curl -s -o /dev/null --max-time 2 "$base/health"; then
	fail "something already answers on port $port; give another: $0 PORT"
fi

(cd test/openai && npm ci --no-audit --no-fund --loglevel=error >"$tmp/npm.log" 2>&1) ||
	{ cat "$tmp/npm.log" >&2; fail "npm ci in test/openai"; }

# A built binary rather than `go run`, so that the signal reaches serve
# itself (which then stops its worker) and not only the go command.
go build -o "$tmp/switchyard" ./cmd/switchyard || fail "go build ./cmd/switchyard"
"$tmp/switchyard" serve --model testdata/golden/mixtral \
	--tokenizer testdata/golden/tokenizer_bpe_gpt2/tokenizer.json \
	--served-model-name "$model_name" --workers 1 --listen "127.0.0.1:${port}" \
	--api-key "$key" >"$tmp/serve.log" 2>&1 &
pid=$!

ready=""
for _ in $(seq 1 240); do # up to 2 minutes
	kill -0 "$pid" 2>/dev/null || fail "serve exited before it was ready"
	if [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$base/health")" == 200 ]]; then
		ready=1
		break
	fi
	sleep 0.5
done
[[ -n "$ready" ]] || fail "/health did not answer 200 within 2 minutes"

status=0
node test/openai/client.mjs "$base/v1" "$key" "$model_name" >"$tmp/client.out" 2>&1 || status=$?
last="$(tail -n 1 "$tmp/client.out")"
if [[ $status -eq 0 && "$last" == "openai-client: PASS" ]]; then
	cat "$tmp/client.out"
	exit 0
fi
head -n -1 "$tmp/client.out" >&2
case "$last" in
"openai-client: FAIL "*) fail "${last#openai-client: FAIL }" ;;
*) fail "node test/openai/client.mjs exited with status $status: $last" ;;
esac
