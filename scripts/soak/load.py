"""Soak load driver: steady, paced load through the proxy over keep-alive connections and
one-shot clients, while sampling the proxy's memory and metrics. Standard library only.

Bounded in time and count: at most ``rate * duration`` requests, sent to 127.0.0.1 only, and
the run stops by itself at ``duration`` plus a grace period whatever happens.

Request ``i`` of the run is drawn from a generator seeded with ``(seed, i)``: a region and one
of its marketplaces, so the endpoints are interleaved on every connection. With
--phase-seconds P > 0 the regions take turns to be *sparse*, as for a sidecar whose app
serves mostly two regions' customers and now and then one of the third: during [kP, (k+1)P)
region k mod 3 (na, eu, fe) gets one request every --sparse-gap G seconds (at G, 2G, ... into
the phase) and the other two share the rest equally. G is longer than the pool idle timeout
the soak gives the proxy, so every sparse request finds no pooled connection to its region
while the busy regions hold theirs: it is the first request to its region after traffic to
the others, and needs a new connection. Sparse requests are counted apart. With P = 0 the
three regions are equally likely all the time.

Each request has a long LWA token in ``customerIdentifier`` (``|``, ``+``, ``/``, ``=``
percent-encoded) among unsorted query parameters (one in eleven also has repeated names, an
empty value, a space, UTF-8), and a client-chosen ``x-amz-request-id``; one in five is a POST
with a JSON body. With probability --stream-share the answer is streamed (half chunked, 16-512
KiB; half with a ``Content-Length`` of 260-768 KiB, over the proxy's 256 KiB buffering limit),
else it is a small buffered JSON echo. With probability --oneshot-share the request goes on a
connection of its own with ``Connection: close`` (a one-shot client); else on the worker's
keep-alive connection.

A 200 is only counted as answered when the upstream's echo matches what was sent (endpoint,
path, decoded query, body hash, marketplace, signing region, request id) and a streamed body
arrives whole (length and SHA-256 as the upstream announced, framing as the upstream sent it):
a signed-but-mangled or misrouted request is a failure too. An answered request whose first
attempt reached its endpoint more than --stall-limit seconds after the client sent it (from
the upstream's echo; both sides read the system-wide monotonic clock) is counted *stalled*:
nothing in the soak's configuration may hold a request back that long (no rate limit, no
connection limit), so a stall is the proxy waiting on something it should not.

``python3 load.py --wait-ready URL`` polls URL until it answers 200 (used before the run).
"""

from __future__ import annotations

import argparse
import base64
import collections
import hashlib
import http.client
import json
import os
import random
import re
import sys
import threading
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import layout  # noqa: E402

MIB = 1024 * 1024
KIB = 1024


def only_loopback(url: str) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(url)
    if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("refusing to send load to %r: only loopback targets are allowed" % parsed.hostname)
    return parsed.hostname, parsed.port or 80


def make_token(rng: random.Random) -> str:
    """An LWA-shaped access token: 'Atza|' + ~600 chars of base64 with + / = in it."""
    while True:
        raw = base64.b64encode(rng.randbytes(448)).decode() + "=="[: rng.randint(1, 2)]
        if "+" in raw and "/" in raw:
            return "Atza|IwEBI" + raw


def pct(text: str) -> str:
    """Percent-encodes everything but unreserved characters (the proxy re-canonicalises)."""
    return urllib.parse.quote(text, safe="")


class Request:
    __slots__ = ("method", "target", "body", "headers", "expect", "region", "kind", "oneshot", "filler", "sparse")


def regions_for(i: int, rate: float, phase_s: float, gap_s: float) -> tuple[tuple, bool]:
    """The regions request ``i`` may go to, and whether it is its phase's sparse request."""
    keys = layout.REGION_KEYS
    if phase_s <= 0:
        return keys, False
    per_phase = max(1, round(phase_s * rate))
    per_gap = max(1, round(gap_s * rate))
    phase, offset = divmod(i, per_phase)
    sparse = keys[phase % len(keys)]
    if offset > 0 and offset % per_gap == 0:
        return (sparse,), True
    return tuple(k for k in keys if k != sparse), False


def build_request(i: int, tokens: list, a) -> Request:
    """Request number ``i`` of the run (built when it is due, so memory stays flat)."""
    rng = random.Random(a.seed * 1_000_003 + i)
    candidates, sparse = regions_for(i, a.rate, a.phase_seconds, a.sparse_gap)
    region = rng.choice(candidates)
    mp = rng.choice(layout.REGIONS[region][2])
    token = tokens[i % len(tokens)]
    locale = rng.choice(["en_US", "de_DE", "ja_JP", "fr_FR"])
    params = [("customerIdentifier", token), ("requestedBy", "soak test"), ("locale", locale)]
    draw = rng.random()
    kind = "buffered" if draw >= a.stream_share else ("chunked" if draw < a.stream_share / 2 else "large")
    filler = 0
    if i % 5 == 4:
        method, path = "POST", "/v1/events"
        body = json.dumps({
            "eventType": "PRIME_SIGNUP",
            "marketplace": mp,
            "sequence": i,
            "attributes": {"note": "soak \u00fc \u2713", "pad": "x" * rng.randint(10, 2000)},
        }, ensure_ascii=False).encode()
        params.append(("clientToken", "c-%d" % i))
    else:
        method, path = "GET", rng.choice(["/v1/link/status", "/v1/benefits", "/v1/customers/status"])
        body = b""
    if kind == "chunked":
        filler = rng.randint(16 * KIB, 512 * KIB)
    elif kind == "large":
        filler = rng.randint(260 * KIB, 768 * KIB)
    if filler:
        path = "/v1/export/%s/%d" % (kind, filler)
    if i % 11 == 0:
        # Repeated names (ordered by value when canonical), a space, a tilde, UTF-8, '*'.
        params += [("tag", "z"), ("tag", "a b"), ("tag", "\u00fc~*"), ("empty", "")]
    rng.shuffle(params)
    query = "&".join("%s=%s" % (pct(k), pct(v)) for k, v in params)
    r = Request()
    r.method = method
    r.target = path + "?" + query
    r.body = body
    r.region = region
    r.kind = kind
    r.filler = filler
    r.oneshot = rng.random() < a.oneshot_share
    r.sparse = sparse
    # Marketplace spelled in a few ways: the proxy matches case-insensitively.
    spelled = mp if i % 7 else mp.lower()
    r.headers = {"x-amz-marketplace": spelled, "Accept": "application/json"}
    if body:
        r.headers["Content-Type"] = "application/json"
    if r.oneshot:
        r.headers["Connection"] = "close"
    want_query: dict = {}
    for k, v in params:
        want_query.setdefault(k, []).append(v)
    r.expect = (method, path, want_query, hashlib.sha256(body).hexdigest(), mp, layout.SIGNING_REGION[region])
    return r


def _tally() -> dict:
    return {"sent": 0, "answered": 0, "failed": collections.Counter(), "latencies": [], "dispatch": [], "stalled": 0}


class Results:
    def __init__(self):
        self.lock = threading.Lock()
        self.sent = 0
        self.answered = 0
        self.failed: collections.Counter = collections.Counter()
        self.failure_examples: list[str] = []
        self.latencies: list[float] = []
        self.by_region = {key: _tally() for key in layout.REGION_KEYS}
        self.by_kind = {k: _tally() for k in ("buffered", "chunked", "large")}
        self.by_client = {k: _tally() for k in ("keepalive", "oneshot")}
        self.by_phase = {k: _tally() for k in ("sparse", "busy")}
        self.max_lag = 0.0
        self.late = 0
        self.reconnects = 0
        self.streamed_bytes = 0
        self.stall_examples: list[str] = []
        self.upstream_attempts_seen: collections.Counter = collections.Counter()
        self.keys_seen: set = set()

    def tallies(self, req: Request):
        return (self.by_region[req.region], self.by_kind[req.kind], self.by_client["oneshot" if req.oneshot else "keepalive"],
                self.by_phase["sparse" if req.sparse else "busy"])

    def note_sent(self, req: Request):
        with self.lock:
            self.sent += 1
            for t in self.tallies(req):
                t["sent"] += 1

    def fail(self, req: Request, kind: str, detail: str):
        with self.lock:
            self.failed[kind] += 1
            for t in self.tallies(req):
                t["failed"][kind] += 1
            if len(self.failure_examples) < 25:
                self.failure_examples.append("%s %s %s/%s%s%s: %s" % (
                    time.strftime("%H:%M:%S"), kind, req.region, req.kind, " one-shot" if req.oneshot else "",
                    " sparse" if req.sparse else "", detail[:300]))

    def ok(self, req: Request, elapsed: float, dispatch: float, stalled: bool, payload: dict, streamed_bytes: int, detail: str):
        with self.lock:
            self.answered += 1
            self.latencies.append(elapsed)
            for t in self.tallies(req):
                t["answered"] += 1
                t["latencies"].append(elapsed)
                t["dispatch"].append(dispatch)
                t["stalled"] += stalled
            if stalled and len(self.stall_examples) < 25:
                self.stall_examples.append("%s %s/%s%s%s: %s" % (
                    time.strftime("%H:%M:%S"), req.region, req.kind, " one-shot" if req.oneshot else "",
                    " sparse" if req.sparse else "", detail))
            self.streamed_bytes += streamed_bytes
            self.upstream_attempts_seen[payload.get("attempt")] += 1
            self.keys_seen.add(payload.get("accessKeyId"))


def check_echo(req: Request, request_id: str, payload: dict):
    method, path, query, body_hash, mp, signing_region = req.expect
    problems = []
    if payload.get("endpoint") != req.region:
        problems.append("answered by the %s endpoint, not %s" % (payload.get("endpoint"), req.region))
    if payload.get("method") != method:
        problems.append("method")
    if payload.get("path") != path:
        problems.append("path")
    # The canonical query orders repeated names by value: compare values as multisets.
    got = payload.get("query")
    if not isinstance(got, dict) or {k: sorted(v) for k, v in got.items()} != {k: sorted(v) for k, v in query.items()}:
        problems.append("query (sent %r, upstream decoded %r)" % (query, got))
    if payload.get("bodySha256") != body_hash:
        problems.append("body")
    if payload.get("marketplace") != mp:
        problems.append("marketplace")
    if payload.get("region") != signing_region:
        problems.append("region")
    if payload.get("requestId") != request_id:
        problems.append("request id")
    return problems


def check_streamed(req: Request, data: bytes, resp) -> tuple[dict | None, list]:
    """The echo line of a streamed answer, and what is wrong with the body and framing."""
    line, sep, rest = data.partition(b"\n")
    try:
        payload = json.loads(line)
    except ValueError:
        return None, ["no JSON echo line (%d bytes)" % len(data)]
    problems = []
    if not sep or payload.get("fillerBytes") != req.filler or len(rest) != req.filler:
        problems.append("streamed body: %d filler bytes, asked %d, announced %r" % (len(rest), req.filler, payload.get("fillerBytes")))
    elif hashlib.sha256(rest).hexdigest() != payload.get("fillerSha256"):
        problems.append("streamed body: SHA-256 differs from the upstream's")
    length = resp.getheader("Content-Length")
    chunked = "chunked" in (resp.getheader("Transfer-Encoding") or "").lower()
    if req.kind == "large" and (length != str(len(data)) or chunked):
        problems.append("framing: upstream sent Content-Length %d, client got Content-Length %r, chunked %s" % (len(data), length, chunked))
    if req.kind == "chunked" and (length is not None or not chunked):
        problems.append("framing: upstream sent chunked, client got Content-Length %r, chunked %s" % (length, chunked))
    return payload, problems


def exchange(conn: http.client.HTTPConnection, req: Request, headers: dict):
    conn.request(req.method, req.target, body=req.body or None, headers=headers)
    resp = conn.getresponse()
    return resp, resp.read()


def worker(wid: int, host: str, port: int, total: int, tokens: list, a, nxt, t0: float, hard_stop: float,
           res: Results, run_tag: str):
    conn = None  # this worker's keep-alive connection
    while True:
        with nxt["lock"]:
            i = nxt["i"]
            if i >= total:
                break
            nxt["i"] = i + 1
        due = t0 + i / a.rate
        now = time.monotonic()
        if now >= hard_stop:
            break
        if due > now:
            time.sleep(due - now)
        else:
            lag = now - due
            with res.lock:
                res.max_lag = max(res.max_lag, lag)
                if lag > 1.0:
                    res.late += 1
        req = build_request(i, tokens, a)
        rid = "soak-%s-%07d" % (run_tag, i)
        headers = dict(req.headers)
        headers["x-amz-request-id"] = rid
        if req.body:
            headers["Content-Length"] = str(len(req.body))
        res.note_sent(req)
        started = time.monotonic()
        try:
            if req.oneshot:
                one = http.client.HTTPConnection(host, port, timeout=a.timeout)
                try:
                    resp, data = exchange(one, req, headers)
                finally:
                    one.close()
            else:
                if conn is None:
                    conn = http.client.HTTPConnection(host, port, timeout=a.timeout)
                resp, data = exchange(conn, req, headers)
                if resp.will_close:
                    conn.close()
                    conn = None
                    with res.lock:
                        res.reconnects += 1
        except (OSError, http.client.HTTPException) as e:
            if conn is not None and not req.oneshot:
                conn.close()
                conn = None
                with res.lock:
                    res.reconnects += 1
            res.fail(req, "client_error:" + type(e).__name__, "%s %s after %.1fs: %s" % (
                req.method, rid, time.monotonic() - started, e))
            continue
        elapsed = time.monotonic() - started
        status = resp.status
        if not 200 <= status < 300:
            kind = "status_%d" % status
            try:
                err = json.loads(data)
                if isinstance(err, dict) and "error" in err:
                    kind += ":" + str(err["error"])
                elif isinstance(err, dict) and err.get("kind") == "region_mismatch":
                    kind += ":region_mismatch"
            except ValueError:
                pass
            res.fail(req, kind, "%s %s %s after %.1fs -> %d %s" % (
                req.method, req.target[:40], rid, elapsed, status, data[:200]))
            continue
        if req.kind == "buffered":
            problems = []
            try:
                payload = json.loads(data)
            except ValueError:
                payload = None
                problems.append("not JSON: %r" % data[:100])
        else:
            payload, problems = check_streamed(req, data, resp)
        if payload is not None:
            problems += check_echo(req, rid, payload)
        if resp.getheader("x-amz-request-id") != rid:
            problems.append("response x-amz-request-id %r" % resp.getheader("x-amz-request-id"))
        if problems:
            res.fail(req, "echo_mismatch", "%s: %s" % (rid, ", ".join(problems)))
            continue
        # How long the proxy held the request before its first attempt reached the endpoint.
        dispatch = payload.get("firstAttemptAt", started) - started
        stalled = dispatch > a.stall_limit
        res.ok(req, elapsed, dispatch, stalled, payload, req.filler,
               "%s %s first attempt reached the endpoint after %.2fs, answered after %.2fs (attempt %s)" % (
                   req.method, rid, dispatch, elapsed, payload.get("attempt")))
    if conn is not None:
        conn.close()


def read_proc_status(pid: int) -> dict:
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:", "Threads:")):
                    name, value = line.split(":", 1)
                    out[name] = int(value.split()[0])  # kB for Vm*, count for Threads
    except OSError:
        pass
    try:
        out["fds"] = len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        pass
    return out


METRIC_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def scrape(url: str) -> dict:
    """Prometheus text -> {name{labels}: value}."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    except OSError as e:
        return {"_error": str(e)}
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = METRIC_RE.match(line)
        if m:
            try:
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
            except ValueError:
                pass
    return out


def series(metrics: dict, name: str, combine):
    """``combine`` (min, sum) of every series called ``name``, labelled or not; None if none."""
    values = [v for k, v in metrics.items() if k == name or k.startswith(name + "{")]
    return combine(values) if values else None


def sampler(pid: int, metrics_url: str, t0: float, interval: float, stop: threading.Event, samples: list,
            res: Results):
    seen = 0
    while True:
        s = read_proc_status(pid)
        m = scrape(metrics_url)
        with res.lock:
            sent, answered, failed = res.sent, res.answered, sum(res.failed.values())
            recent = sorted(res.latencies[seen:])
            seen = len(res.latencies)
        samples.append({
            "t": round(time.monotonic() - t0, 1),
            "rss_kb": s.get("VmRSS"),
            "hwm_kb": s.get("VmHWM"),
            "threads": s.get("Threads"),
            "fds": s.get("fds"),
            # min / sum over the series, whether or not they carry a region label.
            "budget_tokens": series(m, "prime_proxy_retry_budget_tokens", min),
            "credentials_expiry_s": series(m, "prime_proxy_credentials_expiry_seconds", min),
            "in_flight": series(m, "prime_proxy_in_flight_requests", sum),
            "upstream_connections": series(m, "prime_proxy_upstream_connections", sum),
            "sent": sent,
            "answered": answered,
            "failed": failed,
            "p50_ms": round(percentile(recent, 0.5) * 1000, 1) if recent else None,
            "p99_ms": round(percentile(recent, 0.99) * 1000, 1) if recent else None,
        })
        last = samples[-1]
        print("  t=%5.0fs rss=%6.1f MiB threads=%s fds=%s upstream_conns=%s sent=%d answered=%d failed=%d p50/p99=%s/%s ms budget=%s cred_ttl=%s" % (
            last["t"], (last["rss_kb"] or 0) / 1024, last["threads"], last["fds"],
            "%.0f" % last["upstream_connections"] if last["upstream_connections"] is not None else "?",
            sent, answered, failed, last["p50_ms"], last["p99_ms"],
            "%.0f" % last["budget_tokens"] if last["budget_tokens"] is not None else "?",
            "%.0fs" % last["credentials_expiry_s"] if last["credentials_expiry_s"] is not None else "?",
        ), flush=True)
        if stop.wait(interval):
            return


def wait_ready(url: str, timeout: float) -> int:
    only_loopback(url)
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return 0
        except OSError as e:
            last = str(e)
        time.sleep(0.2)
    print("not ready after %.0fs: %s" % (timeout, last), file=sys.stderr)
    return 1


def percentile(sorted_values: list, q: float):
    if not sorted_values:
        return None
    idx = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[idx]


def latency_summary(ls: list) -> dict:
    return {
        "p50": round(percentile(ls, 0.50) * 1000, 1) if ls else None,
        "p99": round(percentile(ls, 0.99) * 1000, 1) if ls else None,
        "p999": round(percentile(ls, 0.999) * 1000, 1) if ls else None,
        "max": round(ls[-1] * 1000, 1) if ls else None,
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--wait-ready")
    p.add_argument("--wait-timeout", type=float, default=30)
    p.add_argument("--proxy")
    p.add_argument("--admin")
    p.add_argument("--stats-url")
    p.add_argument("--pid", type=int)
    p.add_argument("--duration", type=float, default=300)
    p.add_argument("--rate", type=float, default=200)
    p.add_argument("--connections", type=int, default=16, help="client threads, each with a keep-alive connection")
    p.add_argument("--stream-share", type=float, default=0.06, help="share of requests with a streamed answer")
    p.add_argument("--oneshot-share", type=float, default=0.1, help="share of requests on a connection of their own")
    p.add_argument("--phase-seconds", type=float, default=12, help="each region in turn is sparse this long (0: never)")
    p.add_argument("--sparse-gap", type=float, default=3, help="seconds between a sparse region's requests")
    p.add_argument("--stall-limit", type=float, default=2.0,
                   help="a request whose first attempt reaches its endpoint later than this after it was sent is stalled")
    p.add_argument("--warmup", type=float, default=10)
    p.add_argument("--sample-interval", type=float, default=10)
    p.add_argument("--timeout", type=float, default=40, help="client socket timeout (> proxy total timeout)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=False)
    a = p.parse_args()
    if a.wait_ready:
        return wait_ready(a.wait_ready, a.wait_timeout)
    for url in (a.proxy, a.admin, a.stats_url):
        only_loopback(url)
    if a.rate <= 0 or a.duration <= 0 or a.connections <= 0:
        p.error("rate, duration and connections must be positive")
    if not (0 <= a.stream_share <= 1 and 0 <= a.oneshot_share <= 1):
        p.error("--stream-share and --oneshot-share are shares between 0 and 1")
    if a.phase_seconds > 0 and not 0 < a.sparse_gap < a.phase_seconds:
        p.error("--sparse-gap must be positive and shorter than --phase-seconds")

    host, port = only_loopback(a.proxy)
    rng = random.Random(a.seed)
    total = int(a.rate * a.duration)
    tokens = [make_token(rng) for _ in range(64)]
    res = Results()
    samples: list = []
    metrics_url = a.admin.rstrip("/") + "/metrics"
    metrics_before = scrape(metrics_url)
    stop = threading.Event()
    run_tag = "%x" % (int(time.time()) & 0xFFFFFF)

    t0 = time.monotonic()
    wall0 = time.time()
    hard_stop = t0 + a.duration + 60
    nxt = {"i": 0, "lock": threading.Lock()}
    print("load: %d requests at %.0f/s for %.0fs from %d client threads to %s (%.0f%% one-shot, %.0f%% streamed, %s)" % (
        total, a.rate, a.duration, a.connections, a.proxy, 100 * a.oneshot_share, 100 * a.stream_share,
        "each region in turn sparse for %gs, a request every %gs" % (a.phase_seconds, a.sparse_gap)
        if a.phase_seconds > 0 else "no sparse phases"), flush=True)
    samp = threading.Thread(target=sampler, args=(a.pid, metrics_url, t0, a.sample_interval, stop, samples, res),
                            daemon=True)
    samp.start()
    workers = [
        threading.Thread(target=worker, args=(w, host, port, total, tokens, a, nxt, t0, hard_stop, res, run_tag),
                         daemon=True)
        for w in range(a.connections)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(max(0.0, hard_stop + a.timeout + 5 - time.monotonic()))
    load_seconds = time.monotonic() - t0
    stopped_by_deadline = any(w.is_alive() for w in workers) or nxt["i"] < total
    stop.set()
    samp.join()
    end_sample = read_proc_status(a.pid)
    end_sample_t = round(time.monotonic() - t0, 1)
    metrics_after = scrape(metrics_url)
    try:
        with urllib.request.urlopen(a.stats_url, timeout=5) as r:
            upstream_stats = json.load(r)
    except OSError as e:
        upstream_stats = {"_error": str(e)}

    lat = sorted(res.latencies)

    def summary(t: dict) -> dict:
        ls = sorted(t["latencies"])
        return {
            "sent": t["sent"],
            "answered": t["answered"],
            "failed": sum(t["failed"].values()),
            "failed_by_kind": dict(t["failed"]),
            "latency_ms": latency_summary(ls),
            "dispatch_ms": latency_summary(sorted(t["dispatch"])),
            "stalled": t["stalled"],
        }

    result = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall0)),
        "config": {"duration_s": a.duration, "rate": a.rate, "connections": a.connections,
                   "stream_share": a.stream_share, "oneshot_share": a.oneshot_share,
                   "phase_seconds": a.phase_seconds, "sparse_gap_s": a.sparse_gap, "stall_limit_s": a.stall_limit,
                   "warmup_s": a.warmup, "sample_interval_s": a.sample_interval},
        "load_seconds": round(load_seconds, 1),
        "planned": total,
        "sent": res.sent,
        "answered": res.answered,
        "failed": sum(res.failed.values()),
        "failed_by_kind": dict(res.failed),
        "failure_examples": res.failure_examples,
        "stalled": sum(t["stalled"] for t in res.by_region.values()),
        "stall_examples": res.stall_examples,
        "stopped_by_deadline": stopped_by_deadline,
        "achieved_rate": round(res.sent / load_seconds, 1) if load_seconds else 0,
        "max_schedule_lag_s": round(res.max_lag, 3),
        "requests_over_1s_late": res.late,
        "client_reconnects": res.reconnects,
        "latency_ms": latency_summary(lat),
        "by_region": {k: summary(t) for k, t in res.by_region.items()},
        "by_kind": {k: summary(t) for k, t in res.by_kind.items()},
        "by_client": {k: summary(t) for k, t in res.by_client.items()},
        "by_phase": {k: summary(t) for k, t in res.by_phase.items()},
        "streamed_bytes": res.streamed_bytes,
        "answered_by_upstream_attempt": {str(k): v for k, v in sorted(res.upstream_attempts_seen.items(), key=str)},
        "access_keys_in_answers": len(res.keys_seen - {None}),
        "samples": samples,
        "end_sample": {"t": end_sample_t, "rss_kb": end_sample.get("VmRSS"), "hwm_kb": end_sample.get("VmHWM"),
                       "threads": end_sample.get("Threads"), "fds": end_sample.get("fds")},
        "metrics_before": metrics_before,
        "metrics_after": metrics_after,
        "upstream": upstream_stats,
    }
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    print("load: done in %.1fs: sent %d, answered %d, failed %d" % (
        load_seconds, res.sent, res.answered, result["failed"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
