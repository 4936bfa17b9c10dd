#!/usr/bin/env bash
# End-to-end demo: submit the built-in `demo` job with a state webhook, watch
# queued → loading → working → done arrive (signed) at a tiny local listener
# that drops the first `working` delivery, then check that GET /jobs/{id}
# reconciles: job done, `working` delivered after 2 attempts.
#
#   scripts/demo.sh                     # builds with cargo build --release
#   RUNSIGNAL_BIN=path/to/runsignal scripts/demo.sh
#   DEMO_DROP_STATE=loading scripts/demo.sh   # drop another state (none: drop nothing)
#   RUNSIGNAL_TOKEN=rsg_… scripts/demo.sh     # the bearer token to use (else a fresh one)
# The server runs with Auth.Mode=token: it knows only the token's SHA-256,
# and every curl sends the token (from a header file, never on a command line).
# Needs bash, curl and python3. Exit 0 when everything checks out.
set -euo pipefail

cd "$(dirname "$0")/.."                      # repo root: config/packs/demo.json
DROP_STATE="${DEMO_DROP_STATE:-working}"
TENANT=demo
TMP="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 143' TERM INT                     # so that cleanup runs then too

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # wait_http URL SECONDS: until anything answers 2xx
  for _ in $(seq $(($2 * 10))); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "demo: $1 did not come up" >&2; return 1
}

# 1. The server: temp database and workspaces, loopback webhooks allowed,
#    a signing secret, and a short retry schedule (1 s, 1 s, 2 s).
if [[ -n "${RUNSIGNAL_BIN:-}" ]]; then BIN="$RUNSIGNAL_BIN"; else
  cargo build --release --quiet
  BIN="${CARGO_TARGET_DIR:-target}/release/runsignal"
fi
TOKEN="${RUNSIGNAL_TOKEN:-$("$BIN" token new --tenant "$TENANT" --scope read,write | sed -n 's/^token: //p')}"
TOKEN_SHA256="$(printf '%s' "$TOKEN" | python3 -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
printf 'Authorization: Bearer %s\n' "$TOKEN" >"$TMP/auth.header"
SECRET="whsec_$(python3 -c 'import base64,os; print(base64.b64encode(os.urandom(24)).decode())')"
PORT="$(free_port)"; API="http://127.0.0.1:$PORT"
RUNSIGNAL__Server__Bind="127.0.0.1:$PORT" \
RUNSIGNAL__Database__Url="sqlite://$TMP/runsignal.db" \
RUNSIGNAL__Executor__WorkspaceDir="$TMP/workspaces" \
RUNSIGNAL__Artifacts__Dir="$TMP/artifacts" \
RUNSIGNAL__Webhooks__AllowedNetworks__0=127.0.0.0/8 \
RUNSIGNAL__Auth__Mode=token \
RUNSIGNAL__Auth__Tokens__0='{"name":"demo","sha256":"'"$TOKEN_SHA256"'","tenants":["'"$TENANT"'"],"scopes":["read","write"]}' \
RUNSIGNAL__Webhooks__Secrets__0="$SECRET" \
RUNSIGNAL__Webhooks__RetryScheduleSeconds__0=1 \
RUNSIGNAL__Webhooks__RetryScheduleSeconds__1=1 \
RUNSIGNAL__Webhooks__RetryScheduleSeconds__2=2 \
  "$BIN" >"$TMP/server.log" 2>&1 &
PIDS+=($!)

# 2. The webhook listener: verifies the Standard Webhooks signature
#    (base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}"),
#    answers 500 to the first delivery of $DROP_STATE, 204 to the rest, and
#    appends "<state> <ok|BAD>" to received.txt for every accepted delivery.
cat >"$TMP/listener.py" <<'PY'
import base64, hashlib, hmac, json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
KEY = base64.b64decode(os.environ["SECRET"][len("whsec_"):])
DROP, LOG, dropped = os.environ["DROP_STATE"], os.environ["RECEIVED"], set()
class Hook(BaseHTTPRequestHandler):
    def do_GET(self): self.send_response(200); self.end_headers()
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        wid, ts = self.headers["webhook-id"], self.headers["webhook-timestamp"]
        want = base64.b64encode(hmac.new(KEY, f"{wid}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
        sigs = [s.split(",", 1)[1] for s in self.headers.get("webhook-signature", "").split()]
        ok = any(hmac.compare_digest(want, s) for s in sigs)
        msg = json.loads(body); state = msg["state"]
        line = f"  webhook  {state:<8} id={wid}  signature {'ok' if ok else 'BAD'}"
        if state == DROP and state not in dropped:
            dropped.add(state); self.send_response(500); self.end_headers()
            print(f"{line}  -> DROPPED (answered 500, expect a retry)", flush=True); return
        self.send_response(204); self.end_headers()
        extra = f"  result={json.dumps(msg['result'])}" if "result" in msg else ""
        retried = " (the retry)" if state in dropped else ""
        print(f"{line}  -> 204{retried}{extra}", flush=True)
        with open(LOG, "a") as f: f.write(f"{state} {'ok' if ok else 'BAD'}\n")
    def log_message(self, *a): pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), Hook).serve_forever()
PY
LPORT="$(free_port)"
SECRET="$SECRET" DROP_STATE="$DROP_STATE" RECEIVED="$TMP/received.txt" \
  python3 -u "$TMP/listener.py" "$LPORT" >"$TMP/listener.out" 2>&1 &
PIDS+=($!)
touch "$TMP/received.txt"
wait_http "$API/readyz" 60 || { cat "$TMP/server.log" >&2; exit 1; }
wait_http "http://127.0.0.1:$LPORT/" 10
echo "server $API (tenant $TENANT), webhook listener http://127.0.0.1:$LPORT/hook (drops the first '$DROP_STATE')"

# 3. Submit the demo job with a state webhook.
JOB_ID="$(curl -sf -X POST "$API/jobs" -H @"$TMP/auth.header" -H "X-Tenant-Id: $TENANT" -H 'Content-Type: application/json' \
  -d '{"pack":"demo","inputs":{"name":"runsignal"},"state_webhook_url":"http://127.0.0.1:'"$LPORT"'/hook"}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["job_id"])')"
echo "submitted job $JOB_ID (pack demo) -- follow it live with:"
echo "  RUNSIGNAL_TOKEN=… runsignal watch --url $API --tenant $TENANT $JOB_ID"


# Show what the listener prints, until it has accepted `done` (each retry
# waits ~1 s).
tail -n +1 -f "$TMP/listener.out" &
TAIL=$!; PIDS+=($TAIL)
for _ in $(seq 600); do grep -q '^done ' "$TMP/received.txt" && break; sleep 0.1; done
sleep 0.2; kill "$TAIL" 2>/dev/null || true; wait "$TAIL" 2>/dev/null || true

# 4. Reconcile with GET /jobs/{id}: poll until no delivery is still open, then
#    print a table and check job done, every state delivered, the dropped one
#    after 2 attempts, the others after 1, and every signature ok.
echo "GET /jobs/$JOB_ID:"
for i in $(seq 50); do
  curl -sf "$API/jobs/$JOB_ID" -H @"$TMP/auth.header" -H "X-Tenant-Id: $TENANT" >"$TMP/job.json"
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))["webhook"]["deliveries"]
sys.exit(any(x["status"] in ("pending","sending") for x in d))' "$TMP/job.json" && break
  sleep 0.2
done
python3 - "$TMP/job.json" "$TMP/received.txt" "$DROP_STATE" <<'PY'
import json, sys
job = json.load(open(sys.argv[1])); drop = sys.argv[3]
received = [l.split() for l in open(sys.argv[2]) if l.strip()]
deliveries = job["webhook"]["deliveries"]
print(f"  job state: {job['state']}")
print(f"  {'STATE':<9}{'STATUS':<11}{'ATTEMPTS':<10}LAST CODE")
for d in deliveries:
    print(f"  {d['state']:<9}{d['status']:<11}{d['attempts']:<10}{d['last_status_code']}")
states = ["queued", "loading", "working", "done"]
by_state = {d["state"]: d for d in deliveries}
problems = []
if job["state"] != "done": problems.append(f"job is {job['state']}, not done")
for s in states:
    d = by_state.get(s); want = 2 if s == drop else 1
    if d is None: problems.append(f"no {s} delivery"); continue
    if d["status"] != "delivered" or d["attempts"] != want:
        problems.append(f"{s}: {d['status']} after {d['attempts']} attempts (want delivered after {want})")
    if [s, "ok"] not in received: problems.append(f"listener did not accept a signed {s}")
if any(r[1] != "ok" for r in received): problems.append("a signature did not verify")
if problems:
    print("NOT reconciled: " + "; ".join(problems)); sys.exit(1)
dropped = f"; '{drop}' delivered after 2 attempts" if drop in by_state else ""
print(f"reconciled: job done; {len(states)}/{len(states)} states delivered with verified signatures{dropped}")
PY
