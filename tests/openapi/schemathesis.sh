#!/usr/bin/env bash
# Runs Schemathesis (pinned in tests/openapi/requirements.txt, installed by
# tests/openapi/install.sh) against the real daemon with the OpenAPI
# document src/http/openapi.json (tests/openapi.rs checks that the daemon
# serves exactly this file at GET /openapi.json; given that URL instead,
# Schemathesis would leave out the operation that serves the document).
# Every check is on: every answer must be one the document allows for that
# request, never a 5xx, with the headers, content type and body schema it
# promises; invalid input must be refused and valid input accepted; links
# (a stored webhook to its transaction, attempts and redelivery; a bulk
# redelivery to its progress) are followed in the stateful phase.
#
# Two runs, each on a fresh daemon and data dir, 1 s processing delay:
#   1. delivery: --deliver-to a small sink (tests/openapi/sink.py: 200, 410,
#      200, 500 in turn) with a short --retry-schedule, so transactions
#      become PROCESSED and FAILED, attempts pile up and redeliveries run;
#      webhooks in webhookd's own shape.
#   2. payload map: --payload-map packaging/examples/stripe.toml (bodies as
#      in tests/openapi/stripe-event.schema.json: mapped, refused or
#      IGNORED; ?include=payload) and --admin-token-file, the token sent
#      with every request; Schemathesis also checks that the admin
#      operations refuse a request without it or with a wrong one.
# Each run gets the document narrowed to its configuration by
# tests/openapi/phase_document.py (the webhook body's shape; the token
# required), nothing else changed. Exits non-zero on any failure, and also
# if a daemon logged a panic or did not stop cleanly on SIGTERM.
#
#   tests/openapi/schemathesis.sh [MAX_SECONDS]
#
# MAX_SECONDS bounds Schemathesis' time over both runs (default 150: two
# thirds for the first, a third for the second). The daemon is the release
# binary (built here with --locked if missing, or WEBHOOKD_BIN).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
repo="$PWD"

max_seconds="${1:-150}"
mapped_seconds=$((max_seconds / 3))
delivery_seconds=$((max_seconds - mapped_seconds))
bin_dir="$("$here/install.sh")"

if [ -z "${WEBHOOKD_BIN:-}" ]; then
  cargo build --release --locked --bin webhookd >&2
  target="${CARGO_TARGET_DIR:-target}"
  WEBHOOKD_BIN="$target/release/webhookd"
fi
[ -x "$WEBHOOKD_BIN" ] || { echo "schemathesis.sh: no webhookd binary at $WEBHOOKD_BIN" >&2; exit 1; }

work="$(mktemp -d /tmp/webhookd-schemathesis.XXXXXX)"
daemon_pid=""
daemon_log=""
sink_pid=""
cleanup() {
  local rc=$?
  if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
    kill -KILL "$daemon_pid" 2>/dev/null || true
    wait "$daemon_pid" 2>/dev/null || true
  fi
  if [ -n "$sink_pid" ] && kill -0 "$sink_pid" 2>/dev/null; then
    kill -TERM "$sink_pid" 2>/dev/null || true
    wait "$sink_pid" 2>/dev/null || true
  fi
  if [ "$rc" -ne 0 ] && [ -n "$daemon_log" ] && [ -s "$daemon_log" ]; then
    echo "--- last lines of the daemon's log ($daemon_log) ---" >&2
    tail -n 40 "$daemon_log" >&2
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

# Waits for "listening on IP:PORT" in $1, written by process $2; prints IP:PORT.
wait_for_address() {
  local log="$1" pid="$2" what="$3" address=""
  for _ in $(seq 1 600); do
    address="$(sed -n 's/.*listening on \([0-9.]*:[0-9]*\).*/\1/p' "$log" | head -n 1)"
    [ -n "$address" ] && { echo "$address"; return 0; }
    kill -0 "$pid" 2>/dev/null || { echo "schemathesis.sh: $what exited before it was ready" >&2; return 1; }
    sleep 0.05
  done
  echo "schemathesis.sh: $what printed no ready line within 30 s" >&2
  return 1
}

# Starts webhookd on a fresh data dir with the given flags; sets $base.
start_daemon() {
  local name="$1"
  shift
  daemon_log="$work/$name.log"
  # Created before the daemon starts: wait_for_address reads it at once.
  : >"$daemon_log"
  "$WEBHOOKD_BIN" --data-dir "$work/$name-data" --listen 127.0.0.1:0 --process-delay 1s "$@" \
    2>>"$daemon_log" &
  daemon_pid=$!
  base="http://$(wait_for_address "$daemon_log" "$daemon_pid" webhookd)"
}

# SIGTERM, then: exit 0 and no panic in the log.
stop_daemon() {
  kill -TERM "$daemon_pid"
  local daemon_status=0
  wait "$daemon_pid" || daemon_status=$?
  daemon_pid=""
  if grep -q 'panicked' "$daemon_log"; then
    echo "schemathesis.sh: FAIL: webhookd panicked:" >&2
    grep -A5 'panicked' "$daemon_log" >&2
    exit 1
  fi
  [ "$daemon_status" -eq 0 ] || { echo "schemathesis.sh: FAIL: webhookd exited $daemon_status after SIGTERM, not 0" >&2; exit 1; }
}

# Runs Schemathesis on the narrowed document $2 for at most $3 seconds;
# further arguments go to Schemathesis. Sets $status on failure.
status=0
run_schemathesis() {
  local name="$1" document="$2" seconds="$3"
  shift 3
  echo "schemathesis.sh: $name: webhookd listening on $base; running Schemathesis for at most ${seconds}s" >&2
  # Run from the scratch directory: Schemathesis keeps its example database
  # in the current directory (.schemathesis/), which must not land in the repo.
  (cd "$work" && "$bin_dir/schemathesis" run "$document" \
    --url "$base" \
    --checks all \
    --workers 1 \
    --max-time "$seconds" \
    --request-timeout 10 \
    --seed 21 \
    --no-color \
    --report junit --report-dir "$work/report-$name" \
    "$@") || { status=$?; echo "schemathesis.sh: $name: Schemathesis found failures" >&2; }
}

# Prints the named series from GET /metrics and fails unless each is above
# zero: the run did exercise what it is for. Arguments: the bearer token
# (or ""), then the series.
require_metrics() {
  "$bin_dir/python" - "$base/metrics" "$@" <<'PY'
import sys
import urllib.request

url, token, wanted = sys.argv[1], sys.argv[2], sys.argv[3:]
request = urllib.request.Request(url)
if token:
    request.add_header("Authorization", f"Bearer {token}")
values = {}
with urllib.request.urlopen(request, timeout=10) as response:
    for line in response.read().decode().splitlines():
        if not line.startswith("#") and " " in line:
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
missing = []
for series in wanted:
    value = values.get(series, 0)
    print(f"schemathesis.sh:   {series} = {value:g}", file=sys.stderr)
    if value <= 0:
        missing.append(series)
if missing:
    sys.exit(f"schemathesis.sh: FAIL: the run never moved {', '.join(missing)}")
PY
}

# --- 1. delivery -----------------------------------------------------------
: >"$work/sink.log"
"$bin_dir/python" "$here/sink.py" >"$work/sink.log" 2>&1 &
sink_pid=$!
sink="$(wait_for_address "$work/sink.log" "$sink_pid" "the delivery sink")"
"$bin_dir/python" "$here/phase_document.py" "$repo/src/http/openapi.json" native \
  >"$work/delivery.json"
start_daemon delivery --deliver-to "http://$sink/hook" --retry-schedule 0s,1s,1s
run_schemathesis delivery "$work/delivery.json" "$delivery_seconds"
require_metrics "" 'webhookd_webhooks_total{outcome="accepted"}' \
  'webhookd_delivery_attempts_total{outcome="delivered"}' \
  'webhookd_delivery_attempts_total{outcome="failed"}' webhookd_failed_transactions \
  'webhookd_http_requests_total{route="/v1/transactions/{transaction_id}/redeliver",status="202"}' \
  'webhookd_http_requests_total{route="/v1/redeliveries",status="202"}'
stop_daemon
kill -TERM "$sink_pid"
wait "$sink_pid" 2>/dev/null || true
sink_pid=""

# --- 2. payload map and admin token -----------------------------------------
"$bin_dir/python" "$here/phase_document.py" "$repo/src/http/openapi.json" mapped \
  "$here/stripe-event.schema.json" >"$work/mapped.json"
token="$("$bin_dir/python" -c 'import secrets; print(secrets.token_hex(32))')"
(umask 077 && printf '%s\n' "$token" >"$work/admin-token")
start_daemon mapped --payload-map "$repo/packaging/examples/stripe.toml" \
  --admin-token-file "$work/admin-token"
run_schemathesis mapped "$work/mapped.json" "$mapped_seconds" \
  --header "Authorization: Bearer $token"
require_metrics "$token" 'webhookd_webhooks_total{outcome="accepted"}' \
  'webhookd_webhooks_total{outcome="ignored"}' \
  'webhookd_http_requests_total{route="/v1/transactions",status="401"}'
stop_daemon

[ "$status" -eq 0 ] || { echo "schemathesis.sh: FAIL: Schemathesis found failures (exit $status)" >&2; exit "$status"; }
echo "schemathesis.sh: passed (delivery and payload-map runs)" >&2
