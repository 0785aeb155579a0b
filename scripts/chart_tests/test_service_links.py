"""Service links: Kubernetes writes `<SERVICE>_SERVICE_HOST`, `<SERVICE>_PORT=tcp://…` and more
into every pod for every Service in the namespace. For release `prime-proxy` the chart's own
Service is `prime-proxy-prime-sigv4-proxy`, so its pods would get PRIME_PROXY_* variables: the
chart turns the links off on every pod it renders, and the proxy ignores them anyway."""

from __future__ import annotations

import pytest

import chartlib
from proxybin import check_config

RELEASE = "prime-proxy"


@pytest.fixture(scope="module")
def release() -> chartlib.Rendered:
    return chartlib.render(chartlib.CHART_DIR, None, name=RELEASE)


def test_the_release_service_would_inject_prime_proxy_variables(release):
    svc = release.one("Service")
    assert svc["metadata"]["name"] == "prime-proxy-prime-sigv4-proxy"
    links = chartlib.service_links(svc, "10.96.0.12")
    assert links["PRIME_PROXY_PRIME_SIGV4_PROXY_PORT"] == "tcp://10.96.0.12:8080"
    assert "PRIME_PROXY_PRIME_SIGV4_PROXY_SERVICE_PORT_HTTP" in links


def test_every_pod_the_chart_renders_has_no_service_links(release):
    pods = [chartlib.pod_spec(d) for d in release.all("Deployment")]
    pods += [p["spec"] for p in release.all("Pod")]
    assert len(pods) == 2, "the Deployment and the helm test Pod"
    for spec in pods:
        assert spec["enableServiceLinks"] is False


def test_the_example_sidecar_app_pods_have_no_service_links():
    for app in (chartlib.render_example_app(name=RELEASE),
                chartlib.render_example_app({"prime-sigv4-proxy": {"sidecar": {"nativeSidecar": True}}},
                                            name=RELEASE)):
        assert chartlib.pod_spec(app.one("Deployment"))["enableServiceLinks"] is False


def test_the_plain_sidecar_manifest_has_no_service_links(sidecar_manifest):
    assert chartlib.pod_spec(sidecar_manifest.one("Deployment"))["enableServiceLinks"] is False


def test_the_proxy_accepts_the_environment_its_pod_gets(release):
    text, _ = chartlib.config_toml(release)
    dep = release.one("Deployment")
    env = chartlib.pod_environment(dep, release.all("Service"))
    assert "KUBERNETES_SERVICE_HOST" in env and "PRIME_PROXY_LISTEN" in env
    assert not any(name.startswith("PRIME_PROXY_PRIME_SIGV4") for name in env), "links are off"
    result = check_config(text, env)
    assert result.returncode == 0, result.stderr


def test_the_proxy_accepts_the_environment_even_with_service_links_on(release):
    """An application pod that keeps enableServiceLinks (a sidecar next to it), in a namespace with
    the release's Service and a Service named `prime-proxy`: the links reach the proxy, which
    must start all the same (a proxy that read them as configuration exited 2 and crash-looped)."""
    text, _ = chartlib.config_toml(release)
    dep = release.one("Deployment")
    chartlib.pod_spec(dep)["enableServiceLinks"] = True
    services = release.all("Service") + [chartlib.service("prime-proxy", [("http", 8080)])]
    env = chartlib.pod_environment(dep, services)
    for name in ("PRIME_PROXY_PORT", "PRIME_PROXY_SERVICE_HOST",
                 "PRIME_PROXY_PRIME_SIGV4_PROXY_SERVICE_PORT_HTTP",
                 "PRIME_PROXY_PRIME_SIGV4_PROXY_PORT_9901_TCP_ADDR"):
        assert name in env, name
    result = check_config(text, env)
    assert result.returncode == 0, result.stderr
    # …while a real mistake in the same environment is still refused, naming it.
    result = check_config(text, {**env, "PRIME_PROXY_RETRY__MAX_ATEMPTS": "5"})
    assert result.returncode == 2 and "retry.max_atempts" in result.stderr, result.stderr
