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


def test_network_policy_default_has_no_port_80():
    np = render_ok({"networkPolicy": {"enabled": True}}).one("NetworkPolicy")
    assert sorted((proto, port) for proto, port, _ in egress_ports(np)) == [("TCP", 53), ("TCP", 443), ("UDP", 53)]
    ingress = np["spec"]["ingress"]
    assert len(ingress) == 1 and "from" not in ingress[0]
    assert sorted(p["port"] for p in ingress[0]["ports"]) == [8080, 9901]


def test_network_policy_ingress_peers(renders, scenario_values):
    np = renders["standalone-full"].one("NetworkPolicy")
    assert np["spec"]["ingress"][0]["from"] == scenario_values["standalone-full"]["networkPolicy"]["ingressFrom"]


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
    assert not kinds & {"HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor", "NetworkPolicy"}
