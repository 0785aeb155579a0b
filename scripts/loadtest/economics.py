#!/usr/bin/env python3
"""Sidecar-economics probes for scripts/loadtest.sh (standard library only).

Each subcommand prints one JSON object on stdout; sizes are KiB from /proc/PID/status.

  startup    --ready URL --runs N -- CMD...   exec CMD, poll URL until 200, stop it; N times
  idle-conns --port P --pid PID --count N --path P --header 'k: v'
             open N keep-alive connections, one request each, hold them idle, sample RSS
  slow-read  --port P --pid PID --path P --header 'k: v' --rate-mib R --expect-bytes N
             read one large response at R MiB/s, sampling the server's RSS meanwhile
"""

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time


def status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def http_get_status(host, port, path, timeout=0.5):
    """Status code of one GET on a fresh connection, or None."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
            head = s.recv(64)
            parts = head.split(b" ", 2)
            return int(parts[1]) if len(parts) > 1 else None
    except (OSError, ValueError):
        return None


def cmd_startup(args):
    from urllib.parse import urlsplit

    url = urlsplit(args.ready)
    times = []
    for _ in range(args.runs):
        started = time.monotonic()
        proc = subprocess.Popen(args.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ready = None
        deadline = started + args.timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if http_get_status(url.hostname, url.port, url.path or "/") == 200:
                ready = time.monotonic() - started
                break
            time.sleep(0.002)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if ready is None:
            print(json.dumps({"error": "not ready within %.0f s" % args.timeout}))
            return 1
        times.append(ready * 1000)
        time.sleep(0.2)  # let the port go before the next start
    print(json.dumps({"runs_ms": [round(t, 1) for t in times], "median_ms": round(statistics.median(times), 1)}))
    return 0


def request_bytes(args, host):
    lines = [f"GET {args.path} HTTP/1.1", f"Host: {host}:{args.port}"] + list(args.header)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_response(reader):
    """Reads one response with Content-Length; returns the status."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return status


async def idle_conns(args):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.count + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    host = "127.0.0.1"
    payload = request_bytes(args, host)
    rss_before = status_kib(args.pid, "VmRSS")
    conns = []
    statuses = {}
    gate = asyncio.Semaphore(32)  # a gentle ramp: at most 32 requests in flight

    async def one():
        async with gate:
            reader, writer = await asyncio.open_connection(host, args.port)
            writer.write(payload)
            await writer.drain()
            status = await read_response(reader)
            statuses[status] = statuses.get(status, 0) + 1
            conns.append((reader, writer))

    results = await asyncio.gather(*(one() for _ in range(args.count)), return_exceptions=True)
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    await asyncio.sleep(args.hold)
    # still open? a closed connection reads EOF at once
    open_now = 0
    for reader, _ in conns:
        try:
            data = await asyncio.wait_for(reader.read(1), timeout=0.001)
            if data:
                open_now += 1
        except asyncio.TimeoutError:
            open_now += 1
    rss_idle = status_kib(args.pid, "VmRSS")
    hwm = status_kib(args.pid, "VmHWM")
    for _, writer in conns:
        writer.close()
    await asyncio.sleep(1)
    print(json.dumps({
        "connections": len(conns), "still_open": open_now, "statuses": statuses,
        "errors": errors[:3], "error_count": len(errors),
        "rss_before_kib": rss_before, "rss_with_conns_kib": rss_idle, "hwm_kib": hwm,
        "rss_after_close_kib": status_kib(args.pid, "VmRSS"),
    }))
    return 0 if not errors and statuses.get(200) == args.count else 1


def cmd_slow_read(args):
    host = "127.0.0.1"
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # a reader that really is slow
    s.connect((host, args.port))
    s.settimeout(30)
    s.sendall(request_bytes(args, host))
    rss_before = status_kib(args.pid, "VmRSS")
    peak = rss_before or 0
    chunk = 64 * 1024
    per_chunk = chunk / (args.rate_mib * 1024 * 1024)
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = s.recv(chunk)
        if not data:
            break
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else None
    received = len(rest)
    if status != 200:  # an error answer: nothing to stream
        s.close()
        print(json.dumps({"status": status, "bytes": received, "error": head.decode(errors="replace")[:300]}))
        return 1
    started = time.monotonic()
    next_at = started
    while received < args.expect_bytes:
        next_at += per_chunk
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        data = s.recv(chunk)
        if not data:
            break
        received += len(data)
        rss = status_kib(args.pid, "VmRSS")
        if rss and rss > peak:
            peak = rss
    elapsed = time.monotonic() - started
    s.close()
    print(json.dumps({
        "status": status, "bytes": received, "seconds": round(elapsed, 2),
        "rss_before_kib": rss_before, "peak_rss_sampled_kib": peak,
        "hwm_kib": status_kib(args.pid, "VmHWM"),
    }))
    return 0 if status == 200 and received == args.expect_bytes else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("startup")
    p.add_argument("--ready", required=True)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--timeout", type=float, default=30)
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    for name in ("idle-conns", "slow-read"):
        p = sub.add_parser(name)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--pid", type=int, required=True)
        p.add_argument("--path", required=True)
        p.add_argument("--header", action="append", default=[])
        if name == "idle-conns":
            p.add_argument("--count", type=int, default=1000)
            p.add_argument("--hold", type=float, default=3)
        else:
            p.add_argument("--rate-mib", type=float, default=4)
            p.add_argument("--expect-bytes", type=int, required=True)
    args = parser.parse_args()
    if args.command == "startup":
        if args.cmd and args.cmd[0] == "--":
            args.cmd = args.cmd[1:]
        return cmd_startup(args)
    if args.command == "idle-conns":
        return asyncio.run(idle_conns(args))
    return cmd_slow_read(args)


if __name__ == "__main__":
    sys.exit(main())
