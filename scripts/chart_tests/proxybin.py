"""The proxy binary for the chart tests: `--check-config` on a rendered config.toml, with the
environment a pod would get.

The binary is the one `cargo test` / `cargo build` left in target/debug (or the path in
PRIME_SIGV4_PROXY_BIN). .ci/run runs the chart checks after `cargo test`, so it is always there
in CI; elsewhere the tests that need it are skipped.
"""

from __future__ import annotations

import functools
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

import chartlib


def proxy_binary() -> Path:
    configured = os.environ.get("PRIME_SIGV4_PROXY_BIN")
    path = Path(configured) if configured else chartlib.ROOT / "target" / "debug" / "prime-sigv4-proxy"
    if not path.exists():
        pytest.skip(f"{path} not built (run `cargo build` first; .ci/run always has it)")
    return path


def check_config(text: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`prime-sigv4-proxy --check-config --config <text>` with only PATH and `env` set."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as handle:
        handle.write(text)
        path = handle.name
    try:
        clean = {"PATH": os.environ.get("PATH", ""), **env}
        return subprocess.run([str(proxy_binary()), "--check-config", "--config", path],
                              capture_output=True, text=True, env=clean, timeout=30)
    finally:
        os.unlink(path)


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
