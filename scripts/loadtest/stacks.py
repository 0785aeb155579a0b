#!/usr/bin/env python3
"""Summarises `perf script -F comm,tid,period,ip,sym` output of the proxy by what it does.

  perf script -i perf.data --no-inline -F comm,tid,period,ip,sym | stacks.py [--requests N]
  perf script -i allocs.data --no-inline -F comm,tid,event,ip,sym | stacks.py --alloc --requests N

With --alloc the input is uprobe events on mimalloc's entry points (one sample = one call):
allocator calls per request by the code that makes them.

Prints, as % of all samples (and, with --requests, CPU µs per request from the samples'
periods):
  * inclusive time of the request path's stages (each sample counts once per stage found
    anywhere on its stack);
  * self time by kind of code (the sample's leaf frame);
  * the code that calls the allocator most (nearest caller outside the allocator and std);
  * the callers of core::fmt (formatting into strings).
"""

import argparse
import re
import sys
from collections import Counter

# Inclusive stages: (label, regex on a frame). Order is only the print order.
STAGES = [
    ("client side: hyper server (parse request, write response)", r"hyper::proto::h1::.*Server|hyper::server::conn"),
    ("Proxy::handle (everything per request, below the server)", r"prime_sigv4_proxy::proxy::Proxy::handle"),
    ("  Upstream::forward (sign, pool, send, await response)", r"prime_sigv4_proxy::upstream::Upstream::forward"),
    ("    sign::sign_request", r"prime_sigv4_proxy::sign::"),
    ("    hyper-util pool / client send_request", r"hyper_util::client::legacy::(client|pool)"),
    ("    connector called (GatedConnector / HttpsConnector)", r"GatedConnector|HttpsConnector"),
    ("  prepare:: (route checks, query normalise, headers)", r"prime_sigv4_proxy::prepare::"),
    ("  respond::", r"prime_sigv4_proxy::respond::"),
    ("  route::", r"prime_sigv4_proxy::route::"),
    ("  limit:: (rate limiter)", r"prime_sigv4_proxy::limit::|governor::"),
    ("  metrics (prometheus_client)", r"prometheus_client::"),
    ("  request id (uuid)", r"uuid::|prepare::new_request_id|prepare::request_id"),
    ("log line (tracing event, JSON formatting)", r"tracing_core::event|tracing_subscriber::|prime_sigv4_proxy::logging::"),
    ("TLS to upstream (rustls + aws-lc record layer)", r"rustls::|tokio_rustls::"),
    ("  TLS encrypt/decrypt (aws-lc AES-GCM)", r"aes_hw|aesni|gcm|ghash|GcmMessage"),
    ("syscalls: writev/sendmsg (incl. loopback delivery)", r"__GI___writev|sys_writev|do_writev|tcp_sendmsg"),
    ("syscalls: recv/read", r"recvfrom|__libc_recv|sys_recvfrom|tcp_recvmsg|__GI___libc_read|ksys_read"),
    ("syscalls: epoll_wait / futex / sched", r"epoll_wait|futex|schedule\b|__schedule"),
    ("tokio timers (sleep/timeout registration)", r"tokio::runtime::time::|tokio::time::"),
    ("allocator (mimalloc malloc/free/realloc)", r"^_?mi_|^mi_"),
    ("memcpy/memmove", r"memmove|memcpy"),
    ("core::fmt (formatting)", r"^core::fmt::|alloc::fmt::format"),
]

ALLOC = re.compile(r"^_?mi_|^mi_|__rust_alloc|__rust_dealloc|__rust_realloc|^alloc::alloc|^alloc::raw_vec|"
                   r"RawVec|^<alloc::alloc::Global|^alloc::vec::Vec<T,A>::reserve|finish_grow|"
                   r"^alloc::string::String::push|^alloc::vec|^core::ptr::drop_in_place|^alloc::sync::Arc<T,A>::drop_slow|"
                   r"^<alloc::|^alloc::boxed|^bytes::bytes_mut::BytesMut::reserve_inner|^core::alloc")
NOISE = re.compile(r"^(core|alloc|std)::|^<core::|^<alloc::|^<std::|^\[unknown\]|^_?mi_|^mi_|^0x")


def parse(stream):
    samples = []
    frames, period = [], 0
    for line in stream:
        if not line.strip():
            if frames:
                samples.append((period, frames))
            frames, period = [], 0
            continue
        if not line.startswith((" ", "\t")):
            parts = line.split()
            period = int(parts[-1]) if parts and parts[-1].isdigit() else 1
            continue
        parts = line.strip().split(None, 1)
        sym = parts[1] if len(parts) > 1 else "[unknown]"
        frames.append(sym)
    if frames:
        samples.append((period, frames))
    return samples


def site_of(frames, depth):
    """The first `depth` frames outside the allocator and std, joined."""
    out = []
    for f in frames:
        if NOISE.search(f) or ALLOC.search(f):
            continue
        out.append(re.sub(r"\{\{closure\}\}", "{closure}", f)[:110])
        if len(out) == depth:
            break
    return " <- ".join(out) if out else frames[-1][:110]


def alloc_sites(samples, args):
    n = max(args.requests, 1)
    calls = len(samples)
    print(f"# {calls} allocator calls" + (f" for {args.requests} requests: {calls / n:.1f} per request" if args.requests else ""))
    for depth, title in ((1, "nearest caller"), (2, "nearest two callers")):
        print()
        print(f"## Allocator calls per request by {title} outside the allocator and std")
        c = Counter(site_of(fr, depth) for _, fr in samples)
        for site, k in c.most_common(args.top if depth == 1 else args.top + 10):
            print(f"  {k / n:6.2f}  {site}")
    print()
    print("## By crate of the nearest caller")
    c = Counter()
    for _, fr in samples:
        site = site_of(fr, 1)
        m = re.match(r"<?(?:&(?:mut )?)?([a-z_][a-z0-9_]*)::", site)
        c[m.group(1) if m else site[:40]] += 1
    for crate, k in c.most_common(15):
        print(f"  {k / n:6.2f}  {crate}")
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=0, help="requests served while recording")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--alloc", action="store_true", help="input is allocator uprobe events")
    args = ap.parse_args()
    samples = parse(sys.stdin)
    if args.alloc:
        return alloc_sites(samples, args)
    if not samples:
        print("no samples")
        return 1
    total = sum(p for p, _ in samples)

    def show(weight):
        pct = 100.0 * weight / total
        if args.requests:
            return f"{pct:6.2f}%  {weight / 1e3 / args.requests:7.2f} µs/req"
        return f"{pct:6.2f}%"

    print(f"# {len(samples)} samples" + (f", {args.requests} requests, {total / 1e3 / args.requests:.2f} µs CPU per request"
                                          " (sampled)" if args.requests else ""))
    print()
    print("## Inclusive time by stage (a sample counts once per stage on its stack)")
    compiled = [(label, re.compile(rx)) for label, rx in STAGES]
    for label, rx in compiled:
        w = sum(p for p, fr in samples if any(rx.search(f) for f in fr))
        print(f"  {show(w)}  {label}")

    print()
    print("## Self time by kind of leaf code")
    kinds = Counter()
    for p, fr in samples:
        leaf = fr[0]
        if ALLOC.search(leaf) and re.search(r"^_?mi_|^mi_", leaf):
            k = "allocator (mimalloc)"
        elif re.search(r"memmove|memcpy|memset", leaf):
            k = "memcpy/memmove/memset"
        elif re.search(r"aws_lc|aes|gcm|sha256|ghash", leaf):
            k = "aws-lc crypto (TLS records, SigV4 HMAC/SHA-256)"
        elif re.search(r"^prime_sigv4_proxy::", leaf):
            k = "prime_sigv4_proxy code"
        elif re.search(r"^(<)?hyper|^(<)?hyper_util|^(<)?http::|^(<)?httparse", leaf):
            k = "hyper / http"
        elif re.search(r"^(<)?tokio", leaf):
            k = "tokio"
        elif re.search(r"^(<)?rustls|^(<)?tokio_rustls", leaf):
            k = "rustls (non-crypto)"
        elif re.search(r"tracing|prometheus", leaf):
            k = "tracing / prometheus_client"
        elif any(re.search(r"entry_SYSCALL|do_syscall_64|asm_common_interrupt|ret_from_fork", f) for f in fr) or \
                re.search(r"^(__|_raw_|tcp_|ip_|sock|skb|do_|sys_|vfs_|ep_|fdget|kmem|kfree|kmalloc|loopback|napi|net_|dev_|finish_task|schedule|__x64)", leaf):
            k = "kernel"
        else:
            k = "other: " + re.sub(r"<.*", "<…>", leaf)[:60]
        kinds[k] += p
    for k, w in kinds.most_common(args.top):
        print(f"  {show(w)}  {k}")

    def callers(select, label):
        print()
        print(f"## {label}")
        c = Counter()
        for p, fr in samples:
            if not select(fr):
                continue
            site = next((f for f in fr if not NOISE.search(f) and not ALLOC.search(f)), fr[-1])
            c[re.sub(r"\{\{closure\}\}", "{closure}", site)[:150]] += p
        for site, w in c.most_common(args.top):
            print(f"  {show(w)}  {site}")

    callers(lambda fr: bool(re.search(r"^_?mi_|^mi_", fr[0])),
            "Allocator time by nearest caller outside the allocator and std")
    callers(lambda fr: any(re.search(r"^core::fmt::|alloc::fmt::format", f) for f in fr),
            "core::fmt time by nearest caller outside std")
    return 0


if __name__ == "__main__":
    sys.exit(main())
