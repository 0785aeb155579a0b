#!/usr/bin/env bash
# Soak test for prime-sigv4-proxy (not part of `cargo test`).
#
# Several minutes of steady load through the proxy into a local fake Prime laid out as
# production is: three TLS endpoints, one per region, each on its own loopback address with its
# own certificate (na on 127.0.0.1, eu on 127.0.0.2, fe on 127.0.0.3, same port), each
# verifying every SigV4 signature and that the request is for its region. The load mixes
# marketplaces of all three regions on every connection, keep-alive and one-shot clients,
# buffered and streamed (chunked, and over 256 KiB) answers, each region in turn sparse (its
# requests further apart than the pool idle timeout, so each is the first to its region after
# traffic to the others), while the proxy's credentials rotate and the endpoints inject faults
# below the retry budget. Reports per region: requests sent / answered / failed / stalled,
# upstream requests, invalid signatures, region mismatches (a request received by the wrong
# endpoint or signed for the wrong region); overall: faults by kind,
# retries, budget exhaustion, credential rotations, the proxy's memory and threads at start,
# end and peak, its exit status after SIGTERM; then PASS or FAIL and a Markdown summary for
# the README. FAIL (exit status 1) on any failed or stalled client request (stalled: its
# first attempt reached the endpoint more than STALL_LIMIT seconds after it was sent), invalid
# signature or mismatch, memory growth, a proxy that does not exit 0 (exit status 2: the soak
# itself broke).
#
# Everything runs on 127.0.0.1-127.0.0.3, on ports in PORT_RANGE, and stops by itself; all
# processes are cleaned up on exit.
#
# Usage: scripts/soak.sh            (5 minutes at 200 req/s)
#        DURATION=60 scripts/soak.sh
#
# Knobs (environment):
#   DURATION=300        seconds of load (after the proxy is ready)
#   RATE=200            requests per second, paced evenly
#   CONNECTIONS=16      client threads, each with its own keep-alive connection
#   ONESHOT_SHARE=0.1   share of requests sent on a fresh connection with `Connection: close`
#   STREAM_SHARE=0.06   share of requests with a streamed answer (half chunked 16-512 KiB, half
#                       Content-Length 260-768 KiB); the rest get a small buffered JSON echo
#   PHASE_SECONDS=12    the regions take turns to be sparse for this long (na first, then eu,
#                       fe, na...; 0 = all three busy all the time): the sparse region gets one
#                       request every SPARSE_GAP seconds, the other two share the rest, as for an
#                       app that serves mostly two regions' customers and now and then one of
#                       the third. Each sparse request is the first to its region after traffic
#                       to the others, with no pooled connection left to it (SPARSE_GAP >
#                       POOL_IDLE_MS), while the busy regions hold theirs.
#   SPARSE_GAP=3        seconds between the sparse region's requests
#   STALL_LIMIT=2       seconds: an answered request whose first attempt reached its endpoint
#                       later than this after the client sent it counts as stalled (fails the
#                       run: nothing here may hold a request back, no rate or connection limit)
#   POOL_IDLE_MS=2000   the proxy's upstream.pool_idle_timeout_ms (default 90000), shortened
#                       like the credential lifetime so that a run sees many region switches
#   FAULT_RATE=0.05     share of upstream attempts that get a retryable fault (see below)
#   SLOW_RATE=0.01      share of upstream answers delayed 0.2-1.5 s (below the attempt timeout)
#   ROTATE_SECONDS=20   a new access key every N seconds, each valid 1.5 N seconds
#   CRED_FAULT_RATE=0   share of credential fetches answered 500 (the proxy must keep the old key)
#   WARMUP=10           seconds of load before the start memory sample
#   SAMPLE_SECONDS=10   memory / metrics sampling interval
#   MAX_GROWTH_PCT=10 MAX_GROWTH_MIB=2   allowed RSS growth, start to end
#   PROXY_BIN=path      use this binary instead of `cargo build --release --locked`
#   SOAK_DIR=dir        where logs, results.json, report.txt and summary.md go (default: mktemp)
#   SEED=1              seed for the request mix
#   PORT_RANGE=17000-17999   every listener (endpoints, credentials, proxy, admin) binds here
#
# Fault mix (shares of FAULT_RATE): 503 45%; 500, 502, 504 5% each; 429 with Retry-After: 1
# 10%; connection closed without a response 12%; connection reset (RST) without a response 8%;
# 200 whose body is cut short by a close 10% (buffered answers only: a streamed answer reaches
# the client once its head is in, so it gets a reset before the head instead).
# Faults are injected only on attempts the proxy can still retry (attempt < max_attempts = 3,
# counted per x-amz-request-id), so no request may legitimately fail: faults stay below the
# per-request retry limit. They also stay below the shared budget: with FAULT_RATE p = 0.05 a
# request needs p + p^2 = 0.0525 retries on average, 0.26 tokens at 5 a retry, while each
# first-attempt success refills 1 (0.95 a request), so the 500-token bucket stays full even
# before the proxy gives a retried request's tokens back on its success. Without those refunds
# it would break even at 5(p + p^2) = 1 - p, p = 0.15; with them only in-flight retries hold
# tokens (a few dozen at 200 req/s).
set -euo pipefail

export PYTHONDONTWRITEBYTECODE=1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE="$ROOT/scripts/soak"

DURATION=${DURATION:-300}
RATE=${RATE:-200}
CONNECTIONS=${CONNECTIONS:-16}
ONESHOT_SHARE=${ONESHOT_SHARE:-0.1}
STREAM_SHARE=${STREAM_SHARE:-0.06}
PHASE_SECONDS=${PHASE_SECONDS:-12}
SPARSE_GAP=${SPARSE_GAP:-3}
STALL_LIMIT=${STALL_LIMIT:-2}
POOL_IDLE_MS=${POOL_IDLE_MS:-2000}
FAULT_RATE=${FAULT_RATE:-0.05}
SLOW_RATE=${SLOW_RATE:-0.01}
CRED_FAULT_RATE=${CRED_FAULT_RATE:-0}
ROTATE_SECONDS=${ROTATE_SECONDS:-20}
WARMUP=${WARMUP:-10}
SAMPLE_SECONDS=${SAMPLE_SECONDS:-10}
MAX_GROWTH_PCT=${MAX_GROWTH_PCT:-10}
MAX_GROWTH_MIB=${MAX_GROWTH_MIB:-2}
SEED=${SEED:-1}
PORT_RANGE=${PORT_RANGE:-17000-17999}
MAX_ATTEMPTS=3 # written into the proxy config below; the upstream never faults the last one

log() { printf '[soak %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 2; }

command -v python3 >/dev/null || die "python3 is required"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' || die "python3 >= 3.9 is required"
VALID_SECONDS=$(python3 -c "print(float('$ROTATE_SECONDS') * 1.5)") || die "bad ROTATE_SECONDS"
python3 "$HERE/layout.py" free-ports 1 "$PORT_RANGE" >/dev/null || die "PORT_RANGE=$PORT_RANGE: no free port in it (or not LO-HI)"

# ---- binary ---------------------------------------------------------------------------
if [[ -z "${PROXY_BIN:-}" ]]; then
    command -v cargo >/dev/null || die "cargo not found: install Rust or set PROXY_BIN"
    log "building: cargo build --release --locked"
    (cd "$ROOT" && cargo build --release --locked) >&2
    PROXY_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/prime-sigv4-proxy"
fi
[[ -x "$PROXY_BIN" ]] || die "proxy binary not found or not executable: $PROXY_BIN"
VERSION=$("$PROXY_BIN" --version 2>/dev/null | head -n1 || true)

# ---- work dir and cleanup -------------------------------------------------------------
if [[ -n "${SOAK_DIR:-}" ]]; then
    mkdir -p "$SOAK_DIR"
else
    SOAK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/prime-soak.XXXXXX")
fi
SOAK_DIR=$(cd "$SOAK_DIR" && pwd)
TLS_DIR="$SOAK_DIR/tls"
mkdir -p "$TLS_DIR" "$SOAK_DIR/home"
PROXY_PID=""
UPSTREAM_PID=""
LOAD_PID=""

STOPPED_RC=0
stop_pid() { # pid, seconds to wait after SIGTERM before SIGKILL; sets STOPPED_RC
    local pid=$1 wait_s=$2 i
    STOPPED_RC=0
    [[ -n "$pid" ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < wait_s * 10; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid did not stop within ${wait_s}s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || STOPPED_RC=$?
}

# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$LOAD_PID" ]]; then stop_pid "$LOAD_PID" 5; fi
    if [[ -n "$PROXY_PID" ]]; then stop_pid "$PROXY_PID" 15; fi
    if [[ -n "$UPSTREAM_PID" ]]; then stop_pid "$UPSTREAM_PID" 5; fi
    rm -rf "${TLS_DIR:?}" "${SOAK_DIR:?}/home"
    log "logs and results kept in $SOAK_DIR"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- throw-away CA and one server certificate per region endpoint ---------------------
log "generating a throw-away CA and a certificate per region endpoint in $TLS_DIR"
if command -v openssl >/dev/null; then
    (
        cd "$TLS_DIR"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout ca.key -out ca.pem -days 2 -subj "/CN=prime-soak throw-away CA" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
        # Each endpoint's certificate names only its own address: a connection to the wrong
        # address fails verification.
        python3 "$HERE/layout.py" regions | while read -r region address _; do
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
                -keyout "$region.key" -out "$region.csr" -subj "/CN=$address" 2>/dev/null
            printf '%s\n' "subjectAltName=IP:$address" "basicConstraints=critical,CA:FALSE" \
                "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$region.ext"
            openssl x509 -req -in "$region.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
                -out "$region.pem" -days 2 -extfile "$region.ext" 2>/dev/null
        done
        [[ -s na.pem && -s eu.pem && -s fe.pem ]]
    ) || die "openssl could not create the certificates"
else
    python3 "$HERE/certs.py" "$TLS_DIR" || die "no openssl, and the Python fallback (needs the 'cryptography' package) failed"
fi

# ---- the verifier checks itself against the AWS SigV4 test vectors ---------------------
python3 "$HERE/sigv4.py" "$ROOT/tests/fixtures/sigv4-test-suite" >&2 || die "SigV4 verifier self-test failed"

# ---- fake Prime: three TLS endpoints + rotating credential endpoint -----------------------
AUTH_TOKEN="soak-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
PORTS_FILE="$SOAK_DIR/ports.json"
rm -f "$PORTS_FILE"
python3 "$HERE/upstream.py" \
    --cert-dir "$TLS_DIR" --ports-file "$PORTS_FILE" --port-range "$PORT_RANGE" \
    --rotate-seconds "$ROTATE_SECONDS" --valid-seconds "$VALID_SECONDS" \
    --fault-rate "$FAULT_RATE" --slow-rate "$SLOW_RATE" --max-attempts "$MAX_ATTEMPTS" \
    --cred-fault-rate "$CRED_FAULT_RATE" --auth-token "$AUTH_TOKEN" --seed "$SEED" --stats-file "$SOAK_DIR/upstream-stats.json" \
    >"$SOAK_DIR/upstream.log" 2>&1 &
UPSTREAM_PID=$!
for _ in $(seq 100); do
    [[ -s "$PORTS_FILE" ]] && break
    kill -0 "$UPSTREAM_PID" 2>/dev/null || { cat "$SOAK_DIR/upstream.log" >&2; die "the fake upstream exited"; }
    sleep 0.1
done
[[ -s "$PORTS_FILE" ]] || die "the fake upstream did not start"
read -r UPSTREAM_PORT NA_ENDPOINT EU_ENDPOINT FE_ENDPOINT CREDS_PORT CONTROL_PORT < <(python3 -c '
import json, sys
p = json.load(open(sys.argv[1]))
e = p["endpoints"]
print(p["upstream"], e["na"], e["eu"], e["fe"], p["credentials"], p["control"])' "$PORTS_FILE")
read -r LISTEN_PORT ADMIN_PORT < <(python3 "$HERE/layout.py" free-ports 2 "$PORT_RANGE" "$UPSTREAM_PORT" "$CREDS_PORT" "$CONTROL_PORT") \
    || die "no two free ports for the proxy in $PORT_RANGE"
log "endpoints na $NA_ENDPOINT, eu $EU_ENDPOINT, fe $FE_ENDPOINT; credentials http://127.0.0.1:$CREDS_PORT/creds; proxy 127.0.0.1:$LISTEN_PORT, admin 127.0.0.1:$ADMIN_PORT"

# ---- the proxy --------------------------------------------------------------------------
CONFIG="$SOAK_DIR/proxy.toml"
cat >"$CONFIG" <<EOF
listen = "127.0.0.1:$LISTEN_PORT"
admin_listen = "127.0.0.1:$ADMIN_PORT"

[upstream]
ca_file = "$TLS_DIR/ca.pem"
attempt_timeout_ms = 10000
total_timeout_ms = 30000
pool_idle_timeout_ms = $POOL_IDLE_MS

# Built-in signing regions and marketplaces; only the endpoints are local.
[regions.na]
endpoint = "$NA_ENDPOINT"

[regions.eu]
endpoint = "$EU_ENDPOINT"

[regions.fe]
endpoint = "$FE_ENDPOINT"

[retry]
max_attempts = $MAX_ATTEMPTS
base_delay_ms = 100
max_delay_ms = 5000
retry_on_status = [429, 500, 502, 503, 504]
budget_tokens = 500
budget_retry_cost = 5
budget_success_refill = 1
EOF
: >"$SOAK_DIR/home/aws-config"
: >"$SOAK_DIR/home/aws-credentials"
# A clean environment: only the container-credentials provider can supply keys.
env -i \
    PATH="$PATH" \
    HOME="$SOAK_DIR/home" \
    RUST_LOG=warn \
    AWS_EC2_METADATA_DISABLED=true \
    AWS_CONFIG_FILE="$SOAK_DIR/home/aws-config" \
    AWS_SHARED_CREDENTIALS_FILE="$SOAK_DIR/home/aws-credentials" \
    AWS_REGION=us-east-1 \
    AWS_CONTAINER_CREDENTIALS_FULL_URI="http://127.0.0.1:$CREDS_PORT/creds" \
    AWS_CONTAINER_AUTHORIZATION_TOKEN="$AUTH_TOKEN" \
    "$PROXY_BIN" --config "$CONFIG" >"$SOAK_DIR/proxy.log" 2>&1 &
PROXY_PID=$!
log "proxy pid $PROXY_PID ($VERSION); waiting for /readyz"
python3 "$HERE/load.py" --wait-ready "http://127.0.0.1:$ADMIN_PORT/readyz" --wait-timeout 30 \
    || { tail -n 20 "$SOAK_DIR/proxy.log" >&2; die "the proxy did not become ready"; }

# ---- load ---------------------------------------------------------------------------------
log "soak: ${DURATION}s at ${RATE} req/s, 3 regions (each sparse for ${PHASE_SECONDS}s in turn, a request every ${SPARSE_GAP}s; pool idle ${POOL_IDLE_MS} ms), one-shot ${ONESHOT_SHARE}, streamed ${STREAM_SHARE}, faults ${FAULT_RATE}, slow ${SLOW_RATE}, keys rotate every ${ROTATE_SECONDS}s"
load_rc=0
# In the background so that a signal to this script is handled at once (by `wait`).
python3 "$HERE/load.py" \
    --proxy "http://127.0.0.1:$LISTEN_PORT" --admin "http://127.0.0.1:$ADMIN_PORT" \
    --stats-url "http://127.0.0.1:$CONTROL_PORT/stats" --pid "$PROXY_PID" \
    --duration "$DURATION" --rate "$RATE" --connections "$CONNECTIONS" \
    --oneshot-share "$ONESHOT_SHARE" --stream-share "$STREAM_SHARE" \
    --phase-seconds "$PHASE_SECONDS" --sparse-gap "$SPARSE_GAP" --stall-limit "$STALL_LIMIT" \
    --warmup "$WARMUP" --sample-interval "$SAMPLE_SECONDS" --seed "$SEED" \
    --out "$SOAK_DIR/results.json" &
LOAD_PID=$!
wait "$LOAD_PID" || load_rc=$?
LOAD_PID=""
[[ $load_rc -eq 0 && -s "$SOAK_DIR/results.json" ]] || die "the load driver failed (status $load_rc)"

# ---- graceful shutdown, then the report ------------------------------------------------------
stop_pid "$PROXY_PID" 15
PROXY_EXIT=$STOPPED_RC
PROXY_PID=""
report_rc=0
python3 "$HERE/report.py" "$SOAK_DIR/results.json" "$SOAK_DIR/proxy.log" \
    --max-growth-pct "$MAX_GROWTH_PCT" --max-growth-mib "$MAX_GROWTH_MIB" \
    --proxy-exit "$PROXY_EXIT" --version "$VERSION" --pool-idle-ms "$POOL_IDLE_MS" \
    --command "DURATION=$DURATION RATE=$RATE CONNECTIONS=$CONNECTIONS ONESHOT_SHARE=$ONESHOT_SHARE STREAM_SHARE=$STREAM_SHARE PHASE_SECONDS=$PHASE_SECONDS SPARSE_GAP=$SPARSE_GAP POOL_IDLE_MS=$POOL_IDLE_MS FAULT_RATE=$FAULT_RATE ROTATE_SECONDS=$ROTATE_SECONDS scripts/soak.sh" \
    --markdown-out "$SOAK_DIR/summary.md" | tee "$SOAK_DIR/report.txt" || report_rc=$?
exit "$report_rc"
