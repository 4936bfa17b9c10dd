#!/usr/bin/env bash
# Fuzz every operation of /openapi.json with Schemathesis for a bounded
# time against a real server (embedded defaults, a temporary database):
# no 5xx, every response matches the schema (issue 8 point 10).
# Usage: scripts/schemathesis.sh [SECONDS]   (default 120)
# Needs `schemathesis` on PATH (.ci/run installs it) and a built binary
# (target/debug/runsignal, or $RUNSIGNAL_BIN). The `coverage` phase is left
# out: on CPython 3.11 it crashes inside Hypothesis (SystemError "AST
# constructor recursion depth mismatch"), a tool bug, not a finding.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-120}"
bin="${RUNSIGNAL_BIN:-${CARGO_TARGET_DIR:-target}/debug/runsignal}"
tmp="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
RUNSIGNAL__Server__Bind="127.0.0.1:$port" \
RUNSIGNAL__Database__Url="sqlite://$tmp/fuzz.db" \
RUNSIGNAL__Artifacts__Dir="$tmp/artifacts" \
RUNSIGNAL__Executor__WorkspaceDir="$tmp/workspaces" \
RUNSIGNAL__Logging__Level=error \
  "$bin" >"$tmp/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 100); do
  curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" && break
  sleep 0.1
done
status=0
schemathesis run "http://127.0.0.1:$port/openapi.json" \
  --checks all \
  --exclude-checks ignored_auth,positive_data_acceptance \
  --max-time "$seconds" \
  --workers 2 \
  --phases examples,fuzzing,stateful \
  --header 'X-Tenant-Id: fuzz' \
  --generation-deterministic \
  --suppress-health-check all \
  || status=$?
if ! kill -0 $server 2>/dev/null; then
  echo "the server died during the run:"; tail -50 "$tmp/server.log"; exit 1
fi
if grep -q 'panicked' "$tmp/server.log"; then
  echo "the server panicked:"; grep -A5 panicked "$tmp/server.log" | head -40; exit 1
fi
exit $status
