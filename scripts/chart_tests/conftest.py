"""Fixtures: each chart scenario is rendered once per test session (offline, Helm v4 SDK)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import chartlib  # noqa: E402

SCENARIOS = ["default", "observability", "shared-limit", "sidecar", "standalone-full", "tls"]
STANDALONE_SCENARIOS = ["default", "observability", "shared-limit", "standalone-full", "tls"]


@pytest.fixture(scope="session")
def scenario_values() -> dict[str, dict]:
    files = {chartlib.scenario_name(f): chartlib.load_values(f) for f in chartlib.ci_values_files()}
    missing = set(SCENARIOS) - set(files)
    assert not missing, f"missing ci values files: {missing}"
    return files


@pytest.fixture(scope="session")
def renders(scenario_values) -> dict[str, chartlib.Rendered]:
    return {name: chartlib.render(chartlib.CHART_DIR, values or None)
            for name, values in scenario_values.items()}


@pytest.fixture(scope="session")
def exposed_metrics() -> str:
    """The real binary's /metrics after traffic that gives every family its labels."""
    import proxybin
    return proxybin.busy_proxy_metrics()


@pytest.fixture(scope="session")
def chart_defaults() -> dict:
    return chartlib.load_values(chartlib.CHART_DIR / "values.yaml")


@pytest.fixture(scope="session")
def example_app() -> chartlib.Rendered:
    return chartlib.render_example_app()


@pytest.fixture(scope="session")
def sidecar_manifest() -> chartlib.Rendered:
    return chartlib.parse_manifests({"sidecar-manifest.yaml": chartlib.SIDECAR_MANIFEST.read_text()})


def render_ok(values: dict | None = None) -> chartlib.Rendered:
    return chartlib.render(chartlib.CHART_DIR, values)


def render_fails(values: dict, *expected: str) -> str:
    """Rendering must fail (schema or template `fail`); returns the message."""
    with pytest.raises(chartlib.helm.HelmError) as info:
        chartlib.render(chartlib.CHART_DIR, values)
    message = str(info.value)
    for text in expected:
        assert text in message, f"{text!r} not in error: {message}"
    return message
