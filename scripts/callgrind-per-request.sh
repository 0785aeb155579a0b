#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: a figure that does not move with
# whatever else the machine is doing, for judging a small change (or the cost of a feature)
# where wall-clock CPU is too noisy. Also `MODE=callgrind scripts/loadtest.sh`.
#
#   scripts/callgrind-per-request.sh                                  # this checkout's release build
#   PROXY_BIN=/other/build/prime-sigv4-proxy scripts/callgrind-per-request.sh
#   TRACING=1 scripts/callgrind-per-request.sh                        # with 100% sampled traces
#
# The proxy runs under callgrind with one worker thread and the default log level (a JSON line
# per request), in front of nginx over TLS on 127.0.0.1 (generated CA), serving the same GET
# with a 402-character LWA token as scripts/loadtest.sh from one Python keep-alive client.
# Instrumentation is off while the proxy starts and serves WARMUP requests (connections, pools and
# caches warm), on for the next REQUESTS, off again for shutdown: the counted instructions
# (every thread: runtime, log writer, span export) divided by REQUESTS are the cost of one
# request. With TRACING=1 a local OTLP/HTTP sink on 127.0.0.1 accepts the exports and every
# request is sampled (sampler_ratio = 1).
#
# Prints the instructions per request and the TOP functions by their own (exclusive)
# instructions per request.
#
# Knobs: PROXY_BIN (default target/release/prime-sigv4-proxy, built with --locked when missing),
# WARMUP=200, REQUESTS=1000, TOP=25, TRACING=0, PORT_BASE=18600 (uses PORT_BASE..PORT_BASE+3),
# KEEP_TMP=1 (keep the callgrind file for callgrind_annotate / kcachegrind).
# Needs valgrind, nginx, openssl, curl, python3.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WARMUP=${WARMUP:-200}
REQUESTS=${REQUESTS:-1000}
TOP=${TOP:-25}
TRACING=${TRACING:-0}
PORT_BASE=${PORT_BASE:-18600}
NGINX_PORT=$PORT_BASE PROXY_PORT=$((PORT_BASE + 1)) ADMIN_PORT=$((PORT_BASE + 2)) OTLP_PORT=$((PORT_BASE + 3))
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
die() { printf 'callgrind-per-request: %s\n' "$*" >&2; exit 1; }
for tool in valgrind callgrind_control callgrind_annotate openssl curl python3 "$NGINX"; do
  command -v "$tool" >/dev/null || die "$tool is missing"
done
(( REQUESTS > 0 )) || die "REQUESTS must be above 0"

if [[ -z ${PROXY_BIN:-} ]]; then
  PROXY_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/prime-sigv4-proxy"
  [[ -x $PROXY_BIN ]] || (cd "$ROOT" && cargo build --release --locked)
fi
[[ -x $PROXY_BIN ]] || die "PROXY_BIN $PROXY_BIN is not an executable"

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ ${KEEP_TMP:-0} == 1 ]] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT

# TLS: one CA, one leaf for 127.0.0.1.
(
  cd "$WORK"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=callgrind CA" -keyout ca.key -out ca.pem \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr
  printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n' >server.ext
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext -out server.pem
) >"$WORK/openssl.log" 2>&1 || { cat "$WORK/openssl.log" >&2; die "certificate generation failed"; }

mkdir -p "$WORK/nginx/logs"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$NGINX_PORT ssl;
        ssl_certificate $WORK/server.pem;
        ssl_certificate_key $WORK/server.key;
        location / { default_type application/json; return 200 '{"benefits":[]}'; }
    }
}
EOF
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/logs/error.log" &
PIDS+=($!)

# The OTLP/HTTP sink: answers every export 200 with an empty ExportTraceServiceResponse.
if [[ $TRACING == 1 ]]; then
  python3 - "$OTLP_PORT" >"$WORK/otlp.log" 2>&1 <<'EOF' &
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
EOF
  PIDS+=($!)
fi

cat >"$WORK/proxy.toml" <<EOF
listen = "127.0.0.1:$PROXY_PORT"
admin_listen = "127.0.0.1:$ADMIN_PORT"
[upstream]
ca_file = "$WORK/ca.pem"
[regions.na]
endpoint = "https://127.0.0.1:$NGINX_PORT"
[regions.eu]
endpoint = "https://127.0.0.1:$NGINX_PORT"
[regions.fe]
endpoint = "https://127.0.0.1:$NGINX_PORT"
EOF
if [[ $TRACING == 1 ]]; then
  printf '[tracing]\notlp_endpoint = "http://127.0.0.1:%s"\nsampler_ratio = 1.0\n' "$OTLP_PORT" >>"$WORK/proxy.toml"
fi

for ((i = 0; i < 100; i++)); do
  curl -fsS --cacert "$WORK/ca.pem" -o /dev/null "https://127.0.0.1:$NGINX_PORT/" 2>/dev/null && break
  sleep 0.1
done

# The client: one keep-alive connection, the loadtest's request, every answer checked.
cat >"$WORK/client.py" <<'EOF'
import base64, http.client, sys, urllib.parse
port, count = int(sys.argv[1]), int(sys.argv[2])
token = "Atza|IwEBI" + base64.b64encode(bytes(range(256)) + bytes(36)).decode()
path = "/v1/benefits?customerIdentifier=" + urllib.parse.quote(token, safe="")
conn = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(count):
    conn.request("GET", path, headers={"x-amz-marketplace": "US"})
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        sys.exit(f"status {response.status}")
EOF

out="$WORK/callgrind.out"
env -i PATH="$PATH" HOME="$WORK" AWS_ACCESS_KEY_ID=AKIDEXAMPLE \
  AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY AWS_EC2_METADATA_DISABLED=true \
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
  "$PROXY_BIN" --config "$WORK/proxy.toml" >"$WORK/proxy.log" 2>"$WORK/valgrind.log" &
proxy=$!
PIDS+=("$proxy")
for ((i = 0; i < 600; i++)); do
  curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN_PORT/readyz" 2>/dev/null && break
  kill -0 "$proxy" 2>/dev/null || { cat "$WORK/valgrind.log" >&2; die "the proxy exited at start"; }
  sleep 0.2
done
python3 "$WORK/client.py" "$PROXY_PORT" "$WARMUP" || die "the warm-up client failed"
callgrind_control -i on "$proxy" >/dev/null 2>&1
python3 "$WORK/client.py" "$PROXY_PORT" "$REQUESTS" || die "the client failed"
callgrind_control -i off "$proxy" >/dev/null 2>&1
kill -TERM "$proxy"
wait "$proxy" || true
total=$(sed -n 's/^totals: //p' "$out")
[[ -n $total && $total -gt 0 ]] || die "no instructions counted in $out"
echo "$((total / REQUESTS)) instructions per request ($PROXY_BIN, TRACING=$TRACING, $REQUESTS requests after $WARMUP)"
echo "top $TOP functions, own instructions per request:"
callgrind_annotate --inclusive=no --threshold=100 "$out" 2>/dev/null |
  awk -v n="$REQUESTS" -v top="$TOP" '
    /^-+$/ { rule++; next }
    rule >= 4 && $1 ~ /^[0-9,]+$/ && !/PROGRAM TOTALS/ && shown < top {
      ir = $1; gsub(",", "", ir)
      sub(/^ *[0-9,]+ +\( *[0-9.]+%\) +/, ""); printf "%10.0f  %s\n", ir / n, substr($0, 1, 110); shown++
    }'
