"""Fake Prime for the soak test: a fault-injecting TLS upstream that verifies every SigV4
signature it receives, plus the rotating container-credentials endpoint the proxy's AWS
credential chain reads its keys from. Standard library only.

One process, three listeners on 127.0.0.1 (ports chosen by the OS, written to --ports-file):

* ``upstream`` (HTTPS, HTTP/1.1 keep-alive): every request is checked by ``sigv4.verify``
  against the keys the credential endpoint has issued; a bad or expired signature gets 403
  and is counted. A valid request gets, with probability --fault-rate, an injected fault
  (503, 500/502/504, 429 with ``Retry-After: 1``, the connection closed without an answer, or a
  200 whose body is cut short by closing the connection)
  - but only on attempts before the proxy's last one (attempts are counted per
  ``x-amz-request-id``, which the proxy keeps across retries), so every request can still be
  answered within ``max_attempts``. With probability --slow-rate a response is delayed
  (well under the proxy's attempt timeout). Otherwise 200 with a JSON echo of what arrived.
* ``credentials`` (HTTP): ``GET /creds`` answers the container-credentials JSON. A new key
  is issued every --rotate-seconds and each is valid for --valid-seconds from its issue;
  with probability --cred-fault-rate a fetch gets 500 instead.
* ``control`` (HTTP): ``GET /stats`` returns the counters as JSON.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import hashlib
import json
import math
import os
import random
import secrets
import signal
import socket
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sigv4  # noqa: E402

# Marketplace -> SigV4 region, as the proxy's built-in region table has them.
REGION_OF = {}
for _m in ("US", "CA", "MX"):
    REGION_OF[_m] = "us-east-1"
for _m in ("UK", "FR", "IT", "ES", "IN", "AE", "SA", "EG", "NL", "DE", "TR"):
    REGION_OF[_m] = "eu-west-1"
for _m in ("JP", "SG", "AU"):
    REGION_OF[_m] = "us-west-2"

# The injected fault kinds and their share of --fault-rate.
FAULT_MIX = [
    ("status_503", 0.50),
    ("status_500", 0.05),
    ("status_502", 0.05),
    ("status_504", 0.05),
    ("status_429", 0.10),
    ("close_without_response", 0.15),
    ("truncated_response", 0.10),
]


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.start = time.time()
        self.rng = random.Random(args.seed)
        self.keys: dict[str, sigv4.Key] = {}
        self.key_by_epoch: dict[int, sigv4.Key] = {}
        self.issued_at: dict[str, float] = {}
        self.cred_fetches = 0
        self.cred_fetch_times: list[float] = []
        self.cred_auth_failures = 0
        self.cred_faults = 0
        self.requests = 0  # upstream attempts received
        self.by_method: collections.Counter = collections.Counter()
        self.by_region: collections.Counter = collections.Counter()
        self.sig_valid = 0
        self.sig_invalid: collections.Counter = collections.Counter()
        self.invalid_examples: list[str] = []
        self.keys_used: collections.Counter = collections.Counter()
        self.key_last_use_before_expiry: dict[str, float] = {}
        self.faults: collections.Counter = collections.Counter()
        self.slow = 0
        self.ok_responses = 0
        self.attempts: "collections.OrderedDict[str, int]" = collections.OrderedDict()
        self.attempt_hist: collections.Counter = collections.Counter()
        self.fault_suppressed_last_attempt = 0
        self.no_request_id = 0
        self.connections = 0
        self.connection_errors: collections.Counter = collections.Counter()
        self.host = None  # expected Host header, set once the port is known

    # -- credentials -------------------------------------------------------------------
    def current_key(self) -> sigv4.Key:
        now = time.time()
        epoch = int((now - self.start) // self.args.rotate_seconds)
        with self.lock:
            key = self.key_by_epoch.get(epoch)
            if key is None:
                issued = self.start + epoch * self.args.rotate_seconds
                key = sigv4.Key(
                    access_key_id="ASIASOAK%04d%s" % (epoch, secrets.token_hex(4).upper()),
                    secret=secrets.token_urlsafe(30),
                    token="IQoJb3JpZ2luX2VjE" + secrets.token_urlsafe(300),
                    # Whole seconds, as in the JSON (x-amz-date has whole seconds too), and
                    # rounded up so a key never lives shorter than --valid-seconds.
                    expiry=float(math.ceil(issued + self.args.valid_seconds)),
                )
                self.key_by_epoch[epoch] = key
                self.keys[key.access_key_id] = key
                self.issued_at[key.access_key_id] = issued
            self.cred_fetches += 1
            self.cred_fetch_times.append(round(now - self.start, 3))
        return key

    def lookup(self, akid: str):
        with self.lock:
            return self.keys.get(akid)

    # -- faults ------------------------------------------------------------------------
    def attempt_number(self, request_id):
        with self.lock:
            if not request_id:
                self.no_request_id += 1
                return 1
            n = self.attempts.get(request_id, 0) + 1
            self.attempts[request_id] = n
            self.attempts.move_to_end(request_id)
            while len(self.attempts) > 200_000:
                self.attempts.popitem(last=False)
            return n

    def choose_fault(self, attempt: int):
        with self.lock:
            draw = self.rng.random()
            if draw >= self.args.fault_rate:
                slow = self.rng.random() < self.args.slow_rate
                return None, (self.rng.uniform(0.2, self.args.slow_max) if slow else 0.0)
            if attempt >= self.args.max_attempts:
                # The proxy would not retry this one: a fault here would reach the client.
                self.fault_suppressed_last_attempt += 1
                return None, 0.0
            pick = self.rng.random()
            acc = 0.0
            for kind, share in FAULT_MIX:
                acc += share
                if pick < acc:
                    return kind, 0.0
            return FAULT_MIX[-1][0], 0.0

    def snapshot(self) -> dict:
        with self.lock:
            now = time.time()
            return {
                "uptime_s": round(now - self.start, 3),
                "requests": self.requests,
                "by_method": dict(self.by_method),
                "by_region": dict(self.by_region),
                "ok_responses": self.ok_responses,
                "signatures_valid": self.sig_valid,
                "signatures_invalid": sum(self.sig_invalid.values()),
                "signatures_invalid_by_kind": dict(self.sig_invalid),
                "invalid_examples": list(self.invalid_examples),
                "faults": dict(self.faults),
                "faults_total": sum(self.faults.values()),
                "faults_suppressed_on_last_attempt": self.fault_suppressed_last_attempt,
                "slow_responses": self.slow,
                "attempts_per_request_id": {str(k): v for k, v in sorted(self.attempt_hist.items())},
                "requests_without_request_id": self.no_request_id,
                "keys_issued": len(self.keys),
                "keys_used": len(self.keys_used),
                "signatures_by_key": dict(self.keys_used),
                "credential_fetches": self.cred_fetches,
                "credential_fetch_times_s": list(self.cred_fetch_times),
                "credential_auth_failures": self.cred_auth_failures,
                "credential_faults": self.cred_faults,
                "upstream_connections": self.connections,
                "connection_errors": dict(self.connection_errors),
                "config": {
                    "fault_rate": self.args.fault_rate,
                    "slow_rate": self.args.slow_rate,
                    "slow_max_s": self.args.slow_max,
                    "max_attempts": self.args.max_attempts,
                    "cred_fault_rate": self.args.cred_fault_rate,
                    "rotate_seconds": self.args.rotate_seconds,
                    "valid_seconds": self.args.valid_seconds,
                    "fault_mix": dict(FAULT_MIX),
                },
            }


STATE: State = None  # type: ignore[assignment]


def _json_bytes(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        with STATE.lock:
            STATE.connection_errors[type(exc).__name__] += 1


class TLSServer(QuietServer):
    """Accepts in the server thread, does the TLS handshake in the connection's thread."""

    def __init__(self, addr, handler, context: ssl.SSLContext):
        super().__init__(addr, handler)
        self.context = context

    def get_request(self):
        sock, addr = self.socket.accept()
        # Like any real server: without it, the head and body writes meet delayed ACKs (40 ms).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with STATE.lock:
            STATE.connections += 1
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr


class Base(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "soak-upstream"
    sys_version = ""

    def log_message(self, format, *args):  # noqa: A002 - keep stderr for real problems
        pass

    def send_json(self, status: int, obj, extra=()):
        body = _json_bytes(obj)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise ValueError("chunked request bodies are not expected from the proxy")
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""


class UpstreamHandler(Base):
    def handle_any(self):
        st = STATE
        try:
            body = self.read_body()
        except ValueError as e:
            self.close_connection = True
            with st.lock:
                st.requests += 1
                st.sig_invalid["malformed"] += 1
            self.send_json(400, {"message": str(e)}, [("Connection", "close")])
            return
        path, _, query = self.path.partition("?")
        headers = list(self.headers.items())
        marketplace = (self.headers.get("x-amz-marketplace") or "").strip().upper()
        region = REGION_OF.get(marketplace)
        verdict = sigv4.verify(
            self.command, path, query, headers, body, st.lookup, "execute-api",
            region=region or "<no region for marketplace %r>" % marketplace, now=time.time(),
        )
        if verdict.ok and self.headers.get("Host") != st.host:
            verdict = sigv4.Verdict(False, "Host %r, expected %r" % (self.headers.get("Host"), st.host), "policy")
        with st.lock:
            st.requests += 1
            st.by_method[self.command] += 1
            if region:
                st.by_region[region] += 1
            if verdict.ok:
                st.sig_valid += 1
                st.keys_used[verdict.access_key_id] += 1
            else:
                st.sig_invalid[verdict.kind] += 1
                if len(st.invalid_examples) < 20:
                    st.invalid_examples.append(
                        "%s %s %s: %s (%s)" % (
                            time.strftime("%H:%M:%S"), self.command, self.path[:80], verdict.reason,
                            verdict.access_key_id,
                        )
                    )
        if not verdict.ok:
            self.send_json(403, {"message": "soak upstream: " + verdict.reason, "kind": verdict.kind})
            return
        request_id = self.headers.get("x-amz-request-id")
        attempt = st.attempt_number(request_id)
        fault, delay = st.choose_fault(attempt)
        if fault == "close_without_response":
            with st.lock:
                st.faults[fault] += 1
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if fault == "truncated_response":
            with st.lock:
                st.faults[fault] += 1
            self.close_connection = True
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "512")
            self.end_headers()
            self.wfile.write(b'{"ok":true,"truncated":')
            self.wfile.flush()
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if fault is not None:
            status = int(fault.split("_")[1])
            with st.lock:
                st.faults[fault] += 1
            extra = [("Retry-After", "1")] if status == 429 else []
            self.send_json(status, {"message": "injected fault " + fault}, extra)
            return
        if delay:
            with st.lock:
                st.slow += 1
            time.sleep(delay)
        params: dict[str, list[str]] = {}
        if query:
            for piece in query.split("&"):
                name, _, value = piece.partition("=")
                params.setdefault(sigv4.percent_decode(name).decode("utf-8", "replace"), []).append(
                    sigv4.percent_decode(value).decode("utf-8", "replace")
                )
        with st.lock:
            st.ok_responses += 1
            if request_id:
                st.attempt_hist[attempt] += 1
        self.send_json(200, {
            "ok": True,
            "method": self.command,
            "path": path,
            "query": params,
            "marketplace": marketplace,
            "region": region,
            "bodySha256": hashlib.sha256(body).hexdigest(),
            "requestId": request_id,
            "attempt": attempt,
            "accessKeyId": verdict.access_key_id,
        })

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_any


class CredentialsHandler(Base):
    def do_GET(self):
        st = STATE
        if self.path.split("?")[0] != "/creds":
            self.send_json(404, {"message": "not found"})
            return
        if st.args.auth_token and self.headers.get("Authorization") != st.args.auth_token:
            with st.lock:
                st.cred_auth_failures += 1
            self.send_json(401, {"message": "bad authorization token"})
            return
        with st.lock:
            fail = st.rng.random() < st.args.cred_fault_rate
            if fail:
                st.cred_faults += 1
        if fail:
            self.send_json(500, {"message": "injected credential endpoint fault"})
            return
        key = st.current_key()
        expiry = dt.datetime.fromtimestamp(key.expiry, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.send_json(200, {
            "Code": "Success",
            "Type": "AWS-HMAC",
            "AccessKeyId": key.access_key_id,
            "SecretAccessKey": key.secret,
            "Token": key.token,
            "Expiration": expiry,
            "LastUpdated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        })


class ControlHandler(Base):
    def do_GET(self):
        if self.path == "/stats":
            self.send_json(200, STATE.snapshot())
        else:
            self.send_json(404, {"message": "not found"})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--ports-file", required=True)
    p.add_argument("--rotate-seconds", type=float, default=20)
    p.add_argument("--valid-seconds", type=float, default=30)
    p.add_argument("--fault-rate", type=float, default=0.04)
    p.add_argument("--slow-rate", type=float, default=0.01)
    p.add_argument("--slow-max", type=float, default=1.5)
    p.add_argument("--max-attempts", type=int, default=3)
    p.add_argument("--cred-fault-rate", type=float, default=0.0, help="share of credential fetches answered 500")
    p.add_argument("--auth-token", default="")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stats-file", default="")
    args = p.parse_args()
    if args.valid_seconds <= args.rotate_seconds:
        p.error("--valid-seconds must exceed --rotate-seconds (keys must overlap)")

    global STATE
    STATE = State(args)

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    upstream = TLSServer(("127.0.0.1", 0), UpstreamHandler, ctx)
    creds = QuietServer(("127.0.0.1", 0), CredentialsHandler)
    control = QuietServer(("127.0.0.1", 0), ControlHandler)
    STATE.host = "127.0.0.1:%d" % upstream.server_address[1]
    servers = [upstream, creds, control]
    for srv in servers:
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    ports = {
        "upstream": upstream.server_address[1],
        "credentials": creds.server_address[1],
        "control": control.server_address[1],
    }
    tmp = args.ports_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(ports, f)
    os.replace(tmp, args.ports_file)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    if args.stats_file:
        with open(args.stats_file, "w") as f:
            json.dump(STATE.snapshot(), f, indent=1)
    for srv in servers:
        srv.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
