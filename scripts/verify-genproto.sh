#!/usr/bin/env bash
# Fails if the committed generated protobuf code differs from what
# scripts/genproto.sh produces now.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/genproto.sh >/dev/null
if ! git diff --exit-code --stat -- proto; then
	echo "verify-genproto: generated code is stale; run scripts/genproto.sh and commit" >&2
	exit 1
fi
untracked=$(git ls-files --others --exclude-standard -- proto)
if [ -n "$untracked" ]; then
	echo "verify-genproto: generated files not committed:" >&2
	echo "$untracked" >&2
	exit 1
fi
echo "verify-genproto: generated code is up to date"
