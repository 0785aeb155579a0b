"""The proxy itself must accept every config.toml the chart renders (`--check-config`).

The binary is the one `cargo test` / `cargo build` left in target/debug (or the path in
PRIME_SIGV4_PROXY_BIN). .ci/run runs this after `cargo test`, so it is always there in CI.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

import chartlib
from conftest import SCENARIOS


def proxy_binary() -> Path:
    configured = os.environ.get("PRIME_SIGV4_PROXY_BIN")
    path = Path(configured) if configured else chartlib.ROOT / "target" / "debug" / "prime-sigv4-proxy"
    if not path.exists():
        pytest.skip(f"{path} not built (run `cargo build` first; .ci/run always has it)")
    return path


def check_config(text: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as handle:
        handle.write(text)
        path = handle.name
    try:
        clean = {"PATH": os.environ.get("PATH", ""), **env}
        return subprocess.run([str(proxy_binary()), "--check-config", "--config", path],
                              capture_output=True, text=True, env=clean, timeout=30)
    finally:
        os.unlink(path)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rendered_config_is_accepted_by_the_proxy(scenario, renders):
    text, cfg = chartlib.config_toml(renders[scenario])
    workloads = [d for d in renders[scenario].docs if d.get("kind") == "Deployment"]
    env = {}
    for workload in workloads:
        container = chartlib.proxy_container(workload)
        env = {e["name"]: e["value"] for e in container.get("env", [])
               if e["name"].startswith("PRIME_PROXY_") and "value" in e}
    result = check_config(text, env)
    assert result.returncode == 0, f"{scenario}: {result.stderr}\n--- config.toml ---\n{text}"
    assert "[regions.na]" in result.stdout


def test_a_wrong_key_in_the_chart_config_is_refused_by_the_proxy():
    result = check_config("[upstream]\nconect_timeout_ms = 5\n", {})
    assert result.returncode == 2
    assert "upstream.conect_timeout_ms" in result.stderr
