#!/usr/bin/env bash
# Runs Schemathesis (pinned in tests/openapi/requirements.txt, installed by
# tests/openapi/install.sh) against the real daemon with the OpenAPI
# document src/http/openapi.json (tests/openapi.rs checks that the daemon
# serves exactly this file at GET /openapi.json; given that URL instead,
# Schemathesis would leave out the operation that serves the document).
# Every check is on: every
# answer must be one the document allows for that request, never a 5xx, with
# the headers, content type and body schema it promises; invalid input must
# be refused and valid input accepted. Exits non-zero on any failure, and
# also if the daemon logged a panic or did not stop cleanly on SIGTERM.
#
#   tests/openapi/schemathesis.sh [MAX_SECONDS]
#
# MAX_SECONDS bounds Schemathesis' run (default 150). The daemon is the
# release binary (built here with --locked if missing, or WEBHOOKD_BIN),
# on port 0 with a fresh data dir and a 1 s processing delay, so reads also
# meet PROCESSED transactions.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."

max_seconds="${1:-150}"
bin_dir="$("$here/install.sh")"

if [ -z "${WEBHOOKD_BIN:-}" ]; then
  cargo build --release --locked --bin webhookd >&2
  target="${CARGO_TARGET_DIR:-target}"
  WEBHOOKD_BIN="$target/release/webhookd"
fi
[ -x "$WEBHOOKD_BIN" ] || { echo "schemathesis.sh: no webhookd binary at $WEBHOOKD_BIN" >&2; exit 1; }

work="$(mktemp -d /tmp/webhookd-schemathesis.XXXXXX)"
daemon_pid=""
cleanup() {
  local rc=$?
  if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
    kill -KILL "$daemon_pid" 2>/dev/null || true
    wait "$daemon_pid" 2>/dev/null || true
  fi
  if [ "$rc" -ne 0 ] && [ -s "$work/daemon.log" ]; then
    echo "--- last lines of the daemon's log ---" >&2
    tail -n 40 "$work/daemon.log" >&2
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

# Created before the daemon starts: the loop below reads it at once.
: >"$work/daemon.log"
"$WEBHOOKD_BIN" --data-dir "$work/data" --listen 127.0.0.1:0 --process-delay 1s \
  2>>"$work/daemon.log" &
daemon_pid=$!
addr=""
for _ in $(seq 1 600); do
  addr="$(sed -n 's/.*listening on \([0-9.]*:[0-9]*\).*/\1/p' "$work/daemon.log" | head -n 1)"
  [ -n "$addr" ] && break
  kill -0 "$daemon_pid" 2>/dev/null || { echo "schemathesis.sh: webhookd exited before it was ready" >&2; exit 1; }
  sleep 0.05
done
[ -n "$addr" ] || { echo "schemathesis.sh: webhookd printed no ready line within 30 s" >&2; exit 1; }
base="http://$addr"
echo "schemathesis.sh: webhookd listening on $base; running Schemathesis for at most ${max_seconds}s" >&2

status=0
document="$PWD/src/http/openapi.json"
# Run from the scratch directory: Schemathesis keeps its example database
# in the current directory (.schemathesis/), which must not land in the repo.
cd "$work"
"$bin_dir/schemathesis" run "$document" \
  --url "$base" \
  --checks all \
  --workers 2 \
  --max-time "$max_seconds" \
  --request-timeout 10 \
  --seed 21 \
  --no-color \
  --report junit --report-dir "$work/report" || status=$?

kill -TERM "$daemon_pid"
daemon_status=0
wait "$daemon_pid" || daemon_status=$?
daemon_pid=""
if grep -q 'panicked' "$work/daemon.log"; then
  echo "schemathesis.sh: FAIL: webhookd panicked:" >&2
  grep -A5 'panicked' "$work/daemon.log" >&2
  exit 1
fi
[ "$daemon_status" -eq 0 ] || { echo "schemathesis.sh: FAIL: webhookd exited $daemon_status after SIGTERM, not 0" >&2; exit 1; }
[ "$status" -eq 0 ] || { echo "schemathesis.sh: FAIL: Schemathesis found failures (exit $status)" >&2; exit "$status"; }
echo "schemathesis.sh: passed" >&2
