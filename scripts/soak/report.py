"""Soak report: reads load.py's results JSON and the proxy's log, prints the figures, a
PASS/FAIL verdict with its reasons and a Markdown block for the README. Exit status 1 on FAIL.

    python3 report.py RESULTS.json PROXY.log [--markdown-out FILE]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys

MIB = 1024.0


def metric_sum(metrics: dict, name: str, **labels) -> float:
    total = 0.0
    for key, value in metrics.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if labels and not all(('%s="%s"' % (k, v)) in rest for k, v in labels.items()):
            continue
        total += value
    return total


def metric_by_label(metrics: dict, name: str, label: str) -> dict:
    out: dict = collections.Counter()
    for key, value in metrics.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        for part in rest.rstrip("}").split(","):
            k, _, v = part.partition("=")
            if k == label:
                out[v.strip('"')] += value
    return dict(out)


def delta(after: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if not k.startswith("_")}


def scan_log(path: str):
    levels: collections.Counter = collections.Counter()
    panics = 0
    examples: list[str] = []
    try:
        with open(path, errors="replace") as f:
            for line in f:
                line = line.rstrip("\n")
                if not line:
                    continue
                level = "OTHER"
                try:
                    level = str(json.loads(line).get("level", "OTHER")).upper()
                except (ValueError, AttributeError):
                    pass
                if "panicked" in line:
                    panics += 1
                    level = "PANIC"
                levels[level] += 1
                if level in ("ERROR", "PANIC", "WARN", "OTHER") and len(examples) < 10:
                    examples.append(line[:400])
    except OSError as e:
        examples.append("cannot read the proxy log: %s" % e)
    return levels, panics, examples


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("results")
    p.add_argument("proxy_log")
    p.add_argument("--max-growth-pct", type=float, default=10.0)
    p.add_argument("--max-growth-mib", type=float, default=2.0)
    p.add_argument("--markdown-out")
    p.add_argument("--command", default="scripts/soak.sh")
    p.add_argument("--version", default="")
    p.add_argument("--proxy-exit", type=int, default=None, help="the proxy's exit status after SIGTERM")
    a = p.parse_args()

    with open(a.results) as f:
        r = json.load(f)
    up = r.get("upstream", {})
    cfg = r["config"]
    m = delta(r.get("metrics_after", {}), r.get("metrics_before", {}))
    after = r.get("metrics_after", {})

    retries = metric_sum(m, "prime_proxy_retries_total")
    exhausted = metric_sum(m, "prime_proxy_retry_budget_exhausted_total")
    proxy_status = metric_by_label(m, "prime_proxy_requests_total", "status")
    attempts = metric_by_label(m, "prime_proxy_upstream_attempts_total", "outcome")
    budget_samples = [s["budget_tokens"] for s in r["samples"] if s.get("budget_tokens") is not None]
    budget_min = min(budget_samples) if budget_samples else None
    budget_end = after.get("prime_proxy_retry_budget_tokens")
    cred_ttls = [s["credentials_expiry_s"] for s in r["samples"] if s.get("credentials_expiry_s") is not None]

    # Memory: start = the first sample after the warm-up, end = right after the load.
    samples = [s for s in r["samples"] if s.get("rss_kb")]
    after_warmup = [s for s in samples if s["t"] >= cfg["warmup_s"]]
    start = (after_warmup or samples or [{}])[0]
    end = r.get("end_sample") or (samples[-1] if samples else {})
    rss_start = (start.get("rss_kb") or 0) / MIB
    rss_end = (end.get("rss_kb") or 0) / MIB
    hwm = (end.get("hwm_kb") or 0) / MIB
    growth = rss_end - rss_start
    allowed = rss_start * a.max_growth_pct / 100.0 + a.max_growth_mib
    rss_series = " ".join("%.1f" % (s["rss_kb"] / MIB) for s in samples)
    thread_series = sorted({s.get("threads") for s in samples if s.get("threads") is not None})
    fd_series = [s.get("fds") for s in samples if s.get("fds") is not None]

    levels, panics, log_examples = scan_log(a.proxy_log)

    faults = up.get("faults", {})
    faults_total = up.get("faults_total", 0)
    sig_invalid = up.get("signatures_invalid", 0)
    sig_valid = up.get("signatures_valid", 0)
    keys_used = up.get("keys_used", 0)
    rotations = max(0, keys_used - 1)
    upstream_requests = up.get("requests", 0)
    fault_cfg = up.get("config", {})
    rotate_s = fault_cfg.get("rotate_seconds", 0) or 0

    reasons = []
    if "_error" in up or not up:
        reasons.append("upstream statistics unavailable: %s" % up.get("_error"))
    if r["failed"]:
        reasons.append("%d requests failed" % r["failed"])
    if r["sent"] != r["planned"] or r.get("stopped_by_deadline"):
        reasons.append("only %d of %d planned requests were sent" % (r["sent"], r["planned"]))
    if r["answered"] + r["failed"] != r["sent"]:
        reasons.append("sent %d != answered %d + failed %d" % (r["sent"], r["answered"], r["failed"]))
    if sig_invalid:
        reasons.append("%d invalid signatures" % sig_invalid)
    if upstream_requests and sig_valid + sig_invalid != upstream_requests:
        reasons.append("upstream saw %d requests but verified %d" % (upstream_requests, sig_valid + sig_invalid))
    if not samples:
        reasons.append("no memory samples")
    elif growth > allowed:
        reasons.append("memory grew %.1f MiB (allowed %.1f MiB = %g%% of start + %g MiB)" % (
            growth, allowed, a.max_growth_pct, a.max_growth_mib))
    if exhausted:
        reasons.append("retry budget exhausted %d times (faults were meant to stay below it)" % exhausted)
    if rotate_s and r["load_seconds"] >= 3 * rotate_s and rotations < 1:
        reasons.append("credentials never rotated (%d access key used)" % keys_used)
    if fault_cfg.get("fault_rate", 0) > 0 and upstream_requests >= 2000 and faults_total == 0:
        reasons.append("no fault was injected")
    if panics or levels.get("ERROR"):
        reasons.append("proxy log has %d ERROR lines and %d panics" % (levels.get("ERROR", 0), panics))
    if a.proxy_exit is not None and a.proxy_exit != 0:
        reasons.append("the proxy exited with status %d after SIGTERM" % a.proxy_exit)
    verdict = "PASS" if not reasons else "FAIL"

    lat = r.get("latency_ms", {})
    fault_str = ", ".join("%s %d" % (k, v) for k, v in sorted(faults.items())) or "none"
    lines = [
        "",
        "==================== soak report ====================",
        "load           : %.0f s at %.0f req/s planned over %d connections (achieved %.1f req/s, max schedule lag %.2f s)" % (
            cfg["duration_s"], cfg["rate"], cfg["connections"], r["achieved_rate"], r["max_schedule_lag_s"]),
        "requests sent  : %d (planned %d)" % (r["sent"], r["planned"]),
        "answered (2xx) : %d" % r["answered"],
        "failed         : %d%s" % (r["failed"], "  " + json.dumps(r["failed_by_kind"]) if r["failed"] else ""),
        "latency        : p50 %s ms, p99 %s ms, p99.9 %s ms, max %s ms" % (lat.get("p50"), lat.get("p99"), lat.get("p999"), lat.get("max")),
        "upstream reqs  : %d (%.3f per client request)" % (upstream_requests, upstream_requests / r["sent"] if r["sent"] else 0),
        "faults injected: %d = %.2f%% of upstream requests (%s); slow responses %d; faults withheld on a last attempt %d" % (
            faults_total, 100.0 * faults_total / upstream_requests if upstream_requests else 0, fault_str,
            up.get("slow_responses", 0), up.get("faults_suppressed_on_last_attempt", 0)),
        "answered after : %s upstream attempt(s) (attempt: count)" % json.dumps(r.get("answered_by_upstream_attempt", {})),
        "proxy attempts : %s (total %d; upstream saw %d)" % (
            json.dumps({k: int(v) for k, v in sorted(attempts.items())}), sum(attempts.values()), upstream_requests),
        "proxy statuses : %s (client counted %d answered)" % (
            json.dumps({k: int(v) for k, v in sorted(proxy_status.items())}), r["answered"]),
        "retries        : %d (%.2f%% of requests)" % (retries, 100.0 * retries / r["sent"] if r["sent"] else 0),
        "budget         : exhausted %d times; tokens min %s / end %s (of %s sampled every %.0f s)" % (
            exhausted, "%.0f" % budget_min if budget_min is not None else "?",
            "%.0f" % budget_end if budget_end is not None else "?", len(budget_samples), cfg["sample_interval_s"]),
        "credentials    : %d keys issued, %d used in signatures (%d rotations), %d fetches answered with a key (%d answered 500 on purpose); key TTL seen by the proxy min %s s" % (
            up.get("keys_issued", 0), keys_used, rotations, up.get("credential_fetches", 0), up.get("credential_faults", 0),
            "%.0f" % min(cred_ttls) if cred_ttls else "?"),
        "signatures     : %d valid, %d invalid%s" % (sig_valid, sig_invalid,
                                                    "  " + json.dumps(up.get("signatures_invalid_by_kind")) if sig_invalid else ""),
        "memory (RSS)   : start %.1f MiB (t=%ss), end %.1f MiB (t=%ss), peak (VmHWM) %.1f MiB, growth %+.1f MiB (allowed %.1f)" % (
            rss_start, start.get("t"), rss_end, end.get("t"), hwm, growth, allowed),
        "RSS samples    : %s" % rss_series,
        "threads / fds  : threads %s; open fds %s..%s" % (thread_series, min(fd_series) if fd_series else "?", max(fd_series) if fd_series else "?"),
        "proxy log      : %s; exit status after SIGTERM: %s" % (
            json.dumps(dict(levels)) if levels else "no lines", "?" if a.proxy_exit is None else a.proxy_exit),
    ]
    if r.get("failure_examples"):
        lines.append("failure examples:")
        lines += ["  " + x for x in r["failure_examples"][:10]]
    if up.get("invalid_examples"):
        lines.append("invalid signature examples:")
        lines += ["  " + x for x in up["invalid_examples"][:10]]
    if log_examples and (panics or levels.get("ERROR") or levels.get("WARN")):
        lines.append("proxy log examples:")
        lines += ["  " + x for x in log_examples]
    lines.append("RESULT: %s%s" % (verdict, "" if not reasons else " - " + "; ".join(reasons)))
    print("\n".join(lines))

    md = [
        "#### Soak test (`%s`)" % a.command,
        "",
        "%s, %s%s: %.0f s at %.0f req/s over %d keep-alive connections, all 17 marketplaces, "
        "long LWA tokens in the query, 20%% POSTs with JSON bodies; credentials rotated every %g s "
        "(each valid %g s); faults injected on %.1f%% of upstream attempts, never on the last one." % (
            r.get("started_at", "?"), verdict, " (" + a.version + ")" if a.version else "",
            cfg["duration_s"], cfg["rate"], cfg["connections"],
            rotate_s, fault_cfg.get("valid_seconds", 0), 100 * fault_cfg.get("fault_rate", 0)),
        "",
        "| figure | value |",
        "| --- | --- |",
        "| requests sent | %d |" % r["sent"],
        "| answered (2xx, echo checked) | %d |" % r["answered"],
        "| failed | %d |" % r["failed"],
        "| latency p50 / p99 / max | %s / %s / %s ms |" % (lat.get("p50"), lat.get("p99"), lat.get("max")),
        "| upstream requests | %d |" % upstream_requests,
        "| faults injected | %d (%s) |" % (faults_total, fault_str),
        "| slow responses (0.2-%gs) | %d |" % (fault_cfg.get("slow_max_s", 0), up.get("slow_responses", 0)),
        "| retries | %d |" % retries,
        "| retry budget exhausted | %d (tokens min %s of 500) |" % (exhausted, "%.0f" % budget_min if budget_min is not None else "?"),
        "| credential rotations seen | %d (%d access keys used) |" % (rotations, keys_used),
        "| signatures valid / invalid | %d / %d |" % (sig_valid, sig_invalid),
        "| RSS start / end / peak | %.1f / %.1f / %.1f MiB |" % (rss_start, rss_end, hwm),
        "| RSS growth | %+.1f MiB (limit %.1f) |" % (growth, allowed),
        "| result | **%s** |" % verdict,
    ]
    print("\n---- Markdown summary ----")
    print("\n".join(md))
    if a.markdown_out:
        with open(a.markdown_out, "w") as f:
            f.write("\n".join(md) + "\n")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
