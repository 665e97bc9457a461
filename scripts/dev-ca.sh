#!/usr/bin/env bash
# dev-ca.sh DIR [--workers N] [--frontends N] [--hosts H1,H2]
#
# Makes a development CA and certificates for a local Switchyard cluster in
# DIR (see `switchyard dev-ca --help` for the files): ca.crt, coordinator,
# workers w1..wN (default 8), front ends fe1..feN (default 2) and the CLI's
# client certificate. Every process takes --tls-cert DIR/<name>.crt
# --tls-key DIR/<name>.key --tls-ca DIR/ca.crt. An existing CA in DIR is
# reused. Development only: production issues certificates from its own CA.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[[ $# -ge 1 && $1 != -* ]] || { sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
dir=$1
shift
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
cd "$root"
exec go run ./cmd/switchyard dev-ca "$dir" "$@"
