"""The proxy container and pod, as rendered by the chart in standalone mode."""

from __future__ import annotations

import math

import pytest

import chartlib
from conftest import STANDALONE_SCENARIOS, render_fails, render_ok


@pytest.fixture(params=STANDALONE_SCENARIOS)
def standalone(request, renders) -> chartlib.Rendered:
    return renders[request.param]


@pytest.fixture
def deployment(standalone):
    return standalone.one("Deployment")


def admin_port_number(container) -> int:
    return chartlib.container_port(container, "admin")["containerPort"]


def test_default_ports_and_kinds(renders):
    r = renders["default"]
    assert r.kinds() == ["ConfigMap", "Deployment", "NetworkPolicy", "Pod", "Service", "ServiceAccount"]
    c = chartlib.proxy_container(r.one("Deployment"))
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8080, "admin": 9901}


@pytest.mark.parametrize("kind,path", [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
                                        ("startupProbe", "/healthz")])
def test_probes_hit_the_admin_port(deployment, kind, path):
    c = chartlib.proxy_container(deployment)
    probe = c[kind]
    assert probe["httpGet"]["path"] == path
    port = chartlib.container_port(c, probe["httpGet"]["port"])
    assert port["containerPort"] == admin_port_number(c)
    assert probe["httpGet"].get("scheme", "HTTP") == "HTTP"


def test_admin_listener_binds_all_interfaces_for_the_kubelet(standalone, deployment):
    c = chartlib.proxy_container(deployment)
    _, cfg = chartlib.config_toml(standalone)
    assert cfg["admin_listen"] == f"0.0.0.0:{admin_port_number(c)}"
    assert cfg["listen"] == f"0.0.0.0:{chartlib.container_port(c, c['ports'][0]['name'])['containerPort']}"
    # The image sets PRIME_PROXY_LISTEN/ADMIN_LISTEN, which would override the file: the chart
    # must set them to the same addresses.
    assert chartlib.env_value(c, "PRIME_PROXY_LISTEN") == cfg["listen"]
    assert chartlib.env_value(c, "PRIME_PROXY_ADMIN_LISTEN") == cfg["admin_listen"]


def test_container_security_context(deployment):
    sc = chartlib.proxy_container(deployment)["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert sc.get("privileged", False) is False


def test_pod_security_context(deployment):
    spec = chartlib.pod_spec(deployment)
    psc = spec["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] == 65532
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    assert not spec.get("hostNetwork") and not spec.get("hostPID")


def test_resources_requests_and_memory_limit(deployment):
    res = chartlib.proxy_container(deployment)["resources"]
    assert res["requests"]["cpu"] and res["requests"]["memory"]
    assert res["limits"]["memory"]
    assert "cpu" not in res["limits"], "no CPU limit by default (throttling adds latency)"


MIB = 1 << 20
BUDGET = 64 * MIB      # listener.max_buffered_bytes, the proxy's default
OVERHEAD = 48 * MIB    # the chart's fixed overhead (values.yaml, resources)


def test_default_memory_follows_from_the_budget():
    res = chartlib.proxy_container(render_ok().one("Deployment"))["resources"]
    assert res["limits"]["memory"] == "128Mi" and res["requests"]["memory"] == "64Mi"
    assert 128 * MIB >= BUDGET + OVERHEAD  # 112 MiB


@pytest.mark.parametrize("budget,limit,ok", [
    (None, "111Mi", False),
    (None, "112Mi", True),
    (None, str(112 * MIB), True),
    (None, "100000Ki", False),
    (256 * MIB, "128Mi", False),
    (256 * MIB, "320Mi", True),
    (256 * MIB, "1Gi", True),
    (256 * MIB, "400M", True),  # not Ki/Mi/Gi or bytes: not checked
])
def test_a_memory_limit_below_budget_plus_overhead_is_refused(budget, limit, ok):
    values = {"resources": {"limits": {"memory": limit}}}
    if budget:
        values["config"] = {"listener": {"max_buffered_bytes": budget}}
    if ok:
        render_ok(values)
    else:
        render_fails(values, "resources.limits.memory", "max_buffered_bytes")


def test_config_map_mounted_read_only_and_passed_with_config(standalone, deployment):
    c = chartlib.proxy_container(deployment)
    assert c["args"] == ["--config", chartlib.CONFIG_PATH]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == chartlib.CONFIG_PATH)
    assert mount["readOnly"] is True
    assert mount["subPath"] == "config.toml"
    volume = next(v for v in chartlib.pod_spec(deployment)["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == chartlib.config_map(standalone)["metadata"]["name"]
    assert {"key": "config.toml", "path": "config.toml"} in volume["configMap"]["items"]


def test_every_mount_is_read_only(deployment):
    for m in chartlib.proxy_container(deployment)["volumeMounts"]:
        assert m["readOnly"] is True, m


def test_config_checksum_annotation_matches_config(standalone, deployment):
    text, _ = chartlib.config_toml(standalone)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/prime-sigv4-proxy-config"] == chartlib.config_checksum(text)


def test_config_change_changes_checksum():
    a = render_ok({"config": {"retry": {"max_attempts": 3}}}).one("Deployment")
    b = render_ok({"config": {"retry": {"max_attempts": 4}}}).one("Deployment")
    key = "checksum/prime-sigv4-proxy-config"
    assert a["spec"]["template"]["metadata"]["annotations"][key] != b["spec"]["template"]["metadata"]["annotations"][key]


def test_prometheus_scrape_annotations(deployment):
    c = chartlib.proxy_container(deployment)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(admin_port_number(c))
    assert annotations["prometheus.io/path"] == "/metrics"


def test_termination_grace_exceeds_shutdown_grace(standalone, deployment):
    _, cfg = chartlib.config_toml(standalone)
    grace_ms = cfg.get("shutdown_grace_ms", 10000)
    c = chartlib.proxy_container(deployment)
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    tgps = chartlib.pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert tgps * 1000 > grace_ms + pre_stop * 1000
    assert tgps >= math.ceil(grace_ms / 1000) + pre_stop + 1


def test_short_termination_grace_is_refused():
    render_fails({"terminationGracePeriodSeconds": 10, "config": {"shutdown_grace_ms": 10000}},
                 "terminationGracePeriodSeconds")
    render_fails({"terminationGracePeriodSeconds": 12, "lifecycle": {"preStopSleepSeconds": 5}},
                 "preStopSleepSeconds")


def test_pre_stop_sleep_uses_the_native_sleep_action(renders):
    c = chartlib.proxy_container(renders["standalone-full"].one("Deployment"))
    assert c["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}, "the image has no shell for exec hooks"
    assert "lifecycle" not in chartlib.proxy_container(renders["default"].one("Deployment"))


def test_image_reference():
    c = chartlib.proxy_container(render_ok().one("Deployment"))
    meta = chartlib.yaml.safe_load((chartlib.CHART_DIR / "Chart.yaml").read_text())
    assert c["image"] == f"prime-sigv4-proxy:{meta['appVersion']}"
    c = chartlib.proxy_container(render_ok({"image": {"repository": "r.example/p", "digest": "sha256:" + "a" * 64}}).one("Deployment"))
    assert c["image"] == "r.example/p@sha256:" + "a" * 64


def test_replicas_left_to_hpa_when_autoscaling(renders):
    assert renders["default"].one("Deployment")["spec"]["replicas"] == 2
    assert "replicas" not in renders["standalone-full"].one("Deployment")["spec"]


def test_service_targets_proxy_and_admin_ports(renders):
    for name in STANDALONE_SCENARIOS:
        r = renders[name]
        svc, dep = r.one("Service"), r.one("Deployment")
        c = chartlib.proxy_container(dep)
        assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
        targets = {p["name"]: chartlib.container_port(c, p["targetPort"])["containerPort"] for p in svc["spec"]["ports"]}
        assert targets["admin"] == 9901
        assert targets["https" if name == "tls" else "http"] == 8080


def test_helm_test_pod_checks_healthz(renders):
    pod = renders["default"].one("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["containers"][0]["args"][-1].endswith(":9901/healthz")
