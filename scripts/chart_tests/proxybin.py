"""The proxy binary for the chart tests: `--check-config` on a rendered config.toml, with the
environment a pod would get, and a running proxy whose /metrics the dashboard and alert checks
read.

The binary is the one `cargo test` / `cargo build` left in $CARGO_TARGET_DIR/debug (target/debug
by default), or the path in PRIME_SIGV4_PROXY_BIN. .ci/run runs the chart checks after
`cargo test`, so it is always there in CI; elsewhere the tests that need it are skipped.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import http.client
import http.server
import json
import os
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

import chartlib


def proxy_binary() -> Path:
    configured = os.environ.get("PRIME_SIGV4_PROXY_BIN")
    target = Path(os.environ.get("CARGO_TARGET_DIR") or chartlib.ROOT / "target")
    if not target.is_absolute():
        target = chartlib.ROOT / target
    path = Path(configured) if configured else target / "debug" / "prime-sigv4-proxy"
    if not path.exists():
        pytest.skip(f"{path} not built (run `cargo build` first; .ci/run always has it)")
    return path


def check_config(text: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`prime-sigv4-proxy --check-config --config <text>` with only PATH and `env` set."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as handle:
        handle.write(text)
        path = handle.name
    try:
        return check_config_file(Path(path), env)
    finally:
        os.unlink(path)


def check_config_file(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`prime-sigv4-proxy --check-config --config <path>` with only PATH and `env` set."""
    clean = {"PATH": os.environ.get("PATH", ""), **env}
    return subprocess.run([str(proxy_binary()), "--check-config", "--config", str(path)],
                          capture_output=True, text=True, env=clean, timeout=30)


@functools.cache
def knows_shared_rate_limit() -> bool:
    """Does this binary have `[rate_limit.shared]` (SPEC)? A binary built before it refuses the
    table as an unknown key."""
    result = check_config('[rate_limit.shared]\nurl = ""\n', {})
    if result.returncode == 0:
        return True
    if "rate_limit.shared" in result.stderr:
        return False
    raise AssertionError(f"unexpected answer to an empty [rate_limit.shared]: {result.stderr}")


# ----------------------------------------------------------------------------------------------
# A running proxy


@contextlib.contextmanager
def running_proxy(config: str, env: dict[str, str]) -> Iterator[dict[str, str]]:
    """The binary serving `config` (its `listen`/`admin_listen` may use port 0) with only PATH and
    `env` set; yields {"listen": "127.0.0.1:PORT", "admin_listen": ...} once it serves."""
    with tempfile.TemporaryDirectory(prefix="proxy-") as tmp:
        config_file = Path(tmp) / "config.toml"
        config_file.write_text(config)
        clean = {"PATH": os.environ.get("PATH", ""), **env}
        proc = subprocess.Popen([str(proxy_binary()), "--config", str(config_file)], env=clean,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []
        try:
            addresses = _wait_serving(proc, lines)
            # Keep reading its output, so a full pipe never holds up its log thread.
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            yield addresses
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_serving(proc: subprocess.Popen, lines: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("message") == "prime-sigv4-proxy serving":
                found.update(listen=event["listen"], admin_listen=event["admin_listen"])
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=60)  # generous: a debug build on a busy machine
    if not found:
        raise AssertionError("the proxy did not start serving:\n" + "".join(lines[-30:]))
    return found


class Upstream:
    """An HTTPS server on one loopback address standing in for one region's Prime endpoint.

    Paths: /ok -> 200; /denied/<Kind> -> 403 with x-amzn-ErrorType <Kind>; /busy -> 503
    (retried by the proxy); anything else -> 404.
    """

    def __init__(self, host: str, ssl_context: ssl.SSLContext):
        self.server = http.server.ThreadingHTTPServer((host, 0), _UpstreamHandler)
        self.server.daemon_threads = True
        self.server.socket = ssl_context.wrap_socket(self.server.socket, server_side=True)
        self.endpoint = f"https://{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _UpstreamHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        headers = {}
        if self.path == "/ok":
            status, body = 200, b'{"ok":true}'
        elif self.path.startswith("/denied/"):
            kind = self.path.removeprefix("/denied/")
            status, body = 403, b'{"message":"refused"}'
            headers["x-amzn-ErrorType"] = f"{kind}:http://internal.amazon.com/coral/"
        elif self.path == "/busy":
            status, body = 503, b'{"message":"busy"}'
        else:
            status, body = 404, b"{}"
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def three_upstreams(ca_file: Path) -> Iterator[list[Upstream]]:
    """HTTPS upstreams on 127.0.0.1, .2 and .3 (na, eu, fe) with certificates of a test CA,
    whose PEM is written to `ca_file`."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(ca_file))
    hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(*hosts).configure_cert(context)
    upstreams = [Upstream(host, context) for host in hosts]
    try:
        yield upstreams
    finally:
        for upstream in upstreams:
            upstream.close()


BUSY_PROXY_CONFIG = """\
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[upstream]
ca_file = "{ca_file}"

[retry]
base_delay_ms = 1
max_delay_ms = 5

# A small rate so the flood below is partly refused 429 (prime_proxy_rate_limited_total).
[rate_limit]
requests_per_second = 1
burst = 30

# Nothing listens on port 1: the shared limit runs in its on_error fallback, so its series get
# their labels (redis errors by kind, fallback decisions by on_error and outcome).
[rate_limit.shared]
url = "redis://127.0.0.1:1"

[regions.na]
endpoint = "{na}"

[regions.eu]
endpoint = "{eu}"

[regions.fe]
endpoint = "{fe}"
"""

# One marketplace per region of the built-in table.
MARKETPLACES = {"na": "US", "eu": "DE", "fe": "JP"}


def busy_proxy_metrics() -> str:
    """/metrics of the binary after traffic that makes every family show its labels: three
    regions on TLS upstreams (200s, Prime 403s by kind, retried 503s), a request without a
    marketplace (region none), a flood into the rate limit, the shared limit without Redis."""
    with tempfile.TemporaryDirectory(prefix="busy-proxy-") as tmp:
        ca_file = Path(tmp) / "ca.pem"
        with three_upstreams(ca_file) as (na, eu, fe):
            config = BUSY_PROXY_CONFIG.format(ca_file=ca_file, na=na.endpoint, eu=eu.endpoint,
                                              fe=fe.endpoint)
            env = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "not-a-real-secret",
                   "AWS_REGION": "us-east-1"}
            with running_proxy(config, env) as addresses:
                host, port = addresses["listen"].rsplit(":", 1)

                def client(marketplace: str, paths: list[str]) -> list[int]:
                    # One keep-alive connection per client, as an application's pool would.
                    conn = http.client.HTTPConnection(host, int(port), timeout=60)
                    statuses = []
                    try:
                        for path in paths:
                            headers = {"x-amz-marketplace": marketplace} if marketplace else {}
                            conn.request("GET", path, headers=headers)
                            response = conn.getresponse()
                            response.read()
                            statuses.append(response.status)
                    finally:
                        conn.close()
                    return statuses

                traffic = ["/ok", "/denied/AccessDeniedException", "/ok",
                           "/denied/InvalidSignatureException", "/busy"]
                with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
                    jobs = [pool.submit(client, m, traffic) for m in MARKETPLACES.values()]
                    jobs.append(pool.submit(client, "", ["/ok"]))
                    statuses = [s for job in jobs for s in job.result()]
                    flood = [pool.submit(client, "US", ["/ok"] * 10) for _ in range(4)]
                    flooded = [s for job in flood for s in job.result()]
                assert {200, 403, 503, 400} <= set(statuses), statuses
                assert 429 in flooded, f"the flood was never rate limited: {flooded}"
                admin = http.client.HTTPConnection(*addresses["admin_listen"].rsplit(":", 1), timeout=30)
                admin.request("GET", "/metrics")
                response = admin.getresponse()
                text = response.read().decode()
                assert response.status == 200, text
                return text
