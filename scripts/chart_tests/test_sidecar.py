"""Sidecar mode: the chart as a dependency (examples/sidecar-app) and the plain manifest."""

from __future__ import annotations

import pytest

import chartlib
from conftest import render_fails, render_ok


def test_sidecar_mode_renders_only_the_config_map(renders):
    assert renders["sidecar"].kinds() == ["ConfigMap"]
    assert "prime-sigv4-proxy.sidecar" in renders["sidecar"].notes


def test_example_app_objects(example_app):
    assert example_app.kinds() == ["ConfigMap", "Deployment", "Service", "ServiceAccount"]
    dep = example_app.one("Deployment")
    assert dep["metadata"]["name"] == "demo-sidecar-app", "the only Deployment is the application's"
    svc = example_app.one("Service")
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["http"], "the proxy is not exposed"


def test_example_app_has_the_proxy_next_to_the_app(example_app):
    dep = example_app.one("Deployment")
    spec = chartlib.pod_spec(dep)
    assert [c["name"] for c in spec["containers"]] == ["app", chartlib.PROXY_CONTAINER]
    c = chartlib.proxy_container(dep)
    assert c["image"] == "registry.example.com/platform/prime-sigv4-proxy:0.1.0"
    assert c["args"] == ["--config", chartlib.CONFIG_PATH]
    _, cfg = chartlib.config_toml(example_app)
    assert cfg["listen"] == "127.0.0.1:8080", "loopback: only the application's own pod"
    assert cfg["admin_listen"] == "0.0.0.0:9901", "the kubelet probes the pod IP"
    assert chartlib.env_value(c, "PRIME_PROXY_LISTEN") == cfg["listen"]
    assert chartlib.env_value(c, "PRIME_PROXY_ADMIN_LISTEN") == cfg["admin_listen"]
    assert cfg["rate_limit"] == {"requests_per_second": 20, "burst": 40, "max_wait_ms": 200}
    app = spec["containers"][0]
    assert chartlib.env_value(app, "PRIME_API_BASE_URL") == "http://127.0.0.1:8080"


def test_example_app_port_names_do_not_clash(example_app):
    spec = chartlib.pod_spec(example_app.one("Deployment"))
    names = [p["name"] for c in spec["containers"] + spec.get("initContainers", []) for p in c.get("ports", [])]
    assert len(names) == len(set(names)), names
    numbers = [p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])]
    assert len(numbers) == len(set(numbers)), numbers


@pytest.mark.parametrize("kind,path", [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")])
def test_example_app_probes(example_app, kind, path):
    c = chartlib.proxy_container(example_app.one("Deployment"))
    assert c[kind]["httpGet"]["path"] == path
    assert chartlib.container_port(c, c[kind]["httpGet"]["port"])["containerPort"] == 9901


def test_example_app_mounts_the_subchart_config_map(example_app):
    dep = example_app.one("Deployment")
    c = chartlib.proxy_container(dep)
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == chartlib.CONFIG_PATH)
    assert mount["readOnly"] is True
    vol = next(v for v in chartlib.pod_spec(dep)["volumes"] if v["name"] == mount["name"])
    assert vol["configMap"]["name"] == example_app.one("ConfigMap")["metadata"]["name"]
    text, _ = chartlib.config_toml(example_app)
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/prime-sigv4-proxy-config"] == chartlib.config_checksum(text)
    assert annotations["prometheus.io/port"] == "9901"


def test_example_app_security(example_app):
    dep = example_app.one("Deployment")
    sc = chartlib.proxy_container(dep)["securityContext"]
    assert sc["runAsNonRoot"] and sc["runAsUser"] == 65532 and sc["readOnlyRootFilesystem"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    sa = example_app.one("ServiceAccount")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    assert chartlib.pod_spec(dep)["serviceAccountName"] == sa["metadata"]["name"]
    assert chartlib.pod_spec(dep)["terminationGracePeriodSeconds"] * 1000 > 10000


def test_native_sidecar_variant():
    app = chartlib.render_example_app({"prime-sigv4-proxy": {"sidecar": {"nativeSidecar": True}}})
    spec = chartlib.pod_spec(app.one("Deployment"))
    assert [c["name"] for c in spec["containers"]] == ["app"]
    (init,) = spec["initContainers"]
    assert init["name"] == chartlib.PROXY_CONTAINER and init["restartPolicy"] == "Always"
    assert init["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_sidecar_template_refuses_standalone_mode():
    with pytest.raises(chartlib.helm.HelmError, match="mode: sidecar"):
        chartlib.render_example_app({"prime-sigv4-proxy": {"mode": "standalone"}})


def test_plain_manifest_matches_the_chart(sidecar_manifest, example_app):
    """examples/sidecar-manifest.yaml must stay equivalent to what the chart renders."""
    assert sidecar_manifest.kinds() == ["ConfigMap", "Deployment", "ServiceAccount"]
    plain = chartlib.proxy_container(sidecar_manifest.one("Deployment"))
    helm_c = chartlib.proxy_container(example_app.one("Deployment"))
    for key in ("args", "ports", "securityContext", "resources", "startupProbe", "livenessProbe",
                "readinessProbe", "env"):
        assert plain[key] == helm_c[key], key
    assert [(m["mountPath"], m.get("subPath"), m["readOnly"]) for m in plain["volumeMounts"]] == \
        [(m["mountPath"], m.get("subPath"), m["readOnly"]) for m in helm_c["volumeMounts"]]
    _, plain_cfg = chartlib.config_toml(sidecar_manifest)
    _, helm_cfg = chartlib.config_toml(example_app)
    assert plain_cfg == helm_cfg
    dep = sidecar_manifest.one("Deployment")
    assert chartlib.pod_spec(dep)["securityContext"]["runAsNonRoot"] is True
    vol = next(v for v in chartlib.pod_spec(dep)["volumes"] if "configMap" in v)
    assert vol["configMap"]["name"] == sidecar_manifest.one("ConfigMap")["metadata"]["name"]
    sa = sidecar_manifest.one("ServiceAccount")
    assert "eks.amazonaws.com/role-arn" in sa["metadata"]["annotations"]


def test_sidecar_mode_on_its_own_still_checks_values():
    r = render_ok({"mode": "sidecar"})
    assert r.kinds() == ["ConfigMap"]
    render_fails({"mode": "sidecar", "replicaCount": "x"}, "replicaCount")
