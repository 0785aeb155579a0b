#!/usr/bin/env bash
# Load test: prime-sigv4-proxy against a local TLS nginx, and the same nginx directly.
#
#   scripts/loadtest.sh                       # full run, about 3 minutes
#   DURATION=5 RATE_DURATION=10 scripts/loadtest.sh   # quick look
#
# Everything stays on 127.0.0.1: nginx (generated CA and certificate) plays every region
# endpoint; the proxy gets static throw-away credentials. Measured, in one run:
#   * req/s and saturated p50/p99 latency at each of CONNECTIONS, direct (wrk over TLS to
#     nginx) and through the proxy (wrk over plain HTTP to the proxy, which signs and
#     forwards over pooled TLS), with the ratio proxy/direct;
#   * proxy CPU seconds per 1,000 requests (utime+stime from /proc/PID/stat), its idle
#     VmRSS and peak VmHWM, and the upstream connections it opened (nginx stub_status
#     `accepts` delta); the proxy is started fresh for each measurement;
#   * latency at a fixed RATE (oha with latency correction), direct vs proxy;
#   * one saturated run at RUST_LOG=info, the level users run by default.
# Ends with a Markdown table (targets beside the values) for the README.
#
# Knobs (environment):
#   DURATION=15          seconds per throughput run
#   CONNECTIONS="16 64"  client connections, one throughput run (direct + proxy) each
#   THREADS=2            wrk threads
#   RATE=500             requests/s for the fixed-rate latency run
#   RATE_DURATION=20     seconds of the fixed-rate run
#   RATE_CONNECTIONS=16  connections of the fixed-rate run
#   LOG_LEVEL=warn       RUST_LOG for the proxy in the main runs
#   INFO_RUN=1           0 skips the extra saturated run at RUST_LOG=info
#   NGINX_WORKERS=auto   nginx worker_processes, the same nginx for direct and proxied runs.
#                        auto (= cores, 2 here): with 1 worker, direct runs are capped by
#                        that one nginx process (~75,000 instead of ~95,000 req/s on 2 cores),
#                        which would flatter the proxy/direct ratios; proxied runs barely
#                        change, the proxy being the bottleneck.
#   PERF=0               1: one extra proxy run under `perf record` (DWARF call graphs), top symbols
#                        written to PERF_OUT (default /tmp/loadtest-perf.txt);
#                        PERF_CALL_GRAPH=dwarf,32768 PERF_FREQ=499
#   SKIP_INSTALL=1       do not install anything (fail if a tool is missing)
#   PROXY_BIN=path       use this binary instead of `cargo build --release --locked`
#   NGINX_PORT=8443 NGINX_STATUS_PORT=8444 PROXY_PORT=18080 ADMIN_PORT=19901
#   KEEP_TMP=1           keep the temporary directory (configs, logs, raw tool output)
#   WAIT_IDLE=0          seconds to wait for other processes to leave the CPU idle (<= 10%
#                        busy) before measuring; the summary flags a busy machine either way
#
# Tools: nginx-light, wrk, openssl, curl from apt; oha (fixed-rate, latency-corrected,
# `cargo install oha --locked`) from crates.io. Installs only what is missing.
# Exit status: 0 when everything was measured (a missed target is printed as MISSED but
# is not a failure); 1 when something could not be measured; 2 for bad knobs.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
LUA="$SCRIPT_DIR/loadtest/report.lua"

# The exact command, for the summary: the knobs the caller set, then the script.
KNOBS=(DURATION CONNECTIONS THREADS RATE RATE_DURATION RATE_CONNECTIONS LOG_LEVEL INFO_RUN
  NGINX_WORKERS PERF PERF_OUT PERF_CALL_GRAPH PERF_FREQ SKIP_INSTALL PROXY_BIN NGINX_PORT NGINX_STATUS_PORT PROXY_PORT
  ADMIN_PORT KEEP_TMP WAIT_IDLE OHA_VERSION)
COMMAND=""
for knob in "${KNOBS[@]}"; do
  if [[ -n ${!knob+x} ]]; then COMMAND+="$knob=$(printf %q "${!knob}") "; fi
done
COMMAND+="scripts/loadtest.sh"

DURATION=${DURATION:-15}
CONNECTIONS=${CONNECTIONS:-16 64}
THREADS=${THREADS:-2}
RATE=${RATE:-500}
RATE_DURATION=${RATE_DURATION:-20}
RATE_CONNECTIONS=${RATE_CONNECTIONS:-16}
LOG_LEVEL=${LOG_LEVEL:-warn}
INFO_RUN=${INFO_RUN:-1}
NGINX_WORKERS=${NGINX_WORKERS:-auto}
PERF=${PERF:-0}
PERF_OUT=${PERF_OUT:-/tmp/loadtest-perf.txt}
PERF_CALL_GRAPH=${PERF_CALL_GRAPH:-dwarf,32768}   # Rust release builds have no frame pointers
PERF_FREQ=${PERF_FREQ:-499}
SKIP_INSTALL=${SKIP_INSTALL:-0}
PROXY_BIN=${PROXY_BIN:-}
NGINX_PORT=${NGINX_PORT:-8443}
NGINX_STATUS_PORT=${NGINX_STATUS_PORT:-8444}
PROXY_PORT=${PROXY_PORT:-18080}
ADMIN_PORT=${ADMIN_PORT:-19901}
KEEP_TMP=${KEEP_TMP:-0}
WAIT_IDLE=${WAIT_IDLE:-0}
OHA_VERSION=${OHA_VERSION:-1.16.0}

# Targets (64 client connections, this 2-core machine class).
TARGET_RPS=25000          # req/s through the proxy, at least
TARGET_CPU_PER_K=0.034    # proxy CPU seconds per 1,000 requests, at most
TARGET_RSS_MIB=20         # proxy peak RSS, at most
TARGET_P99_DELTA_MS=1     # fixed-rate p99, proxy minus direct, at most

log() { printf '[loadtest %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage_error() { log "ERROR: $*"; exit 2; }

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
[[ $NGINX_WORKERS == auto ]] || is_uint "$NGINX_WORKERS" || usage_error "NGINX_WORKERS must be auto or a number"
is_uint "$WAIT_IDLE" || usage_error "WAIT_IDLE must be a number of seconds"
for knob in DURATION THREADS RATE RATE_DURATION RATE_CONNECTIONS NGINX_PORT \
  NGINX_STATUS_PORT PROXY_PORT ADMIN_PORT; do
  is_uint "${!knob}" && (( 10#${!knob} > 0 )) || usage_error "$knob must be a positive integer (got '${!knob}')"
done
read -r -a CONN_LIST <<<"$CONNECTIONS"
(( ${#CONN_LIST[@]} > 0 )) || usage_error "CONNECTIONS is empty"
for c in "${CONN_LIST[@]}"; do
  is_uint "$c" && (( 10#$c > 0 )) || usage_error "CONNECTIONS must list positive integers (got '$c')"
done
(( DURATION <= 600 && RATE_DURATION <= 600 )) || usage_error "DURATION and RATE_DURATION are capped at 600 s"
MAX_CONN=${CONN_LIST[-1]}
for c in "${CONN_LIST[@]}"; do (( c > MAX_CONN )) && MAX_CONN=$c; done

FAILED=()   # what could not be measured; non-empty => exit 1
OTHERS_BUSY=()   # runs during which other processes used the CPU
fail_measure() { log "NOT MEASURED: $*"; FAILED+=("$*"); }

# ---------------------------------------------------------------------------- cleanup
WORK=""
INSTALL_LOG=""
NGINX_PID=""
PROXY_PID=""
PERF_PID=""

stop_pid() { # pid signal seconds: signal, wait up to seconds, then SIGKILL; reaps our children
  local pid=$1 sig=$2 secs=$3 i
  [[ -n $pid ]] || return 0
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill "-$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < secs * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null || true
}

stop_nginx() {
  [[ -n $NGINX_PID ]] || return 0
  local workers
  workers=$(pgrep -P "$NGINX_PID" 2>/dev/null || true)
  stop_pid "$NGINX_PID" TERM 10
  for w in $workers; do kill -KILL "$w" 2>/dev/null || true; done
  NGINX_PID=""
}

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if [[ -n $PERF_PID ]]; then stop_pid "$PERF_PID" INT 10; fi
  if [[ -n $PROXY_PID ]]; then stop_pid "$PROXY_PID" TERM 15; fi
  stop_nginx
  [[ -n $INSTALL_LOG ]] && rm -f "$INSTALL_LOG"
  if [[ -n $WORK && -d $WORK ]]; then
    if [[ $KEEP_TMP == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------- install
SUDO=()
if (( EUID != 0 )) && command -v sudo >/dev/null; then SUDO=(sudo); fi

have() { command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 ]]; }
apt_install() {
  log "installing with apt-get: $*"
  export DEBIAN_FRONTEND=noninteractive
  if ! "${SUDO[@]}" apt-get install -y -q --no-install-recommends "$@" >"$INSTALL_LOG" 2>&1; then
    "${SUDO[@]}" apt-get update -q >>"$INSTALL_LOG" 2>&1 || true
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "$@" >>"$INSTALL_LOG" 2>&1 ||
      { tail -20 "$INSTALL_LOG" >&2; die "apt-get install $* failed"; }
  fi
}

CARGO_BIN_DIR="${CARGO_HOME:-$HOME/.cargo}/bin"
[[ -d $CARGO_BIN_DIR ]] && PATH="$PATH:$CARGO_BIN_DIR"
INSTALL_LOG=$(mktemp /tmp/loadtest-install.XXXXXX.log)

if [[ $SKIP_INSTALL != 1 ]]; then
  missing=()
  # nginx-light has ssl and stub_status. On a host with systemd the package also starts the
  # distribution's nginx service (port 80); this script never uses that one.
  have nginx || missing+=(nginx-light)
  have wrk || missing+=(wrk)
  have openssl || missing+=(openssl)
  have curl || missing+=(curl)
  if [[ $PERF == 1 ]] && ! have perf; then missing+=(linux-perf); fi
  if (( ${#missing[@]} )); then apt_install "${missing[@]}"; fi
  if ! have oha; then
    have cargo || die "cargo is needed to install oha (cargo install oha --locked)"
    log "installing oha $OHA_VERSION with cargo install (one-off, a few minutes)"
    cargo install oha --locked --version "$OHA_VERSION" >"$INSTALL_LOG" 2>&1 ||
      { tail -20 "$INSTALL_LOG" >&2; die "cargo install oha failed"; }
  fi
fi
rm -f "$INSTALL_LOG"
INSTALL_LOG=""
for tool in nginx wrk openssl curl oha; do
  have "$tool" || die "$tool is missing (SKIP_INSTALL=$SKIP_INSTALL)"
done
if [[ $PERF == 1 ]] && ! have perf; then die "perf is missing (apt-get install linux-perf)"; fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# ---------------------------------------------------------------------------- build
# The commit the binary is built from (the tree may move on while the script runs).
COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$REPO" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]]; then
  COMMIT+=" with uncommitted changes to src/ or Cargo.*"
fi
BIN_NOTE=""
[[ -n $PROXY_BIN ]] && BIN_NOTE=" (PROXY_BIN given: not built by this script)"
if [[ -z $PROXY_BIN ]]; then
  log "cargo build --release --locked"
  (cd "$REPO" && cargo build --release --locked --quiet) || die "cargo build --release --locked failed"
  PROXY_BIN="$REPO/target/release/prime-sigv4-proxy"
fi
[[ -x $PROXY_BIN ]] || die "PROXY_BIN $PROXY_BIN is not an executable"

# ---------------------------------------------------------------------------- ports
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "$NGINX_PORT" "$NGINX_STATUS_PORT" "$PROXY_PORT" "$ADMIN_PORT"; do
  port_taken "$port" && die "127.0.0.1:$port is already in use (set NGINX_PORT/NGINX_STATUS_PORT/PROXY_PORT/ADMIN_PORT)"
done

WORK=$(mktemp -d /tmp/loadtest.XXXXXX)
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------------------- TLS
mkdir -p "$WORK/tls"
(
  cd "$WORK/tls"
  # RSA 2048 like the certificates of the real endpoints; only connection setup pays for it.
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=prime-sigv4-proxy loadtest CA" \
    -keyout ca.key -out ca.pem \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr
  cat >server.ext <<'EOF'
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
EOF
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile server.ext -out server.pem
) >"$WORK/tls/openssl.log" 2>&1 || { cat "$WORK/tls/openssl.log" >&2; die "certificate generation failed"; }

# ---------------------------------------------------------------------------- nginx
NGX="$WORK/nginx"
mkdir -p "$NGX/logs"
cat >"$NGX/nginx.conf" <<EOF
# Same nginx for direct and proxied runs; wrk, nginx and the proxy share the machine's cores.
worker_processes $NGINX_WORKERS;
daemon off;
pid $NGX/nginx.pid;
error_log $NGX/logs/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $NGX/client_body;
    proxy_temp_path $NGX/proxy;
    fastcgi_temp_path $NGX/fastcgi;
    uwsgi_temp_path $NGX/uwsgi;
    scgi_temp_path $NGX/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$NGINX_PORT ssl;
        ssl_certificate $WORK/tls/server.pem;
        ssl_certificate_key $WORK/tls/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {
            default_type application/json;
            return 200 '{"benefits":[]}';
        }
    }
    server {
        listen 127.0.0.1:$NGINX_STATUS_PORT;
        location = /nginx_status { stub_status; }
    }
}
EOF
"$NGINX" -t -q -p "$NGX" -c "$NGX/nginx.conf" -e "$NGX/logs/error.log" >"$NGX/logs/test.log" 2>&1 ||
  { cat "$NGX/logs/test.log" >&2; die "nginx -t refused the generated configuration"; }
"$NGINX" -p "$NGX" -c "$NGX/nginx.conf" -e "$NGX/logs/error.log" >"$NGX/logs/stdout.log" 2>&1 &
NGINX_PID=$!
for ((i = 0; i < 100; i++)); do
  curl -fsS -o /dev/null "http://127.0.0.1:$NGINX_STATUS_PORT/nginx_status" 2>/dev/null && break
  kill -0 "$NGINX_PID" 2>/dev/null || { cat "$NGX/logs/error.log" >&2; die "nginx exited at start"; }
  sleep 0.1
done
curl -fsS --cacert "$WORK/tls/ca.pem" -o /dev/null "https://127.0.0.1:$NGINX_PORT/v1/benefits" ||
  die "nginx does not answer over TLS on 127.0.0.1:$NGINX_PORT"
NGINX_WORKERS_DESC="$NGINX_WORKERS ($(pgrep -c -P "$NGINX_PID" || true) worker processes)"

# ---------------------------------------------------------------------------- request
# A realistic Login-with-Amazon token: Atza| prefix and ~400 characters of base64 with
# + / =, the same every run (AES-CTR keystream), percent-encoded in the query.
TOKEN_B64=$(head -c 292 /dev/zero |
  openssl enc -aes-128-ctr -nosalt -K 6c6f6164746573742d6c77612d746f6b -iv 00000000000000000000000000000000 |
  base64 -w0)
TOKEN="Atza|IwEBI${TOKEN_B64}"
TOKEN_ENC=$(printf '%s' "$TOKEN" | sed -e 's/%/%25/g' -e 's/|/%7C/g' -e 's/+/%2B/g' -e 's#/#%2F#g' -e 's/=/%3D/g')
REQ_PATH="/v1/benefits?customerIdentifier=$TOKEN_ENC"
DIRECT_URL="https://127.0.0.1:$NGINX_PORT$REQ_PATH"
PROXY_URL="http://127.0.0.1:$PROXY_PORT$REQ_PATH"
MARKETPLACE_HEADER="x-amz-marketplace: US"

# ---------------------------------------------------------------------------- proxy
mkdir -p "$WORK/home/.aws"
: >"$WORK/home/.aws/config"
: >"$WORK/home/.aws/credentials"
cat >"$WORK/proxy.toml" <<EOF
listen = "127.0.0.1:$PROXY_PORT"
admin_listen = "127.0.0.1:$ADMIN_PORT"

[upstream]
ca_file = "$WORK/tls/ca.pem"

[regions.na]
endpoint = "https://127.0.0.1:$NGINX_PORT"

[regions.eu]
endpoint = "https://127.0.0.1:$NGINX_PORT"

[regions.fe]
endpoint = "https://127.0.0.1:$NGINX_PORT"
EOF

# A clean environment, so no PRIME_PROXY_* or AWS_* of the caller leaks in. A command, not a
# function: started with `&`, $! is then the proxy's own pid (env execs it).
PROXY_ENV=(env -i PATH="$PATH" HOME="$WORK/home"
  AWS_CONFIG_FILE="$WORK/home/.aws/config" AWS_SHARED_CREDENTIALS_FILE="$WORK/home/.aws/credentials"
  AWS_ACCESS_KEY_ID=AKIDLOADTEST AWS_SECRET_ACCESS_KEY=loadtest-secret
  AWS_SESSION_TOKEN=loadtest-token AWS_EC2_METADATA_DISABLED=true
  PRIME_PROXY_LOG_FORMAT=json)
"${PROXY_ENV[@]}" RUST_LOG="$LOG_LEVEL" "$PROXY_BIN" --check-config --config "$WORK/proxy.toml" >"$WORK/check-config.txt" 2>&1 ||
  { cat "$WORK/check-config.txt" >&2; die "the proxy refused the generated configuration"; }

declare -A R   # results: R[tag.key]

proxy_failed() { # tag: shows the proxy's last log lines and stops it
  log "the proxy ($1) did not become ready or did not forward; its last log lines:"
  tail -20 "$WORK/proxy-$1.log" >&2
  stop_pid "$PROXY_PID" TERM 15
  PROXY_PID=""
}

start_proxy() { # tag level: starts a fresh proxy, waits for /readyz, records idle VmRSS
  local tag=$1 level=$2 i
  port_taken "$PROXY_PORT" && { log "127.0.0.1:$PROXY_PORT is still in use"; return 1; }
  "${PROXY_ENV[@]}" RUST_LOG="$level" "$PROXY_BIN" --config "$WORK/proxy.toml" >"$WORK/proxy-$tag.log" 2>&1 &
  PROXY_PID=$!
  for ((i = 0; i < 200; i++)); do
    curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN_PORT/readyz" 2>/dev/null && break
    kill -0 "$PROXY_PID" 2>/dev/null || break
    sleep 0.1
  done
  curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN_PORT/readyz" 2>/dev/null || { proxy_failed "$tag"; return 1; }
  local a_start
  read -r a_start _ < <(nginx_counters)
  R[$tag.accepts_start]=$a_start
  # One request through it proves the whole path (TLS to nginx, signing) before measuring;
  # it opens one upstream connection, which the measured run then reuses.
  curl -fsS -o /dev/null -H "$MARKETPLACE_HEADER" "$PROXY_URL" || { proxy_failed "$tag"; return 1; }
  R[$tag.idle_rss_kib]=$(status_kib "$PROXY_PID" VmRSS)
}

stop_proxy() { # tag: records VmHWM, scrapes /metrics, stops the proxy
  local tag=$1
  [[ -n $PROXY_PID ]] || return 0
  R[$tag.hwm_kib]=$(status_kib "$PROXY_PID" VmHWM)
  R[$tag.final_rss_kib]=$(status_kib "$PROXY_PID" VmRSS)
  R[$tag.threads]=$(awk '/^Threads:/ {print $2}' "/proc/$PROXY_PID/status" 2>/dev/null || true)
  curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" >"$WORK/metrics-$tag.txt" 2>/dev/null || true
  # The proxy's own count of open upstream connections, where it exports one.
  R[$tag.gauge]=$(awk '$1 == "prime_proxy_upstream_connections" {print $2}' "$WORK/metrics-$tag.txt")
  stop_pid "$PROXY_PID" TERM 15
  PROXY_PID=""
  R[$tag.log_bytes]=$(stat -c %s "$WORK/proxy-$tag.log")
  R[$tag.log_lines]=$(wc -l <"$WORK/proxy-$tag.log")
  # At warn, a healthy run logs nothing per request: show what it did log.
  if [[ $tag != info-* ]] && (( ${R[$tag.log_lines]} > 0 )); then
    log "$tag: the proxy logged ${R[$tag.log_lines]} lines, e.g.: $(head -c 300 "$WORK/proxy-$tag.log" | head -1)"
  fi
}

# ---------------------------------------------------------------------------- /proc probes
status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null || true; }
cpu_ticks() { # utime+stime of every thread of a process, in clock ticks
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  # shellcheck disable=SC2086
  set -- $stat
  echo $(( ${12} + ${13} ))
}
nginx_ticks() { # master and workers
  local total=0 pid t
  for pid in "$NGINX_PID" $(pgrep -P "$NGINX_PID" 2>/dev/null); do
    t=$(cpu_ticks "$pid") && total=$((total + t))
  done
  echo "$total"
}
children_ticks() { # CPU of this script's finished children (wrk via timeout, curl, ...)
  local stat
  stat=$(cat "/proc/$$/stat")
  stat=${stat##*) }
  # shellcheck disable=SC2086
  set -- $stat
  echo $(( ${14} + ${15} ))
}
machine_cpu() { awk '$1 == "cpu" {busy = $2 + $3 + $4 + $7 + $8 + $9; print busy, busy + $5 + $6; exit}' /proc/stat; }
nginx_counters() { # accepts requests active (this scrape included)
  curl -fsS "http://127.0.0.1:$NGINX_STATUS_PORT/nginx_status" | awk 'NR == 1 {active = $3} NR == 3 {print $1, $3, active}'
}

calc() { awk "BEGIN { printf \"%.${2:-4}f\", $1 }"; }

# ---------------------------------------------------------------------------- one measured run
# measure TAG CONNECTIONS URL WITH_PROXY(0/1) -> R[TAG.*]
measure() {
  local tag=$1 conns=$2 url=$3 with_proxy=$4 threads=$THREADS
  local out="$WORK/$tag.wrk"
  (( threads > conns )) && threads=$conns
  local a0 q0 a1 q1 o1 n0 n1 m0 m1 c0 c1 p0=0 p1=0 line kv
  read -r a0 q0 _ < <(nginx_counters)
  n0=$(nginx_ticks)
  m0=$(machine_cpu)
  c0=$(children_ticks)
  if (( with_proxy )); then p0=$(cpu_ticks "$PROXY_PID") || { fail_measure "$tag: the proxy is gone"; return 0; }; fi
  timeout --kill-after=5 $((DURATION + 30)) \
    wrk -t "$threads" -c "$conns" -d "${DURATION}s" --timeout 5s -s "$LUA" -H "$MARKETPLACE_HEADER" "$url" \
    >"$out" 2>&1 || true
  if (( with_proxy )); then
    p1=$(cpu_ticks "$PROXY_PID") || { fail_measure "$tag: the proxy died during the run"; p1=""; }
  fi
  m1=$(machine_cpu)
  c1=$(children_ticks)
  n1=$(nginx_ticks)
  read -r a1 q1 o1 < <(nginx_counters)
  line=$(grep '^LOADTEST_WRK ' "$out" | tail -1 || true)
  if [[ -z $line ]]; then
    fail_measure "$tag: no wrk result (see below)"
    tail -5 "$out" >&2
    return 0
  fi
  for kv in ${line#LOADTEST_WRK }; do R[$tag.${kv%%=*}]=${kv#*=}; done
  local req=${R[$tag.requests]}
  if (( req == 0 )); then fail_measure "$tag: no request completed"; return 0; fi
  local errors=$(( ${R[$tag.err_connect]} + ${R[$tag.err_read]} + ${R[$tag.err_write]} + ${R[$tag.err_status]} + ${R[$tag.err_timeout]} ))
  R[$tag.errors]=$errors
  if (( errors * 1000 > req )); then
    fail_measure "$tag: $errors errors in $req requests (connect/read/write/status/timeout ${R[$tag.err_connect]}/${R[$tag.err_read]}/${R[$tag.err_write]}/${R[$tag.err_status]}/${R[$tag.err_timeout]})"
  fi
  R[$tag.rps]=$(calc "$req / (${R[$tag.duration_us]} / 1000000)" 0)
  # Connections nginx accepted during the run, less the after-scrape's own; for a direct
  # run also less wrk's start-up probe (wrk connects once to check the address, then closes).
  R[$tag.accepts]=$(( a1 - a0 - 1 - (with_proxy ? 0 : 1) ))
  R[$tag.upstream_requests]=$(( q1 - q0 - 1 ))
  R[$tag.open_after]=$(( o1 - 1 ))   # connections nginx still holds open (the proxy's pool)
  if (( with_proxy )); then
    # Everything the fresh proxy opened: its check request's connection and the run's.
    R[$tag.opened]=$(( a1 - ${R[$tag.accepts_start]} - 2 ))
  else
    R[$tag.opened]=${R[$tag.accepts]}
  fi
  R[$tag.nginx_cpu_per_k]=$(calc "($n1 - $n0) / $CLK_TCK / $req * 1000")
  read -r mb0 mt0 <<<"$m0"
  read -r mb1 mt1 <<<"$m1"
  R[$tag.machine_busy_pct]=$(calc "100 * ($mb1 - $mb0) / ($mt1 - $mt0)" 0)
  # CPU that neither wrk, nginx nor the proxy used: other processes competing with the run.
  R[$tag.others_pct]=$(calc "100 * (($mb1 - $mb0) - ($c1 - $c0) - ($n1 - $n0) - (${p1:-0} - $p0)) / ($mt1 - $mt0)" 0)
  if (( ${R[$tag.others_pct]} > 10 )); then
    OTHERS_BUSY+=("$tag ${R[$tag.others_pct]}%")
    log "WARNING: other processes used ${R[$tag.others_pct]}% of the machine during $tag"
  fi
  if (( with_proxy )) && [[ -n $p1 ]]; then
    R[$tag.cpu_s]=$(calc "($p1 - $p0) / $CLK_TCK" 2)
    R[$tag.cpu_per_k]=$(calc "($p1 - $p0) / $CLK_TCK / $req * 1000")
    R[$tag.cores]=$(calc "($p1 - $p0) / $CLK_TCK / (${R[$tag.duration_us]} / 1000000)" 2)
  fi
  log "$(printf '%-12s c=%-3s %8s req/s  p50 %s ms  p99 %s ms  errors %s  nginx connections opened %s%s' \
    "$tag" "$conns" "${R[$tag.rps]}" "$(calc "${R[$tag.p50_us]} / 1000" 3)" "$(calc "${R[$tag.p99_us]} / 1000" 3)" \
    "$errors" "${R[$tag.opened]}" \
    "$( (( with_proxy )) && [[ -n $p1 ]] && printf '  proxy CPU %s s/1000 req' "${R[$tag.cpu_per_k]}")")"
}

# measure_rate TAG URL WITH_PROXY -> R[TAG.*]: fixed rate with oha, latency-corrected
measure_rate() {
  local tag=$1 url=$2 with_proxy=$3
  local out="$WORK/$tag.oha.json" p0=0 p1=0 k v
  if (( with_proxy )); then p0=$(cpu_ticks "$PROXY_PID") || { fail_measure "$tag: the proxy is gone"; return 0; }; fi
  timeout --kill-after=5 $((RATE_DURATION + 30)) \
    oha --no-tui --output-format json --latency-correction --cacert "$WORK/tls/ca.pem" \
    -c "$RATE_CONNECTIONS" -q "$RATE" -z "${RATE_DURATION}s" -w -t 5s \
    -H "$MARKETPLACE_HEADER" "$url" >"$out" 2>"$WORK/$tag.oha.err" || true
  if (( with_proxy )); then
    p1=$(cpu_ticks "$PROXY_PID") || { fail_measure "$tag: the proxy died during the run"; p1=""; }
  fi
  # Flat JSON probe without jq: "key":number pairs of the sections we need.
  local parsed
  parsed=$(tr -d ' \n' <"$out" | awk '
    function grab(section, key,   s, i, rest) {
      s = index($0, "\"" section "\":{"); if (s == 0) return "";
      rest = substr($0, s); i = index(rest, "\"" key "\":"); if (i == 0) return "";
      rest = substr(rest, i + length(key) + 3); match(rest, /^[-0-9.eE+]+/);
      return substr(rest, 1, RLENGTH)
    }
    {
      print "total", grab("summary", "total");
      print "rps", grab("summary", "requestsPerSec");
      print "success_rate", grab("summary", "successRate");
      print "p50", grab("latencyPercentiles", "p50");
      print "p90", grab("latencyPercentiles", "p90");
      print "p99", grab("latencyPercentiles", "p99");
      print "p999", grab("latencyPercentiles", "p99.9");
      print "ok", grab("statusCodeDistribution", "200");
      print "dial_avg", grab("DNSDialup", "average");
      print "dial_max", grab("DNSDialup", "slowest");
    }')
  while read -r k v; do [[ -n $v ]] && R[$tag.$k]=$v; done <<<"$parsed"
  if [[ -z ${R[$tag.p99]:-} || -z ${R[$tag.ok]:-} ]]; then
    fail_measure "$tag: no oha result"
    tail -5 "$WORK/$tag.oha.err" >&2
    return 0
  fi
  local rate_total
  rate_total=$(calc "${R[$tag.rps]} * ${R[$tag.total]}" 0)   # total: the run's seconds
  R[$tag.requests]=${R[$tag.ok]}
  R[$tag.errors]=$(calc "$rate_total - ${R[$tag.ok]}" 0)
  if awk "BEGIN { exit !(${R[$tag.success_rate]} < 0.999) }"; then
    fail_measure "$tag: success rate ${R[$tag.success_rate]} (status 200: ${R[$tag.ok]})"
  fi
  for k in p50 p90 p99 p999; do R[$tag.${k}_ms]=$(calc "${R[$tag.$k]} * 1000" 3); done
  # Connection set-up (TCP, plus the TLS handshake for direct runs) as oha saw it.
  for k in dial_avg dial_max; do [[ -n ${R[$tag.$k]:-} ]] && R[$tag.${k}_ms]=$(calc "${R[$tag.$k]} * 1000" 2); done
  if (( with_proxy )) && [[ -n $p1 ]]; then
    R[$tag.cpu_per_k]=$(calc "($p1 - $p0) / $CLK_TCK / ${R[$tag.ok]} * 1000")
  fi
  log "$(printf '%-12s c=%-3s %8s req/s  p50 %s  p90 %s  p99 %s  p99.9 %s ms' "$tag" "$RATE_CONNECTIONS" \
    "$(calc "${R[$tag.rps]}" 0)" "${R[$tag.p50_ms]}" "${R[$tag.p90_ms]}" "${R[$tag.p99_ms]}" "${R[$tag.p999_ms]}")"
}

# ---------------------------------------------------------------------------- the runs
log "nginx $("$NGINX" -v 2>&1 | sed 's#.*/##'), worker_processes $NGINX_WORKERS_DESC; $({ wrk --version 2>&1 || true; } | awk 'NR == 1 {print $1, $2}'); $({ oha --version 2>&1 || true; } | head -1)"
log "request: GET /v1/benefits?customerIdentifier=<${#TOKEN}-char LWA token, ${#REQ_PATH}-char path>, $MARKETPLACE_HEADER"
log "proxy: $PROXY_BIN, RUST_LOG=$LOG_LEVEL, PRIME_PROXY_LOG_FORMAT=json (stdout to a file)"

# Another busy process would skew every figure: measure the machine at rest first (and wait
# up to WAIT_IDLE seconds for it to calm down).
idle_deadline=$((SECONDS + WAIT_IDLE))
while :; do
  read -r mb0 mt0 < <(machine_cpu)
  sleep 2
  read -r mb1 mt1 < <(machine_cpu)
  BUSY_BEFORE=$(calc "100 * ($mb1 - $mb0) / ($mt1 - $mt0)" 0)
  (( BUSY_BEFORE <= 10 || SECONDS >= idle_deadline )) && break
  log "the machine is ${BUSY_BEFORE}% busy; waiting for it to calm down (WAIT_IDLE=$WAIT_IDLE)"
  sleep 8
done
if (( BUSY_BEFORE > 10 )); then
  log "WARNING: the machine was ${BUSY_BEFORE}% busy before the load started (other processes): figures will be low"
fi

for c in "${CONN_LIST[@]}"; do
  measure "direct-$c" "$c" "$DIRECT_URL" 0
  if start_proxy "proxy-$c" "$LOG_LEVEL"; then
    measure "proxy-$c" "$c" "$PROXY_URL" 1
    stop_proxy "proxy-$c"
  else
    fail_measure "proxy-$c: the proxy did not become ready"
  fi
done

if [[ $INFO_RUN == 1 ]]; then
  if start_proxy "info-$MAX_CONN" info; then
    measure "info-$MAX_CONN" "$MAX_CONN" "$PROXY_URL" 1
    stop_proxy "info-$MAX_CONN"
  else
    fail_measure "info-$MAX_CONN: the proxy did not become ready"
  fi
fi

measure_rate rate-direct "$DIRECT_URL" 0
if start_proxy rate-proxy "$LOG_LEVEL"; then
  measure_rate rate-proxy "$PROXY_URL" 1
  stop_proxy rate-proxy
else
  fail_measure "rate-proxy: the proxy did not become ready"
fi

if [[ $PERF == 1 ]]; then
  if start_proxy perf "$LOG_LEVEL"; then
    perf_secs=$(( DURATION > 6 ? DURATION - 4 : 2 ))
    ( sleep 2; exec perf record -q -F "$PERF_FREQ" --call-graph "$PERF_CALL_GRAPH" -p "$PROXY_PID" -o "$WORK/perf.data" -- sleep "$perf_secs" ) \
      >"$WORK/perf-record.log" 2>&1 &
    PERF_PID=$!
    measure perf "$MAX_CONN" "$PROXY_URL" 1
    stop_pid "$PERF_PID" INT 20
    PERF_PID=""
    stop_proxy perf
    tidy() { grep -v '^#' | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//; s/[[:space:]]+$//' | grep -v '^$'; }
    {
      echo "# perf record -F $PERF_FREQ --call-graph $PERF_CALL_GRAPH of prime-sigv4-proxy, ${perf_secs}s inside a ${DURATION}s wrk run at $MAX_CONN connections"
      echo "# ${R[perf.rps]:-?} req/s (perf running); commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null); $(date -u '+%F %T UTC')"
      echo
      echo "## Self time by symbol (top 15)"
      perf report -i "$WORK/perf.data" --stdio --no-children -g none --sort dso,symbol --percent-limit 0.3 2>/dev/null | tidy | head -15
      echo
      echo "## Self time by shared object"
      perf report -i "$WORK/perf.data" --stdio --no-children -g none --sort dso 2>/dev/null | tidy | head -10
      echo
      perf report -i "$WORK/perf.data" --stdio --children -g none --sort symbol --percent-limit 0.3 2>/dev/null | tidy \
        >"$WORK/perf-children.txt"
      echo "## Inclusive time (children) by symbol (top 30)"
      head -30 "$WORK/perf-children.txt"
      echo
      echo "## Inclusive time of the proxy's own stages and the libraries it calls (>= 0.3%)"
      grep -E 'prime_sigv4_proxy::|aws_sigv4::|aws_lc|rustls::|tracing|prometheus|uuid|governor|\[\.\] (mi_|_mi_|malloc|free)|sys_(writev|read|recvfrom|sendto|epoll_wait)|__x64_sys_(writev|read|recvfrom|sendto|epoll_wait|futex)' \
        "$WORK/perf-children.txt" | head -60
      echo
      echo "## Call graphs of the top self-time symbols (caller view, >= 2%)"
      perf report -i "$WORK/perf.data" --stdio --no-children -G --sort symbol --percent-limit 2 2>/dev/null | tidy | head -400
    } >"$PERF_OUT" || fail_measure "perf report failed"
    log "perf profile written to $PERF_OUT"
  else
    fail_measure "perf: the proxy did not become ready"
  fi
fi

stop_nginx

# ---------------------------------------------------------------------------- summary
v() { echo "${R[$1]:-}"; }
nv() { echo "${R[$1]:-n/a}"; }   # for display
num() { # integer with thousands separators, or n/a
  [[ -n ${1:-} ]] || { echo "n/a"; return; }
  LC_ALL=C awk -v n="$1" 'BEGIN { n = sprintf("%.0f", n); s = ""; while (length(n) > 3) { s = "," substr(n, length(n) - 2) s; n = substr(n, 1, length(n) - 3) } print n s }'
}
ms() { [[ -n ${1:-} ]] && calc "$1 / 1000" 2 || echo "n/a"; }   # µs -> ms
ratio() { [[ -n ${1:-} && -n ${2:-} ]] && awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2f\n", a / b }' || echo "n/a"; }
mib() { [[ -n ${1:-} ]] && calc "$1 / 1024" 1 || echo "n/a"; }
check() { # value op target -> met / **MISSED** / n/a
  [[ ${1:-} =~ ^-?[0-9.]+$ ]] || { echo "n/a"; return; }
  awk -v x="$1" -v t="$3" -v op="$2" 'BEGIN { ok = (op == "<=") ? (x <= t) : (x >= t); print ok ? "met" : "**MISSED**" }'
}

NPROC=$(nproc)
CPU_MODEL=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)
HEAD_NOW=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ $COMMIT == "$HEAD_NOW"* ]] || COMMIT+=" (HEAD moved to $HEAD_NOW during the run)"
BIN_BUILT=$(date -u -r "$PROXY_BIN" '+%Y-%m-%d %H:%M UTC' 2>/dev/null || echo "?")
NGINX_VERSION=$("$NGINX" -v 2>&1 | sed 's#.*nginx/##')
WRK_VERSION=$({ wrk --version 2>&1 || true; } | awk 'NR == 1 {print $2}')   # wrk --version exits 1
OHA_V=$({ oha --version 2>&1 || true; } | awk 'NR == 1 {print $2}')

rows=()
row() { rows+=("| $1 | $2 | $3 | $4 | $5 | $6 |"); }
for c in "${CONN_LIST[@]}"; do
  target="—"; status=""
  if (( c == 64 )); then target="≥ $(num $TARGET_RPS) req/s"; status=$(check "$(v proxy-$c.rps)" ">=" $TARGET_RPS); fi
  row "Throughput, $c connections" "$target" "$(num "$(v direct-$c.rps)") req/s" "$(num "$(v proxy-$c.rps)") req/s" \
    "$(ratio "$(v proxy-$c.rps)" "$(v direct-$c.rps)")" "$status"
  row "Latency p50 / p99 at saturation, $c connections" "—" \
    "$(ms "$(v direct-$c.p50_us)") / $(ms "$(v direct-$c.p99_us)") ms" \
    "$(ms "$(v proxy-$c.p50_us)") / $(ms "$(v proxy-$c.p99_us)") ms" \
    "$(ratio "$(v proxy-$c.p50_us)" "$(v direct-$c.p50_us)") / $(ratio "$(v proxy-$c.p99_us)" "$(v direct-$c.p99_us)")" ""
done
for c in "${CONN_LIST[@]}"; do
  target="—"; status=""
  if (( c == 64 )); then target="≤ $TARGET_CPU_PER_K s"; status=$(check "$(v proxy-$c.cpu_per_k)" "<=" $TARGET_CPU_PER_K); fi
  row "Proxy CPU per 1,000 requests, $c connections" "$target" \
    "nginx: $(nv direct-$c.nginx_cpu_per_k) s" \
    "$(nv proxy-$c.cpu_per_k) s (nginx: $(nv proxy-$c.nginx_cpu_per_k) s)" \
    "" "$status"
done
for c in "${CONN_LIST[@]}"; do
  target="—"; status=""
  if (( c == 64 )); then target="≤ $TARGET_RSS_MIB MiB"; status=$(check "$(mib "$(v proxy-$c.hwm_kib)")" "<=" $TARGET_RSS_MIB); fi
  row "Proxy peak RSS (VmHWM), $c connections" "$target" "—" \
    "$(mib "$(v proxy-$c.hwm_kib)") MiB (idle $(mib "$(v proxy-$c.idle_rss_kib)") MiB)" "" "$status"
done
for c in "${CONN_LIST[@]}"; do
  opened=$(v proxy-$c.opened)
  status=$(check "$opened" "<=" "$c")
  row "Upstream TLS connections opened, $c connections" "≤ $c" "$(nv direct-$c.opened) (wrk's own)" \
    "${opened:-n/a} ($(nv proxy-$c.open_after) open at the end$([[ -n $(v proxy-$c.gauge) ]] && echo ", proxy gauge $(v proxy-$c.gauge)"))" "$(ratio "$opened" "$(v direct-$c.opened)")" "$status"
done
# oha counts connection set-up in the first requests' latency (latency-corrected, so also the
# requests scheduled meanwhile): direct runs pay $RATE_CONNECTIONS client TLS handshakes there,
# proxied runs plain TCP connects (the proxy's own upstream handshakes count instead).
row "Fixed $RATE req/s, $RATE_CONNECTIONS connections: p50 / p90 / p99 / p99.9 (connection set-up included, direct: TLS $(nv rate-direct.dial_avg_ms) ms avg)" "—" \
  "$(nv rate-direct.p50_ms) / $(nv rate-direct.p90_ms) / $(nv rate-direct.p99_ms) / $(nv rate-direct.p999_ms) ms" \
  "$(nv rate-proxy.p50_ms) / $(nv rate-proxy.p90_ms) / $(nv rate-proxy.p99_ms) / $(nv rate-proxy.p999_ms) ms" \
  "$(ratio "$(v rate-proxy.p50_ms)" "$(v rate-direct.p50_ms)") / $(ratio "$(v rate-proxy.p90_ms)" "$(v rate-direct.p90_ms)") / $(ratio "$(v rate-proxy.p99_ms)" "$(v rate-direct.p99_ms)") / $(ratio "$(v rate-proxy.p999_ms)" "$(v rate-direct.p999_ms)")" ""
P99_DELTA=""
if [[ -n $(v rate-proxy.p99_ms) && -n $(v rate-direct.p99_ms) ]]; then
  P99_DELTA=$(calc "$(v rate-proxy.p99_ms) - $(v rate-direct.p99_ms)" 3)
fi
row "Fixed $RATE req/s: p99 proxy − direct" "≤ $TARGET_P99_DELTA_MS ms" "" "${P99_DELTA:-n/a} ms" "" \
  "$(check "$P99_DELTA" "<=" $TARGET_P99_DELTA_MS)"
row "Proxy CPU per 1,000 requests at $RATE req/s" "—" "" "$(nv rate-proxy.cpu_per_k) s" "" ""
if [[ $INFO_RUN == 1 ]]; then
  row "RUST_LOG=info (default level), $MAX_CONN connections" "—" "$(num "$(v direct-$MAX_CONN.rps)") req/s" \
    "$(num "$(v info-$MAX_CONN.rps)") req/s, $(v info-$MAX_CONN.cpu_per_k) s CPU/1,000 req, $(mib "$(v info-$MAX_CONN.hwm_kib)") MiB" \
    "$(ratio "$(v info-$MAX_CONN.rps)" "$(v direct-$MAX_CONN.rps)")" ""
fi

{
  echo
  echo "## Details"
  printf '%-12s %5s %10s %9s %9s %9s %9s %7s %7s %7s %9s %10s %6s %7s %7s %8s\n' run conns requests "req/s" "p50 ms" "p99 ms" "p99.9 ms" errors opened "open@end" "upstr.req" "CPU s/1k" "cores" "busy %" "other %" "HWM MiB"
  tags=()
  for c in "${CONN_LIST[@]}"; do tags+=("direct-$c" "proxy-$c"); done
  [[ $INFO_RUN == 1 ]] && tags+=("info-$MAX_CONN")
  [[ $PERF == 1 ]] && tags+=(perf)
  for tag in "${tags[@]}"; do
    printf '%-12s %5s %10s %9s %9s %9s %9s %7s %7s %7s %9s %10s %6s %7s %7s %8s\n' "$tag" "${tag##*-}" "$(nv $tag.requests)" "$(nv $tag.rps)" \
      "$(ms "$(v $tag.p50_us)")" "$(ms "$(v $tag.p99_us)")" "$(ms "$(v $tag.p999_us)")" "$(nv $tag.errors)" "$(nv $tag.opened)" "$(nv $tag.open_after)" \
      "$(nv $tag.upstream_requests)" "$(nv $tag.cpu_per_k)" "$(nv $tag.cores)" "$(nv $tag.machine_busy_pct)" "$(nv $tag.others_pct)" "$(mib "$(v $tag.hwm_kib)")"
  done
  for tag in rate-direct rate-proxy; do
    printf '%-12s %5s %10s %9s  p50 %s  p90 %s  p99 %s  p99.9 %s ms  errors %s  connect avg/max %s/%s ms%s\n' "$tag" "$RATE_CONNECTIONS" "$(nv $tag.requests)" \
      "$(calc "$(v $tag.rps || true)+0" 0)" "$(nv $tag.p50_ms)" "$(nv $tag.p90_ms)" "$(nv $tag.p99_ms)" "$(nv $tag.p999_ms)" "$(nv $tag.errors)" \
      "$(nv $tag.dial_avg_ms)" "$(nv $tag.dial_max_ms)" \
      "$([[ $tag == rate-proxy ]] && printf '  CPU %s s/1k' "$(nv $tag.cpu_per_k)")"
  done
  if [[ $INFO_RUN == 1 ]]; then
    echo "info-$MAX_CONN wrote $(v info-$MAX_CONN.log_lines) log lines ($(calc "${R[info-$MAX_CONN.log_bytes]:-0} / 1048576" 1) MiB) to a file"
  fi
  echo "(opened = TLS connections nginx accepted from the proxy since it started, or from wrk; open@end = still open after the run;"
  echo " upstr.req = requests nginx served during the run; cores = proxy CPU seconds per second;"
  echo " busy % = whole machine, all processes; other % = CPU used by processes other than wrk, nginx and the proxy)"
} >&2

cat <<EOF

### Load test: prime-sigv4-proxy vs. the same nginx directly

- Machine: $NPROC × $CPU_MODEL, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(. /etc/os-release && echo "$PRETTY_NAME"), kernel $(uname -r)
- Commit: $COMMIT; binary built $BIN_BUILT$BIN_NOTE; run $(date -u '+%Y-%m-%d %H:%M UTC')
- Command: \`$COMMAND\`
- Upstream: nginx $NGINX_VERSION on 127.0.0.1 (TLS 1.3, RSA 2048, keep-alive, \`return 200 '{"benefits":[]}'\`), worker_processes $NGINX_WORKERS_DESC, the same for direct and proxied runs
- Load: wrk $WRK_VERSION, $THREADS threads, ${DURATION} s per run, \`GET /v1/benefits?customerIdentifier=<${#TOKEN}-char LWA token>\` with \`$MARKETPLACE_HEADER\`; direct = HTTPS to nginx, proxy = HTTP to the proxy, which signs (SigV4) and forwards over its pooled TLS connections; fixed rate: oha $OHA_V \`-q $RATE -c $RATE_CONNECTIONS -z ${RATE_DURATION}s -w --latency-correction\`
- Machine CPU busy before the run (other processes): ${BUSY_BEFORE}%$( (( BUSY_BEFORE > 10 )) && echo " — **the machine was not idle: figures are unreliable**")$( (( ${#OTHERS_BUSY[@]} )) && echo "; **other processes competed during: ${OTHERS_BUSY[*]} — figures are unreliable**")
- Proxy: fresh process per run, static credentials, \`RUST_LOG=$LOG_LEVEL\` JSON logs to a file (one row at \`info\`); CPU = utime+stime from /proc/PID/stat; wrk, nginx and the proxy share the $NPROC cores

| Measurement | Target | Direct | Proxy | Proxy / direct | |
|---|---|---:|---:|---:|---|
EOF
printf '%s\n' "${rows[@]}"
cat <<'EOF'

Reference figures (from the issue, same machine class, 64 connections): direct to nginx ~93,000 req/s; Envoy 1.40 with aws_request_signing ~12,600 req/s, 0.068 s CPU per 1,000 requests, 69 MiB, 63 upstream connections.
EOF

if (( ${#FAILED[@]} )); then
  echo
  echo "NOT MEASURED:"
  printf '  - %s\n' "${FAILED[@]}"
  exit 1
fi
