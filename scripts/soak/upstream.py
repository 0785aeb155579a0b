"""Fake Prime for the soak test: three fault-injecting TLS endpoints, one per Prime region on
its own loopback address, that verify every SigV4 signature they receive, plus the rotating
container-credentials endpoint the proxy's AWS credential chain reads its keys from. Standard
library only.

One process (so that every endpoint knows every key the credential endpoint has issued),
listeners with ports from --port-range, written to --ports-file:

* ``upstream`` (HTTPS, HTTP/1.1 keep-alive): one listener per region of ``layout.REGIONS``,
  ``na`` on 127.0.0.1, ``eu`` on 127.0.0.2, ``fe`` on 127.0.0.3, all on the same port, each
  with its own certificate (--cert-dir/REGION.pem, SAN = its address). Every request is
  checked by ``sigv4.verify`` against the keys the credential endpoint has issued, and against
  the endpoint it arrived at: its ``x-amz-marketplace`` must belong to this endpoint's region,
  its credential scope must name this endpoint's signing region and its ``Host`` this
  endpoint's authority (else a *region mismatch*). A bad signature or a mismatch gets 403 and
  is counted. A valid request gets, with probability --fault-rate, an injected fault (503,
  500/502/504, 429 with ``Retry-After: 1``, the connection closed or reset without an answer,
  or a 200 whose body is cut short by closing the connection) - but only on attempts before
  the proxy's last one (attempts are counted per ``x-amz-request-id``, which the proxy keeps
  across retries), so every request can still be answered within ``max_attempts``. With
  probability --slow-rate a response is delayed (well under the proxy's attempt timeout).
  Otherwise 200 with a JSON echo of what arrived (with the ``time.monotonic()`` at which the
  request id's first attempt arrived, so the client can tell how long the proxy held it). Paths ``/v1/export/chunked/N`` and
  ``/v1/export/large/N`` get a streamed answer instead: the echo as the first line, then N
  bytes of filler (whose length and SHA-256 the echo gives), sent chunked or with a
  ``Content-Length`` over the proxy's 256 KiB buffering limit. The proxy streams those to the
  client once the head is in, so a body cut short could not be retried: streamed answers get
  a reset before the head instead.
* ``credentials`` (HTTP, 127.0.0.1): ``GET /creds`` answers the container-credentials JSON.
  A new key is issued every --rotate-seconds and each is valid for --valid-seconds from its
  issue; with probability --cred-fault-rate a fetch gets 500 instead.
* ``control`` (HTTP, 127.0.0.1): ``GET /stats`` returns the counters as JSON.
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
import re
import secrets
import signal
import socket
import ssl
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import layout  # noqa: E402
import sigv4  # noqa: E402

# The injected fault kinds and their share of --fault-rate.
FAULT_MIX = [
    ("status_503", 0.45),
    ("status_500", 0.05),
    ("status_502", 0.05),
    ("status_504", 0.05),
    ("status_429", 0.10),
    ("close_without_response", 0.12),
    ("reset_without_response", 0.08),
    ("truncated_response", 0.10),  # buffered answers only; a streamed one gets a reset instead
]

STREAM_PATH = re.compile(r"^/v1/export/(chunked|large)/(\d{1,8})$")
FILLER = random.Random(7).randbytes(2 * 1024 * 1024)  # streamed answers are slices of it
MAX_FILLER = len(FILLER) // 2
CHUNK = 16 * 1024
_CREDENTIAL_RE = re.compile(r"Credential=[^/,\s]+/\d{8}/([^/,\s]+)/")


def _region_counters() -> dict:
    return {
        "requests": 0,
        "by_method": collections.Counter(),
        "signatures_valid": 0,
        "signatures_invalid": collections.Counter(),
        "mismatch": collections.Counter(),
        "faults": collections.Counter(),
        "slow": 0,
        "ok": collections.Counter(),  # by answer kind: buffered / chunked / large
        "connections": 0,
        "open_connections": 0,
        "peak_open_connections": 0,
    }


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.start = time.time()
        self.rng = random.Random(args.seed)
        self.keys: dict[str, sigv4.Key] = {}
        self.key_by_epoch: dict[int, sigv4.Key] = {}
        self.cred_fetches = 0
        self.cred_fetch_times: list[float] = []
        self.cred_auth_failures = 0
        self.cred_faults = 0
        self.region = {key: _region_counters() for key in layout.REGION_KEYS}
        self.invalid_examples: list[str] = []
        self.mismatch_examples: list[str] = []
        self.keys_used: collections.Counter = collections.Counter()
        # request id -> [attempts seen, monotonic arrival of the first]
        self.attempts: "collections.OrderedDict[str, list]" = collections.OrderedDict()
        self.attempt_hist: collections.Counter = collections.Counter()
        self.fault_suppressed_last_attempt = 0
        self.no_request_id = 0
        self.connection_errors: collections.Counter = collections.Counter()
        self.host: dict[str, str] = {}  # region key -> expected Host header

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
            self.cred_fetches += 1
            self.cred_fetch_times.append(round(now - self.start, 3))
        return key

    def lookup(self, akid: str):
        with self.lock:
            return self.keys.get(akid)

    # -- faults ------------------------------------------------------------------------
    def attempt_number(self, request_id, arrived: float):
        """This attempt's number for its request id, and when the id's first attempt arrived."""
        with self.lock:
            if not request_id:
                self.no_request_id += 1
                return 1, arrived
            seen = self.attempts.get(request_id)
            if seen is None:
                seen = self.attempts[request_id] = [0, arrived]
            seen[0] += 1
            self.attempts.move_to_end(request_id)
            while len(self.attempts) > 200_000:
                self.attempts.popitem(last=False)
            return seen[0], seen[1]

    def choose_fault(self, attempt: int, streamed: bool):
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
            kind = FAULT_MIX[-1][0]
            for name, share in FAULT_MIX:
                acc += share
                if pick < acc:
                    kind = name
                    break
            if streamed and kind == "truncated_response":
                kind = "reset_without_response"
            return kind, 0.0

    def snapshot(self) -> dict:
        with self.lock:
            now = time.time()
            regions = {}
            for key, c in self.region.items():
                regions[key] = {
                    "address": layout.ADDRESS[key],
                    "signing_region": layout.SIGNING_REGION[key],
                    "host": self.host.get(key),
                    "requests": c["requests"],
                    "by_method": dict(c["by_method"]),
                    "signatures_valid": c["signatures_valid"],
                    "signatures_invalid": sum(c["signatures_invalid"].values()),
                    "signatures_invalid_by_kind": dict(c["signatures_invalid"]),
                    "mismatch": sum(c["mismatch"].values()),
                    "mismatch_by_kind": dict(c["mismatch"]),
                    "faults": dict(c["faults"]),
                    "faults_total": sum(c["faults"].values()),
                    "slow_responses": c["slow"],
                    "ok_responses": dict(c["ok"]),
                    "connections": c["connections"],
                    "open_connections": c["open_connections"],
                    "peak_open_connections": c["peak_open_connections"],
                }

            def total(name):
                return sum(r[name] for r in regions.values())

            faults: collections.Counter = collections.Counter()
            for r in regions.values():
                faults.update(r["faults"])
            return {
                "uptime_s": round(now - self.start, 3),
                "regions": regions,
                "requests": total("requests"),
                "signatures_valid": total("signatures_valid"),
                "signatures_invalid": total("signatures_invalid"),
                "mismatch": total("mismatch"),
                "invalid_examples": list(self.invalid_examples),
                "mismatch_examples": list(self.mismatch_examples),
                "faults": dict(faults),
                "faults_total": sum(faults.values()),
                "faults_suppressed_on_last_attempt": self.fault_suppressed_last_attempt,
                "slow_responses": total("slow_responses"),
                "attempts_per_request_id": {str(k): v for k, v in sorted(self.attempt_hist.items())},
                "requests_without_request_id": self.no_request_id,
                "keys_issued": len(self.keys),
                "keys_used": len(self.keys_used),
                "signatures_by_key": dict(self.keys_used),
                "credential_fetches": self.cred_fetches,
                "credential_fetch_times_s": list(self.cred_fetch_times),
                "credential_auth_failures": self.cred_auth_failures,
                "credential_faults": self.cred_faults,
                "upstream_connections": total("connections"),
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

    def __init__(self, sock: socket.socket, handler):
        # The socket comes bound (layout.bind_first_free picked its port): only listen here.
        super().__init__(sock.getsockname(), handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_address = sock.getsockname()
        self.server_activate()

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        with STATE.lock:
            STATE.connection_errors[type(exc).__name__] += 1


class TLSServer(QuietServer):
    """One region's endpoint. Accepts in the server thread, does the TLS handshake in the
    connection's thread."""

    def __init__(self, sock, handler, context: ssl.SSLContext, region: str):
        super().__init__(sock, handler)
        self.context = context
        self.region = region

    def get_request(self):
        sock, addr = self.socket.accept()
        # Like any real server: without it, the head and body writes meet delayed ACKs (40 ms).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with STATE.lock:
            c = STATE.region[self.region]
            c["connections"] += 1
            c["open_connections"] += 1
            c["peak_open_connections"] = max(c["peak_open_connections"], c["open_connections"])
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def shutdown_request(self, request):
        with STATE.lock:
            STATE.region[self.region]["open_connections"] -= 1
        if getattr(request, "soak_reset", False):
            # SO_LINGER 0 is set: close() alone sends the RST (a shutdown would send a FIN first).
            request.close()
            return
        super().shutdown_request(request)


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


def _example(kind: str, command: str, path: str, reason: str, akid) -> str:
    return "%s %s %s %s: %s (%s)" % (time.strftime("%H:%M:%S"), kind, command, path[:80], reason, akid)


class UpstreamHandler(Base):
    def mismatches(self, marketplace: str) -> list[tuple[str, str]]:
        """Ways this request is not for this endpoint (empty when it is)."""
        here = self.server.region
        out = []
        belongs = layout.REGION_OF_MARKETPLACE.get(marketplace)
        if belongs is None:
            out.append(("unknown_marketplace", "marketplace %r is in no region" % marketplace))
        elif belongs != here:
            out.append(("wrong_endpoint", "marketplace %s (region %s) arrived at the %s endpoint" % (marketplace, belongs, here)))
        m = _CREDENTIAL_RE.search(self.headers.get("Authorization") or "")
        scope_region = m.group(1) if m else None
        if scope_region is not None and scope_region != layout.SIGNING_REGION[here]:
            out.append(("wrong_signing_region", "signed for %s at the %s endpoint (%s)" % (
                scope_region, here, layout.SIGNING_REGION[here])))
        if self.headers.get("Host") != STATE.host[here]:
            out.append(("wrong_host", "Host %r at %s" % (self.headers.get("Host"), STATE.host[here])))
        return out

    def handle_any(self):
        # CLOCK_MONOTONIC is system-wide: the load driver compares it with its own send time.
        arrived = time.monotonic()
        st = STATE
        here = self.server.region
        try:
            body = self.read_body()
        except ValueError as e:
            self.close_connection = True
            with st.lock:
                st.region[here]["requests"] += 1
                st.region[here]["signatures_invalid"]["malformed"] += 1
            self.send_json(400, {"message": str(e)}, [("Connection", "close")])
            return
        path, _, query = self.path.partition("?")
        headers = list(self.headers.items())
        marketplace = (self.headers.get("x-amz-marketplace") or "").strip().upper()
        # The signature on its own terms (whatever region it names); the region is checked
        # against this endpoint separately, so a misrouted request counts as a mismatch.
        verdict = sigv4.verify(self.command, path, query, headers, body, st.lookup, "execute-api",
                               region=None, now=time.time())
        wrong = self.mismatches(marketplace)
        with st.lock:
            c = st.region[here]
            c["requests"] += 1
            c["by_method"][self.command] += 1
            if verdict.ok:
                c["signatures_valid"] += 1
                st.keys_used[verdict.access_key_id] += 1
            else:
                c["signatures_invalid"][verdict.kind] += 1
                if len(st.invalid_examples) < 20:
                    st.invalid_examples.append(_example(here, self.command, self.path, verdict.reason, verdict.access_key_id))
            for kind, reason in wrong:
                c["mismatch"][kind] += 1
                if len(st.mismatch_examples) < 20:
                    st.mismatch_examples.append(_example(here, self.command, self.path, reason, verdict.access_key_id))
        if not verdict.ok or wrong:
            reasons = ([verdict.reason] if not verdict.ok else []) + [r for _, r in wrong]
            self.send_json(403, {"message": "soak upstream: " + "; ".join(reasons),
                                 "kind": verdict.kind if not verdict.ok else "region_mismatch"})
            return
        stream = STREAM_PATH.match(path)
        request_id = self.headers.get("x-amz-request-id")
        attempt, first_arrived = st.attempt_number(request_id, arrived)
        fault, delay = st.choose_fault(attempt, streamed=stream is not None)
        if fault is not None:
            with st.lock:
                st.region[here]["faults"][fault] += 1
            self.inject(fault)
            return
        if delay:
            with st.lock:
                st.region[here]["slow"] += 1
            time.sleep(delay)
        params: dict[str, list[str]] = {}
        if query:
            for piece in query.split("&"):
                name, _, value = piece.partition("=")
                params.setdefault(sigv4.percent_decode(name).decode("utf-8", "replace"), []).append(
                    sigv4.percent_decode(value).decode("utf-8", "replace")
                )
        echo = {
            "ok": True,
            "endpoint": here,
            "method": self.command,
            "path": path,
            "query": params,
            "marketplace": marketplace,
            "region": layout.SIGNING_REGION[here],
            "bodySha256": hashlib.sha256(body).hexdigest(),
            "requestId": request_id,
            "attempt": attempt,
            "firstAttemptAt": first_arrived,
            "accessKeyId": verdict.access_key_id,
        }
        kind = stream.group(1) if stream else "buffered"
        with st.lock:
            st.region[here]["ok"][kind] += 1
            if request_id:
                st.attempt_hist[attempt] += 1
        if stream is None:
            self.send_json(200, echo)
        else:
            self.send_streamed(echo, kind, min(int(stream.group(2)), MAX_FILLER), request_id or "")

    def inject(self, fault: str):
        if fault.startswith("status_"):
            status = int(fault.split("_")[1])
            extra = [("Retry-After", "1")] if status == 429 else []
            self.send_json(status, {"message": "injected fault " + fault}, extra)
            return
        self.close_connection = True
        if fault == "close_without_response":
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        elif fault == "reset_without_response":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.soak_reset = True  # TLSServer.shutdown_request closes it: RST
        elif fault == "truncated_response":
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

    def send_streamed(self, echo: dict, kind: str, size: int, request_id: str):
        offset = int(hashlib.sha256(request_id.encode()).hexdigest()[:8], 16) % MAX_FILLER
        filler = memoryview(FILLER)[offset:offset + size]
        echo["fillerBytes"] = size
        echo["fillerSha256"] = hashlib.sha256(filler).hexdigest()
        first = _json_bytes(echo) + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if kind == "large":
            self.send_header("Content-Length", str(len(first) + size))
            self.end_headers()
            self.wfile.write(first)
            for at in range(0, size, CHUNK):
                self.wfile.write(filler[at:at + CHUNK])
        else:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in [first] + [filler[at:at + CHUNK] for at in range(0, size, CHUNK)]:
                self.wfile.write(b"%x\r\n" % len(piece) + bytes(piece) + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")

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
    p.add_argument("--cert-dir", required=True, help="holds REGION.pem and REGION.key for each region key")
    p.add_argument("--ports-file", required=True)
    p.add_argument("--port-range", default="17000-17999")
    p.add_argument("--rotate-seconds", type=float, default=20)
    p.add_argument("--valid-seconds", type=float, default=30)
    p.add_argument("--fault-rate", type=float, default=0.05)
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
    lo, hi = layout.parse_range(args.port_range)

    global STATE
    STATE = State(args)

    # The same port on the three addresses, as Prime's three hosts all answer on 443.
    port, socks = layout.bind_first_free([layout.ADDRESS[k] for k in layout.REGION_KEYS], lo, hi)
    servers = []
    for key, sock in zip(layout.REGION_KEYS, socks):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(args.cert_dir, key + ".pem"), os.path.join(args.cert_dir, key + ".key"))
        servers.append(TLSServer(sock, UpstreamHandler, ctx, key))
        STATE.host[key] = "%s:%d" % (layout.ADDRESS[key], port)
    creds_port, (creds_sock,) = layout.bind_first_free(["127.0.0.1"], lo, hi, {port})
    creds = QuietServer(creds_sock, CredentialsHandler)
    control_port, (control_sock,) = layout.bind_first_free(["127.0.0.1"], lo, hi, {port, creds_port})
    control = QuietServer(control_sock, ControlHandler)
    servers += [creds, control]
    for srv in servers:
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    ports = {
        "upstream": port,
        "endpoints": {key: "https://%s" % STATE.host[key] for key in layout.REGION_KEYS},
        "credentials": creds_port,
        "control": control_port,
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
