"""Soak load driver: steady, paced load through the proxy over a few keep-alive connections,
while sampling the proxy's memory and metrics. Standard library only.

Bounded in time and count: at most ``rate * duration`` requests, sent to 127.0.0.1 only, and
the run stops by itself at ``duration`` plus a grace period whatever happens.

Each request goes to one of the 17 marketplaces in turn, carries a long LWA token in
``customerIdentifier`` (``|``, ``+``, ``/``, ``=`` percent-encoded) among unsorted query
parameters (one in eleven also has repeated names, an empty value, a space, UTF-8), and a client-chosen ``x-amz-request-id``; one in five is a POST with a JSON body.
A 200 is only counted as answered when the upstream's echo matches what was sent (path,
decoded query, body hash, marketplace, region, request id): a signed-but-mangled request is
a failure too.

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
import socket
import sys
import threading
import time
import urllib.parse
import urllib.request

MARKETPLACES = ["US", "CA", "MX", "UK", "FR", "IT", "ES", "IN", "AE", "SA", "EG", "NL", "DE", "TR", "JP", "SG", "AU"]
REGION_OF = {m: "us-east-1" for m in MARKETPLACES[:3]}
REGION_OF.update({m: "eu-west-1" for m in MARKETPLACES[3:14]})
REGION_OF.update({m: "us-west-2" for m in MARKETPLACES[14:]})
MIB = 1024 * 1024


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
    __slots__ = ("method", "target", "body", "headers", "expect")


def build_request(i: int, tokens: list, seed: int) -> Request:
    """Request number ``i`` of the run (built when it is due, so memory stays flat)."""
    rng = random.Random(seed * 1_000_003 + i)
    mp = MARKETPLACES[i % len(MARKETPLACES)]
    token = tokens[i % len(tokens)]
    locale = rng.choice(["en_US", "de_DE", "ja_JP", "fr_FR"])
    params = [("customerIdentifier", token), ("requestedBy", "soak test"), ("locale", locale)]
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
    if i % 11 == 0:
        # Repeated names (ordered by value when canonical), a space, a tilde, UTF-8, '*'.
        params += [("tag", "z"), ("tag", "a b"), ("tag", "\u00fc~*"), ("empty", "")]
    rng.shuffle(params)
    query = "&".join("%s=%s" % (pct(k), pct(v)) for k, v in params)
    r = Request()
    r.method = method
    r.target = path + "?" + query
    r.body = body
    # Marketplace spelled in a few ways: the proxy matches case-insensitively.
    spelled = mp if i % 7 else mp.lower()
    r.headers = {"x-amz-marketplace": spelled, "Accept": "application/json"}
    if body:
        r.headers["Content-Type"] = "application/json"
    want_query: dict = {}
    for k, v in params:
        want_query.setdefault(k, []).append(v)
    r.expect = (method, path, want_query, hashlib.sha256(body).hexdigest(), mp, REGION_OF[mp])
    return r


class Results:
    def __init__(self):
        self.lock = threading.Lock()
        self.sent = 0
        self.answered = 0
        self.failed: collections.Counter = collections.Counter()
        self.failure_examples: list[str] = []
        self.latencies: list[float] = []
        self.max_lag = 0.0
        self.late = 0
        self.reconnects = 0
        self.upstream_attempts_seen: collections.Counter = collections.Counter()
        self.keys_seen: set = set()

    def fail(self, kind: str, detail: str):
        with self.lock:
            self.failed[kind] += 1
            if len(self.failure_examples) < 25:
                self.failure_examples.append("%s %s: %s" % (time.strftime("%H:%M:%S"), kind, detail[:300]))


def check_echo(req: Request, request_id: str, payload: dict):
    method, path, query, body_hash, mp, region = req.expect
    problems = []
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
    if payload.get("region") != region:
        problems.append("region")
    if payload.get("requestId") != request_id:
        problems.append("request id")
    return problems


def worker(wid: int, host: str, port: int, total: int, tokens: list, seed: int, nxt, t0: float, rate: float, hard_stop: float,
           res: Results, timeout: float, run_tag: str):
    conn = None
    while True:
        with nxt["lock"]:
            i = nxt["i"]
            if i >= total:
                return
            nxt["i"] = i + 1
        due = t0 + i / rate
        now = time.monotonic()
        if now >= hard_stop:
            return
        if due > now:
            time.sleep(due - now)
        else:
            lag = now - due
            with res.lock:
                res.max_lag = max(res.max_lag, lag)
                if lag > 1.0:
                    res.late += 1
        req = build_request(i, tokens, seed)
        rid = "soak-%s-%07d" % (run_tag, i)
        headers = dict(req.headers)
        headers["x-amz-request-id"] = rid
        if req.body:
            headers["Content-Length"] = str(len(req.body))
        with res.lock:
            res.sent += 1
        started = time.monotonic()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, port, timeout=timeout)
            conn.request(req.method, req.target, body=req.body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            status = resp.status
            echoed_id = resp.getheader("x-amz-request-id")
            if resp.will_close:
                conn.close()
                conn = None
                with res.lock:
                    res.reconnects += 1
        except (OSError, http.client.HTTPException) as e:
            if conn is not None:
                conn.close()
                conn = None
            with res.lock:
                res.reconnects += 1
            res.fail("client_error:" + type(e).__name__, "%s %s: %s" % (req.method, rid, e))
            continue
        elapsed = time.monotonic() - started
        if not 200 <= status < 300:
            kind = "status_%d" % status
            try:
                err = json.loads(data)
                if isinstance(err, dict) and "error" in err:
                    kind += ":" + str(err["error"])
            except ValueError:
                pass
            res.fail(kind, "%s %s %s -> %d %s" % (req.method, req.target[:40], rid, status, data[:200]))
            continue
        try:
            payload = json.loads(data)
        except ValueError:
            res.fail("bad_json", "%s -> %r" % (rid, data[:200]))
            continue
        problems = check_echo(req, rid, payload)
        if echoed_id != rid:
            problems.append("response x-amz-request-id %r" % echoed_id)
        if problems:
            res.fail("echo_mismatch", "%s: %s" % (rid, ", ".join(problems)))
            continue
        with res.lock:
            res.answered += 1
            res.latencies.append(elapsed)
            res.upstream_attempts_seen[payload.get("attempt")] += 1
            res.keys_seen.add(payload.get("accessKeyId"))


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
            "budget_tokens": m.get("prime_proxy_retry_budget_tokens"),
            "credentials_expiry_s": m.get("prime_proxy_credentials_expiry_seconds"),
            "in_flight": m.get("prime_proxy_in_flight_requests"),
            "sent": sent,
            "answered": answered,
            "failed": failed,
            "p50_ms": round(percentile(recent, 0.5) * 1000, 1) if recent else None,
            "p99_ms": round(percentile(recent, 0.99) * 1000, 1) if recent else None,
        })
        last = samples[-1]
        print("  t=%5.0fs rss=%6.1f MiB threads=%s fds=%s sent=%d answered=%d failed=%d p50/p99=%s/%s ms budget=%s cred_ttl=%s" % (
            last["t"], (last["rss_kb"] or 0) / 1024, last["threads"], last["fds"], sent, answered, failed,
            last["p50_ms"], last["p99_ms"],
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
    p.add_argument("--connections", type=int, default=16)
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
    print("load: %d requests at %.0f/s for %.0fs over %d keep-alive connections to %s" % (
        total, a.rate, a.duration, a.connections, a.proxy), flush=True)
    samp = threading.Thread(target=sampler, args=(a.pid, metrics_url, t0, a.sample_interval, stop, samples, res),
                            daemon=True)
    samp.start()
    workers = [
        threading.Thread(target=worker, args=(w, host, port, total, tokens, a.seed, nxt, t0, a.rate, hard_stop, res, a.timeout, run_tag),
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
    result = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall0)),
        "config": {"duration_s": a.duration, "rate": a.rate, "connections": a.connections,
                   "warmup_s": a.warmup, "sample_interval_s": a.sample_interval},
        "load_seconds": round(load_seconds, 1),
        "planned": total,
        "sent": res.sent,
        "answered": res.answered,
        "failed": sum(res.failed.values()),
        "failed_by_kind": dict(res.failed),
        "failure_examples": res.failure_examples,
        "stopped_by_deadline": stopped_by_deadline,
        "achieved_rate": round(res.sent / load_seconds, 1) if load_seconds else 0,
        "max_schedule_lag_s": round(res.max_lag, 3),
        "requests_over_1s_late": res.late,
        "client_reconnects": res.reconnects,
        "latency_ms": {
            "p50": round(percentile(lat, 0.50) * 1000, 1) if lat else None,
            "p99": round(percentile(lat, 0.99) * 1000, 1) if lat else None,
            "p999": round(percentile(lat, 0.999) * 1000, 1) if lat else None,
            "max": round(lat[-1] * 1000, 1) if lat else None,
        },
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
