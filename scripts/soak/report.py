"""Soak report: reads load.py's results JSON and the proxy's log, prints the figures (per region,
then overall), a PASS/FAIL verdict with its reasons and a Markdown block for the README.
Exit status 1 on FAIL: any failed or stalled client request, invalid signature or region
mismatch fails (and memory growth, retry budget exhaustion, a proxy exit status other than 0).

    python3 report.py RESULTS.json PROXY.log [--markdown-out FILE]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import layout  # noqa: E402

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


def metric_min(metrics: dict, name: str):
    values = [v for k, v in metrics.items() if k == name or k.startswith(name + "{")]
    return min(values) if values else None


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


def fmt_int_map(d: dict) -> str:
    return json.dumps({k: int(v) for k, v in sorted(d.items())})


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("results")
    p.add_argument("proxy_log")
    p.add_argument("--max-growth-pct", type=float, default=10.0)
    p.add_argument("--max-growth-mib", type=float, default=2.0)
    p.add_argument("--markdown-out")
    p.add_argument("--command", default="scripts/soak.sh")
    p.add_argument("--version", default="")
    p.add_argument("--pool-idle-ms", type=float, default=90000, help="the proxy's upstream.pool_idle_timeout_ms (for the summary)")
    p.add_argument("--proxy-exit", type=int, default=None, help="the proxy's exit status after SIGTERM")
    a = p.parse_args()

    with open(a.results) as f:
        r = json.load(f)
    up = r.get("upstream", {})
    up_regions = up.get("regions", {})
    cfg = r["config"]
    m = delta(r.get("metrics_after", {}), r.get("metrics_before", {}))
    after = r.get("metrics_after", {})

    retries = metric_sum(m, "prime_proxy_retries_total")
    exhausted = metric_sum(m, "prime_proxy_retry_budget_exhausted_total")
    proxy_status = metric_by_label(m, "prime_proxy_requests_total", "status")
    attempts = metric_by_label(m, "prime_proxy_upstream_attempts_total", "outcome")
    budget_samples = [s["budget_tokens"] for s in r["samples"] if s.get("budget_tokens") is not None]
    budget_min = min(budget_samples) if budget_samples else None
    budget_end = metric_min(after, "prime_proxy_retry_budget_tokens")
    cred_ttls = [s["credentials_expiry_s"] for s in r["samples"] if s.get("credentials_expiry_s") is not None]
    conn_samples = [s["upstream_connections"] for s in r["samples"] if s.get("upstream_connections") is not None]

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
    mismatch = up.get("mismatch", 0)
    keys_used = up.get("keys_used", 0)
    rotations = max(0, keys_used - 1)
    upstream_requests = up.get("requests", 0)
    fault_cfg = up.get("config", {})
    rotate_s = fault_cfg.get("rotate_seconds", 0) or 0

    # ---- per region ------------------------------------------------------------------------
    rows = []
    for key in layout.REGION_KEYS:
        c = r.get("by_region", {}).get(key, {})
        u = up_regions.get(key, {})
        lat = c.get("latency_ms", {})
        rows.append({
            "region": key,
            "endpoint": u.get("host") or layout.ADDRESS[key],
            "sent": c.get("sent", 0),
            "answered": c.get("answered", 0),
            "failed": c.get("failed", 0),
            "failed_by_kind": c.get("failed_by_kind", {}),
            "upstream": u.get("requests", 0),
            "faults": u.get("faults_total", 0),
            "invalid": u.get("signatures_invalid", 0),
            "valid": u.get("signatures_valid", 0),
            "mismatch": u.get("mismatch", 0),
            "mismatch_by_kind": u.get("mismatch_by_kind", {}),
            "ok": u.get("ok_responses", {}),
            "connections": u.get("connections", 0),
            "peak_open": u.get("peak_open_connections", 0),
            "statuses": metric_by_label({k: v for k, v in m.items() if 'region="%s"' % key in k},
                                        "prime_proxy_requests_total", "status"),
            "retries": metric_sum(m, "prime_proxy_retries_total", region=key),
            "p50": lat.get("p50"), "p99": lat.get("p99"), "max": lat.get("max"),
            "stalled": c.get("stalled", 0),
            "dispatch_p50": c.get("dispatch_ms", {}).get("p50"), "dispatch_max": c.get("dispatch_ms", {}).get("max"),
        })

    reasons = []
    if "_error" in up or not up:
        reasons.append("upstream statistics unavailable: %s" % up.get("_error"))
    if r["failed"]:
        reasons.append("%d requests failed (%s)" % (r["failed"], ", ".join(
            "%s %d" % (row["region"], row["failed"]) for row in rows if row["failed"])))
    if r["sent"] != r["planned"] or r.get("stopped_by_deadline"):
        reasons.append("only %d of %d planned requests were sent" % (r["sent"], r["planned"]))
    if r["answered"] + r["failed"] != r["sent"]:
        reasons.append("sent %d != answered %d + failed %d" % (r["sent"], r["answered"], r["failed"]))
    if sig_invalid:
        reasons.append("%d invalid signatures" % sig_invalid)
    if mismatch:
        reasons.append("%d region mismatches" % mismatch)
    stalled = r.get("stalled", 0)
    stall_limit = cfg.get("stall_limit_s", 0)
    if stalled:
        reasons.append("%d requests stalled (first attempt reached the endpoint > %g s after they were sent: %s)" % (
            stalled, stall_limit, ", ".join("%s %d" % (row["region"], row["stalled"]) for row in rows if row["stalled"])))
    for row in rows:
        if row["upstream"] and row["valid"] + row["invalid"] != row["upstream"]:
            reasons.append("the %s endpoint saw %d requests but verified %d" % (row["region"], row["upstream"], row["valid"] + row["invalid"]))
        if r["sent"] >= 300 and (not row["sent"] or not row["upstream"]):
            reasons.append("region %s got no traffic (sent %d, upstream %d)" % (row["region"], row["sent"], row["upstream"]))
    by_kind = r.get("by_kind", {})
    by_phase = r.get("by_phase", {})
    sparse = by_phase.get("sparse", {})
    if cfg.get("phase_seconds", 0) > 0 and r["load_seconds"] > cfg["phase_seconds"] and not sparse.get("sent"):
        reasons.append("no sparse request was sent")
    if r["sent"] >= 2000 and cfg.get("stream_share", 0) > 0 and not all(by_kind.get(k, {}).get("sent") for k in ("chunked", "large")):
        reasons.append("no streamed requests of some kind were sent")
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
        reasons.append("the proxy exited with status %s after SIGTERM" % a.proxy_exit)
    verdict = "PASS" if not reasons else "FAIL"

    lat = r.get("latency_ms", {})
    fault_str = ", ".join("%s %d" % (k, v) for k, v in sorted(faults.items())) or "none"

    def tally_str(t: dict) -> str:
        return "%d sent, %d answered, %d failed%s, %d stalled" % (
            t.get("sent", 0), t.get("answered", 0), t.get("failed", 0),
            " " + json.dumps(t.get("failed_by_kind")) if t.get("failed") else "", t.get("stalled", 0))

    lines = [
        "",
        "==================== soak report ====================",
        "load           : %.0f s at %.0f req/s planned from %d client threads (achieved %.1f req/s, max schedule lag %.2f s)" % (
            cfg["duration_s"], cfg["rate"], cfg["connections"], r["achieved_rate"], r["max_schedule_lag_s"]),
        "",
        "%-6s %-16s %7s %8s %6s %7s %8s %6s %7s %8s %5s %5s  %-18s %s" % (
            "region", "endpoint", "sent", "answered", "failed", "stalled", "upstream", "faults", "invalid", "mismatch", "conns",
            "peak", "dispatch p50/max", "latency p50/p99/max ms"),
    ]
    for row in rows:
        lines.append("%-6s %-16s %7d %8d %6d %7d %8d %6d %7d %8d %5d %5d  %-18s %s/%s/%s" % (
            row["region"], row["endpoint"], row["sent"], row["answered"], row["failed"], row["stalled"], row["upstream"],
            row["faults"], row["invalid"], row["mismatch"], row["connections"], row["peak_open"],
            "%s/%s" % (row["dispatch_p50"], row["dispatch_max"]), row["p50"], row["p99"], row["max"]))
    lines.append("%-6s %-16s %7d %8d %6d %7d %8d %6d %7d %8d %5d %5s  %-18s %s/%s/%s" % (
        "all", "", r["sent"], r["answered"], r["failed"], stalled, upstream_requests, faults_total, sig_invalid, mismatch,
        up.get("upstream_connections", 0), "", "", lat.get("p50"), lat.get("p99"), lat.get("max")))
    lines.append("  (stalled: first attempt reached the endpoint > %g s after the client sent it; dispatch: that delay in ms;\n"
                 "   conns: TLS connections the endpoint accepted; peak: most open at once)" % stall_limit)
    for row in rows:
        detail = []
        if row["failed"]:
            detail.append("failed %s" % json.dumps(row["failed_by_kind"]))
        if row["mismatch"]:
            detail.append("mismatch %s" % json.dumps(row["mismatch_by_kind"]))
        detail.append("proxy statuses %s" % fmt_int_map(row["statuses"]))
        detail.append("retries %d" % row["retries"])
        detail.append("upstream 200s %s" % json.dumps(row["ok"]))
        lines.append("  %s: %s" % (row["region"], "; ".join(detail)))
    lines += [
        "",
        "answers        : " + "; ".join("%s %s" % (k, tally_str(by_kind.get(k, {}))) for k in ("buffered", "chunked", "large"))
        + "; %.1f MiB streamed" % (r.get("streamed_bytes", 0) / MIB / MIB),
        ("sparse region  : one request every %gs to the region whose %gs phase it is (no pooled connection left to it): %s; latency p50 %s ms, max %s ms" % (
            cfg.get("sparse_gap_s", 0), cfg.get("phase_seconds", 0), tally_str(sparse),
            sparse.get("latency_ms", {}).get("p50"), sparse.get("latency_ms", {}).get("max"))
         + "; dispatch p50 %s ms, max %s ms" % (sparse.get("dispatch_ms", {}).get("p50"), sparse.get("dispatch_ms", {}).get("max")))
        if cfg.get("phase_seconds", 0) > 0 else "sparse region  : off (PHASE_SECONDS=0: all three regions busy all the time)",
        "busy regions   : %s; latency p50 %s ms, max %s ms" % (
            tally_str(by_phase.get("busy", {})), by_phase.get("busy", {}).get("latency_ms", {}).get("p50"),
            by_phase.get("busy", {}).get("latency_ms", {}).get("max"))
        + "; dispatch p50 %s ms, max %s ms" % (by_phase.get("busy", {}).get("dispatch_ms", {}).get("p50"),
                                               by_phase.get("busy", {}).get("dispatch_ms", {}).get("max")),
        "clients        : " + "; ".join("%s %s" % (k, tally_str(r.get("by_client", {}).get(k, {}))) for k in ("keepalive", "oneshot"))
        + "; keep-alive reconnects %d" % r.get("client_reconnects", 0),
        "requests sent  : %d (planned %d); answered (2xx, echo checked) %d; failed %d%s" % (
            r["sent"], r["planned"], r["answered"], r["failed"], "  " + json.dumps(r["failed_by_kind"]) if r["failed"] else ""),
        "latency        : p50 %s ms, p99 %s ms, p99.9 %s ms, max %s ms" % (lat.get("p50"), lat.get("p99"), lat.get("p999"), lat.get("max")),
        "upstream reqs  : %d (%.3f per client request)" % (upstream_requests, upstream_requests / r["sent"] if r["sent"] else 0),
        "faults injected: %d = %.2f%% of upstream requests (%s); slow responses %d; faults withheld on a last attempt %d" % (
            faults_total, 100.0 * faults_total / upstream_requests if upstream_requests else 0, fault_str,
            up.get("slow_responses", 0), up.get("faults_suppressed_on_last_attempt", 0)),
        "answered after : %s upstream attempt(s) (attempt: count)" % json.dumps(r.get("answered_by_upstream_attempt", {})),
        "proxy attempts : %s (total %d; upstream saw %d)" % (fmt_int_map(attempts), sum(attempts.values()), upstream_requests),
        "proxy statuses : %s (client counted %d answered)" % (fmt_int_map(proxy_status), r["answered"]),
        "retries        : %d (%.2f%% of requests)" % (retries, 100.0 * retries / r["sent"] if r["sent"] else 0),
        "budget         : exhausted %d times; tokens min %s / end %s (of %s samples every %.0f s)" % (
            exhausted, "%.0f" % budget_min if budget_min is not None else "?",
            "%.0f" % budget_end if budget_end is not None else "?", len(budget_samples), cfg["sample_interval_s"]),
        "credentials    : %d keys issued, %d used in signatures (%d rotations), %d fetches answered with a key (%d answered 500 on purpose); key TTL seen by the proxy min %s s" % (
            up.get("keys_issued", 0), keys_used, rotations, up.get("credential_fetches", 0), up.get("credential_faults", 0),
            "%.0f" % min(cred_ttls) if cred_ttls else "?"),
        "signatures     : %d valid, %d invalid; region mismatches %d" % (sig_valid, sig_invalid, mismatch),
        "memory (RSS)   : start %.1f MiB (t=%ss), end %.1f MiB (t=%ss), peak (VmHWM) %.1f MiB, growth %+.1f MiB (allowed %.1f)" % (
            rss_start, start.get("t"), rss_end, end.get("t"), hwm, growth, allowed),
        "RSS samples    : %s" % rss_series,
        "threads / fds  : threads %s; open fds %s..%s; proxy's upstream connections (gauge) %s..%s" % (
            thread_series, min(fd_series) if fd_series else "?", max(fd_series) if fd_series else "?",
            "%.0f" % min(conn_samples) if conn_samples else "?", "%.0f" % max(conn_samples) if conn_samples else "?"),
        "proxy log      : %s; exit status after SIGTERM: %s" % (
            json.dumps(dict(levels)) if levels else "no lines", "?" if a.proxy_exit is None else a.proxy_exit),
    ]
    if r.get("failure_examples"):
        lines.append("failure examples:")
        lines += ["  " + x for x in r["failure_examples"][:10]]
    if r.get("stall_examples"):
        lines.append("stalled examples:")
        lines += ["  " + x for x in r["stall_examples"][:10]]
    if up.get("invalid_examples"):
        lines.append("invalid signature examples:")
        lines += ["  " + x for x in up["invalid_examples"][:10]]
    if up.get("mismatch_examples"):
        lines.append("region mismatch examples:")
        lines += ["  " + x for x in up["mismatch_examples"][:10]]
    if log_examples and (panics or levels.get("ERROR") or levels.get("WARN")):
        lines.append("proxy log examples:")
        lines += ["  " + x for x in log_examples]
    lines.append("RESULT: %s%s" % (verdict, "" if not reasons else " - " + "; ".join(reasons)))
    print("\n".join(lines))

    md = [
        "#### Soak test (`%s`)" % a.command,
        "",
        "%s, %s%s: %.0f s at %.0f req/s from %d client threads (%.0f%% of requests one-shot with "
        "`Connection: close`), three regions on three TLS endpoints (127.0.0.1 / .2 / .3, one "
        "certificate each; each region in turn sparse for %g s, a request every %g s, longer than the "
        "proxy's %g s pool idle timeout), all 17 marketplaces, long LWA tokens in the query, 20%% POSTs with JSON "
        "bodies, %.0f%% streamed answers (chunked, or over 256 KiB); credentials rotated every %g s "
        "(each valid %g s); faults injected on %.1f%% of upstream attempts, never on the last one." % (
            r.get("started_at", "?"), verdict, " (" + a.version + ")" if a.version else "",
            cfg["duration_s"], cfg["rate"], cfg["connections"], 100 * cfg.get("oneshot_share", 0),
            cfg.get("phase_seconds", 0), cfg.get("sparse_gap_s", 0), a.pool_idle_ms / 1000.0,
            100 * cfg.get("stream_share", 0), rotate_s, fault_cfg.get("valid_seconds", 0), 100 * fault_cfg.get("fault_rate", 0)),
        "",
        "| region (endpoint) | sent | answered | failed | stalled > %g s | upstream requests | invalid signatures | region mismatches | latency p99 / max ms |" % stall_limit,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        md.append("| %s (%s) | %d | %d | %s | %s | %d | %s | %s | %s / %s |" % (
            row["region"], row["endpoint"], row["sent"], row["answered"], bold0(row["failed"]), bold0(row["stalled"]),
            row["upstream"], bold0(row["invalid"]), bold0(row["mismatch"]), row["p99"], row["max"]))
    md.append("| all | %d | %d | %s | %s | %d | %s | %s | %s / %s |" % (
        r["sent"], r["answered"], bold0(r["failed"]), bold0(stalled), upstream_requests, bold0(sig_invalid), bold0(mismatch),
        lat.get("p99"), lat.get("max")))
    md += [
        "",
        "| figure | value |",
        "| --- | --- |",
        "| answers buffered / chunked / over 256 KiB | %s |" % " / ".join(
            "%d" % by_kind.get(k, {}).get("answered", 0) for k in ("buffered", "chunked", "large")),
        "| sparse requests (first to their region after others, no pooled connection): sent / failed / stalled | %d / %s / %s |" % (
            sparse.get("sent", 0), bold0(sparse.get("failed", 0)), bold0(sparse.get("stalled", 0))),
        "| sparse requests: dispatch p50 / max, latency p50 / max | %s / %s ms, %s / %s ms |" % (
            sparse.get("dispatch_ms", {}).get("p50"), sparse.get("dispatch_ms", {}).get("max"),
            sparse.get("latency_ms", {}).get("p50"), sparse.get("latency_ms", {}).get("max")),
        "| keep-alive / one-shot requests answered | %s |" % " / ".join(
            "%d" % r.get("by_client", {}).get(k, {}).get("answered", 0) for k in ("keepalive", "oneshot")),
        "| latency p50 / p99 / max | %s / %s / %s ms |" % (lat.get("p50"), lat.get("p99"), lat.get("max")),
        "| faults injected | %d (%s) |" % (faults_total, fault_str),
        "| slow responses (0.2-%gs) | %d |" % (fault_cfg.get("slow_max_s", 0), up.get("slow_responses", 0)),
        "| retries / retry budget exhausted | %d / %d (tokens min %s) |" % (
            retries, exhausted, "%.0f" % budget_min if budget_min is not None else "?"),
        "| credential rotations seen | %d (%d access keys used) |" % (rotations, keys_used),
        "| signatures valid / invalid | %d / %d |" % (sig_valid, sig_invalid),
        "| RSS start / end / peak | %.1f / %.1f / %.1f MiB (growth %+.1f, limit %.1f) |" % (rss_start, rss_end, hwm, growth, allowed),
        "| threads / open files | %s / %s-%s |" % (
            "-".join(str(t) for t in (thread_series[:1] + thread_series[-1:] if len(thread_series) > 1 else thread_series)) or "?",
            min(fd_series) if fd_series else "?", max(fd_series) if fd_series else "?"),
        "| exit status after SIGTERM | %s |" % ("?" if a.proxy_exit is None else a.proxy_exit),
        "| result | **%s** |" % verdict,
    ]
    print("\n---- Markdown summary ----")
    print("\n".join(md))
    if a.markdown_out:
        with open(a.markdown_out, "w") as f:
            f.write("\n".join(md) + "\n")
    return 0 if verdict == "PASS" else 1


def bold0(n) -> str:
    """A count that must be 0, bold as the README shows it."""
    return "**%d**" % n


if __name__ == "__main__":
    sys.exit(main())
