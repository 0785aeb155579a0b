"""ServiceAccount (IRSA), NetworkPolicy, HPA, PDB, ServiceMonitor, NOTES."""

from __future__ import annotations

import chartlib
from conftest import render_ok

IRSA = "eks.amazonaws.com/role-arn"


def test_irsa_annotation_on_the_service_account_the_pods_use(renders, scenario_values):
    r = renders["standalone-full"]
    sa = r.one("ServiceAccount")
    expected = scenario_values["standalone-full"]["serviceAccount"]["annotations"][IRSA]
    assert sa["metadata"]["annotations"][IRSA] == expected
    assert chartlib.pod_spec(r.one("Deployment"))["serviceAccountName"] == sa["metadata"]["name"]
    assert sa["automountServiceAccountToken"] is False
    assert expected in r.notes


def test_pod_identity_needs_no_annotation_and_notes_say_how(renders):
    r = renders["default"]
    assert not r.one("ServiceAccount")["metadata"].get("annotations")
    assert "create-pod-identity-association" in r.notes
    assert "--service-account demo-prime-sigv4-proxy" in r.notes


def test_existing_service_account():
    r = render_ok({"serviceAccount": {"create": False, "name": "shared"}})
    assert not r.all("ServiceAccount")
    assert chartlib.pod_spec(r.one("Deployment"))["serviceAccountName"] == "shared"


def egress_ports(policy) -> list[tuple[str, int, tuple]]:
    out = []
    for rule in policy["spec"]["egress"]:
        peers = tuple(p.get("ipBlock", {}).get("cidr", "selector") for p in rule.get("to", []))
        for port in rule["ports"]:
            out.append((port["protocol"], port["port"], peers))
    return out


def test_network_policy_egress_is_https_and_dns_only(renders):
    r = renders["standalone-full"]
    np = r.one("NetworkPolicy")
    assert set(np["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ports = egress_ports(np)
    https = [p for p in ports if p[1] == 443]
    assert https == [("TCP", 443, ())], "443 to any destination (Prime endpoints, STS)"
    assert {(proto, port) for proto, port, _ in ports if port == 53} == {("UDP", 53), ("TCP", 53)}
    # Pod Identity agent: port 80, only to its link-local addresses (enabled in this scenario).
    assert [p for p in ports if p[1] not in (443, 53)] == [("TCP", 80, ("169.254.170.23/32", "fd00:ec2::23/128"))]
    dep = r.one("Deployment")
    assert np["spec"]["podSelector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()


CLIENT_LABELS = {"prime-sigv4-proxy/client": "true"}


def ingress_by_port(policy) -> dict[int, list]:
    """Ingress rules by port: the peers each port admits (every rule names its peers)."""
    out = {}
    for rule in policy["spec"]["ingress"]:
        assert "from" in rule and rule["from"], f"a rule without peers admits anyone: {rule}"
        for port in rule["ports"]:
            assert port["protocol"] == "TCP"
            out.setdefault(port["port"], []).extend(rule["from"])
    return out


def test_network_policy_is_on_by_default_and_admits_only_labelled_clients(renders):
    r = renders["default"]
    np = r.one("NetworkPolicy")
    assert sorted((proto, port) for proto, port, _ in egress_ports(np)) == [("TCP", 53), ("TCP", 443), ("UDP", 53)]
    client = {"podSelector": {"matchLabels": CLIENT_LABELS}}  # no namespaceSelector: this namespace
    ports = ingress_by_port(np)
    assert ports == {
        8080: [client],
        9901: [client, {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                        "podSelector": {}}],
    }
    dep = r.one("Deployment")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert np["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert not CLIENT_LABELS.items() <= pod_labels.items(), "the proxy is not its own client"
    # The helm test Pod is a client (it GETs /healthz) and not selected by the policy, whose
    # egress rules would stop it from reaching the Service.
    test_pod = r.one("Pod")["metadata"]["labels"]
    assert CLIENT_LABELS.items() <= test_pod.items()
    assert not np["spec"]["podSelector"]["matchLabels"].items() <= test_pod.items()
    assert not r.one("Service")["spec"]["selector"].items() <= test_pod.items()


def test_network_policy_client_and_scraper_selectors(renders, scenario_values):
    np = renders["standalone-full"].one("NetworkPolicy")
    values = scenario_values["standalone-full"]["networkPolicy"]
    client = {"podSelector": {"matchLabels": CLIENT_LABELS},
              "namespaceSelector": values["clients"]["namespaceSelector"]}
    scraper = {"namespaceSelector": values["metrics"]["namespaceSelector"],
               "podSelector": values["metrics"]["podSelector"]}
    ports = ingress_by_port(np)
    assert ports[8080] == [client] + values["ingressFrom"]
    assert ports[9901] == [client, scraper] + values["ingressFrom"]


def test_network_policy_selector_variants():
    np = render_ok({"networkPolicy": {"clients": {"namespaceSelector": {}},
                                      "metrics": {"namespaceSelector": None}}}).one("NetworkPolicy")
    client = {"podSelector": {"matchLabels": CLIENT_LABELS}, "namespaceSelector": {}}
    assert ingress_by_port(np) == {8080: [client], 9901: [client]}, "any namespace; no scraper"
    # Helm merges maps: the default label is dropped with null.
    labels = {"team": "checkout", "prime-sigv4-proxy/client": None}
    np = render_ok({"networkPolicy": {"clients": {"podLabels": labels},
                                      "metrics": {"podSelector": None}}}).one("NetworkPolicy")
    ports = ingress_by_port(np)
    assert ports[8080] == [{"podSelector": {"matchLabels": {"team": "checkout"}}}]
    assert ports[9901][1] == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}


def test_network_policy_can_be_turned_off():
    assert not render_ok({"networkPolicy": {"enabled": False}}).all("NetworkPolicy")


def test_sidecar_mode_renders_no_network_policy_for_the_proxy(renders):
    assert not renders["sidecar"].all("NetworkPolicy")
    assert not render_ok({"mode": "sidecar", "networkPolicy": {"enabled": True}}).all("NetworkPolicy")
    assert not chartlib.render_example_app().all("NetworkPolicy")


def test_network_policy_lets_the_shared_rate_limit_reach_redis(renders):
    np = renders["shared-limit"].one("NetworkPolicy")
    redis = [p for p in egress_ports(np) if p[1] not in (443, 53)]
    assert redis == [("TCP", 6380, ("10.0.32.0/20",))], "the URL's port, to redisTo"
    for url, port in [("redis://redis.prime.svc:6379/0", 6379), ("rediss://cache.internal", 6379),
                      ("rediss://default:secret@cache.internal:7000/2", 7000),
                      ("redis://[fd00::5]:6390", 6390)]:
        np = render_ok({"config": {"rate_limit": {"shared": {"url": url}}}}).one("NetworkPolicy")
        assert [p for p in egress_ports(np) if p[1] not in (443, 53)] == [("TCP", port, ())], url


def test_hpa_targets_the_deployment(renders):
    r = renders["standalone-full"]
    hpa = r.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": r.one("Deployment")["metadata"]["name"]}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}


def test_pdb(renders):
    r = renders["standalone-full"]
    pdb = r.one("PodDisruptionBudget")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": r.one("Deployment")["spec"]["selector"]}
    pdb = render_ok({"podDisruptionBudget": {"enabled": True}}).one("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1 and "maxUnavailable" not in pdb["spec"]


def test_service_monitor_scrapes_admin_metrics(renders):
    r = renders["standalone-full"]
    sm = r.one("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["endpoints"] == [{"port": "admin", "path": "/metrics", "scheme": "http",
                                        "interval": "30s", "scrapeTimeout": "10s"}]
    svc = r.one("Service")
    assert "admin" in {p["name"] for p in svc["spec"]["ports"]}
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()


def test_optional_objects_are_off_by_default(renders):
    kinds = set(renders["default"].kinds())
    assert not kinds & {"HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor"}
