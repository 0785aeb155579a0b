"""The Grafana dashboard and the PrometheusRule: rendered only when asked for, found by Grafana's
sidecar and the Prometheus operator, every query parses as PromQL, and every series and label it
uses is one the real binary exposes on /metrics (so they cannot drift from the code)."""

from __future__ import annotations

import json
import re

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

import chartlib
import promql
from conftest import render_fails, render_ok

BOTH = {"dashboards": {"enabled": True}, "prometheusRule": {"enabled": True}}
DASHBOARD_CM = f"{chartlib.RELEASE}-prime-sigv4-proxy-dashboard"
DASHBOARD_KEY = "prime-sigv4-proxy.json"

ALERTS = {
    "PrimeSigv4ProxyHigh5xxRatio", "PrimeSigv4ProxyPrime403", "PrimeSigv4ProxyCredentialsExpiring",
    "PrimeSigv4ProxyCredentialsUnavailable", "PrimeSigv4ProxyRateLimited",
    "PrimeSigv4ProxySharedRateLimitFallback", "PrimeSigv4ProxyLogLinesDropped",
    "PrimeSigv4ProxyMemoryBudgetFull", "PrimeSigv4ProxyOverloaded",
}

# What an operator must see on the dashboard: at least one query uses each of these series.
DASHBOARD_SERIES = {
    "prime_proxy_requests_total", "prime_proxy_request_duration_seconds_bucket",
    "prime_proxy_upstream_attempts_total", "prime_proxy_retries_total",
    "prime_proxy_upstream_auth_failures_total", "prime_proxy_credentials_expiry_seconds",
    "prime_proxy_rate_limited_total", "prime_proxy_rate_limit_shared_up",
    "prime_proxy_in_flight_requests", "prime_proxy_buffered_body_bytes",
    "prime_proxy_log_lines_dropped_total", "prime_proxy_spans_dropped_total",
    "prime_proxy_overloaded_total",
}


@pytest.fixture(scope="module")
def exposed(exposed_metrics) -> dict[str, set[str]]:
    """Series name (histograms: _bucket, _sum, _count) -> the label names the binary gives it."""
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposed_metrics):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    assert "prime_proxy_requests_total" in series, exposed_metrics[:2000]
    return series


@pytest.fixture(scope="module")
def both() -> chartlib.Rendered:
    return render_ok(BOTH)


@pytest.fixture(scope="module")
def dashboard(both) -> dict:
    cm = both.one("ConfigMap", DASHBOARD_CM)
    return json.loads(cm["data"][DASHBOARD_KEY])


@pytest.fixture(scope="module")
def rules(both) -> list[dict]:
    rule = both.one("PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and variable query, Grafana variables filled in."""
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            queries.append((f"panel {panel['title']!r} {target['refId']}",
                            promql.grafana_to_promql(target["expr"])))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            selector, label = promql.label_values_query(variable["query"]["query"])
            queries.append((f"variable {variable['name']}",
                            promql.grafana_to_promql(f"count by ({label}) ({selector})")))
    return queries


def check_against_binary(where: str, expr: str, exposed: dict[str, set[str]]) -> None:
    try:
        uses = promql.uses(expr)
    except ValueError as exc:
        raise AssertionError(f"{where}: not valid PromQL ({exc}): {expr}") from None
    assert uses.selectors, f"{where}: selects no series: {expr}"
    for name, labels in uses.selectors.items():
        assert name in exposed, f"{where}: {name} is not exposed by the binary's /metrics: {expr}"
        unknown = labels - exposed[name] - promql.TARGET_LABELS
        assert not unknown, f"{where}: {name} has no label {sorted(unknown)} (it has {sorted(exposed[name])})"
    for by, names in uses.groupings:
        available = set().union(*(exposed[n] for n in names)) | promql.TARGET_LABELS
        assert by <= available, f"{where}: grouped by {sorted(by - available)}, which {sorted(names)} lack"


# ----------------------------------------------------------------------------------------------
# Rendered only when asked for


def test_dashboards_and_rules_are_off_by_default(renders):
    for name in ("default", "sidecar", "standalone-full"):
        assert not renders[name].all("PrometheusRule"), name
        assert [cm["metadata"]["name"] for cm in renders[name].all("ConfigMap")] == \
            [f"{chartlib.RELEASE}-prime-sigv4-proxy"], name


def test_both_render_in_sidecar_mode_too():
    rendered = render_ok({**BOTH, "mode": "sidecar"})
    assert rendered.one("PrometheusRule")
    assert rendered.one("ConfigMap", DASHBOARD_CM)


# ----------------------------------------------------------------------------------------------
# Dashboard


def test_dashboard_config_map_carries_the_sidecar_label(both):
    cm = both.one("ConfigMap", DASHBOARD_CM)
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == chartlib.NAMESPACE
    assert list(cm["data"]) == [DASHBOARD_KEY]


def test_dashboard_label_namespace_and_annotations_are_configurable():
    rendered = render_ok({"dashboards": {
        "enabled": True, "namespace": "monitoring", "sidecarLabel": "grafana.com/dashboard",
        "sidecarLabelValue": "prime", "labels": {"team": "checkout"},
        "annotations": {"grafana_folder": "Prime"}}})
    meta = rendered.one("ConfigMap", DASHBOARD_CM)["metadata"]
    assert meta["namespace"] == "monitoring"
    assert meta["labels"]["grafana.com/dashboard"] == "prime"
    assert "grafana_dashboard" not in meta["labels"]
    assert meta["labels"]["team"] == "checkout"
    assert meta["annotations"] == {"grafana_folder": "Prime"}


def test_dashboard_is_a_grafana_dashboard_on_a_chosen_prometheus(dashboard):
    assert dashboard["uid"] == "prime-sigv4-proxy" and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"namespace", "pod", "region"} <= set(variables)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert panel.get("description"), f"panel {panel['title']!r} says nothing about what it shows"
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]


def test_dashboard_shows_what_an_operator_needs(dashboard):
    used = set()
    for _, expr in dashboard_queries(dashboard):
        used |= set(promql.uses(expr).selectors)
    missing = DASHBOARD_SERIES - used
    assert not missing, f"no dashboard panel shows {sorted(missing)}"


def test_every_dashboard_query_parses_and_uses_only_what_the_binary_exposes(dashboard, exposed):
    queries = dashboard_queries(dashboard)
    assert len(queries) > 20
    for where, expr in queries:
        check_against_binary(where, expr, exposed)


def test_dashboard_queries_select_the_chosen_namespace_and_pod(dashboard):
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            for name, labels in promql.uses(promql.grafana_to_promql(target["expr"])).selectors.items():
                assert {"namespace", "pod"} <= labels, f"panel {panel['title']!r}: {name} ignores $namespace/$pod"


# ----------------------------------------------------------------------------------------------
# PrometheusRule


def test_prometheus_rule_has_the_alerts_to_act_on(both, rules):
    rule = both.one("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == chartlib.NAMESPACE
    assert {r["alert"] for r in rules} == ALERTS
    for r in rules:
        # The PrometheusRule CRD's rule fields (no offline schema for kubernetes-validate).
        assert set(r) == {"alert", "expr", "for", "labels", "annotations"}, r
        assert all(isinstance(v, str) for v in [*r["labels"].values(), *r["annotations"].values()]), r
        assert re.fullmatch(r"[0-9]+[smh]", r["for"]), r
        assert r["labels"]["severity"] in {"critical", "warning"}, r
        summary, description = r["annotations"]["summary"], r["annotations"]["description"]
        assert summary and len(description) > 100, f"{r['alert']}: say what happened and what to do"


def test_every_alert_parses_and_uses_only_what_the_binary_exposes(rules, exposed):
    for r in rules:
        check_against_binary(r["alert"], r["expr"], exposed)


def test_alert_annotations_name_only_labels_the_alert_carries(rules):
    for r in rules:
        carried = promql.result_labels(promql.parse(r["expr"]))
        assert carried is not None, f"{r['alert']}: aggregate, so the alert has known labels"
        for text in r["annotations"].values():
            named = set(re.findall(r"\$labels\.(\w+)", text))
            assert named <= carried, f"{r['alert']}: names $labels.{sorted(named - carried)}, expr keeps {sorted(carried)}"
            assert text.count("{{") == text.count("}}"), f"{r['alert']}: unbalanced template: {text}"


def alert(rendered: chartlib.Rendered, name: str) -> dict:
    found = [r for g in rendered.one("PrometheusRule")["spec"]["groups"] for r in g["rules"] if r["alert"] == name]
    assert len(found) == 1, name
    return found[0]


def test_alerts_select_the_release_namespace_by_default(rules):
    for r in rules:
        for name, labels in promql.uses(r["expr"]).selectors.items():
            assert "namespace" in labels, f"{r['alert']}: {name} is not limited to the release's namespace"
        assert 'namespace="prime"' in r["expr"], r["alert"]


def test_alert_thresholds_selector_and_grouping_follow_the_values(exposed):
    rendered = render_ok({
        "config": {"listener": {"max_buffered_bytes": 134217728}},
        "resources": {"limits": {"memory": "256Mi"}},
        "prometheusRule": {
            "enabled": True, "namespace": "monitoring", "labels": {"release": "kps"},
            "selector": 'job="demo-prime-sigv4-proxy"', "groupBy": ["cluster", "namespace"],
            "podLabel": "instance", "additionalLabels": {"team": "checkout"},
            "alerts": {"high5xxRatio": {"ratio": 0.2, "for": "15m", "severity": "warning"},
                       "credentialsExpiring": {"seconds": 900},
                       "memoryBudget": {"for": "1m"},
                       "logLinesDropped": {"enabled": False}}}})
    rule = rendered.one("PrometheusRule")
    assert rule["metadata"]["namespace"] == "monitoring"
    assert rule["metadata"]["labels"]["release"] == "kps"
    high = alert(rendered, "PrimeSigv4ProxyHigh5xxRatio")
    assert high["expr"].rstrip().endswith("> 0.2")
    assert "sum by (cluster, namespace, region)" in high["expr"]
    assert high["for"] == "15m" and high["labels"] == {"severity": "warning", "team": "checkout"}
    assert "More than 20% of the requests" in high["annotations"]["description"]
    assert "< 900 > 0" in alert(rendered, "PrimeSigv4ProxyCredentialsExpiring")["expr"]
    budget = alert(rendered, "PrimeSigv4ProxyMemoryBudgetFull")
    assert budget["for"] == "1m" and "134217728 bytes" in budget["annotations"]["description"]
    overloaded = alert(rendered, "PrimeSigv4ProxyOverloaded")
    assert "sum by (cluster, namespace, instance)" in overloaded["expr"]
    assert "{{ $labels.instance }}" in overloaded["annotations"]["summary"]
    names = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert names == ALERTS - {"PrimeSigv4ProxyLogLinesDropped"}
    for g in rule["spec"]["groups"]:
        for r in g["rules"]:
            assert 'job="demo-prime-sigv4-proxy"' in r["expr"] and "namespace=" not in r["expr"], r["alert"]
            uses = promql.uses(r["expr"])
            assert all("job" in labels for labels in uses.selectors.values()), r["alert"]


def test_overload_alerts_count_refusals_by_their_reason(both):
    budget = alert(both, "PrimeSigv4ProxyMemoryBudgetFull")
    assert 'prime_proxy_overloaded_total' in budget["expr"] and 'reason="memory_budget"' in budget["expr"]
    assert "67108864 bytes" in budget["annotations"]["description"]
    admission = alert(both, "PrimeSigv4ProxyOverloaded")
    assert 'reason="in_flight"' in admission["expr"]


def test_a_misspelt_series_is_caught(exposed):
    """The check itself: a name the binary does not expose, or a label it does not give the
    series, fails."""
    with pytest.raises(AssertionError, match="prime_proxy_request_total is not exposed"):
        check_against_binary("t", 'sum(rate(prime_proxy_request_total{namespace="x"}[5m]))', exposed)
    with pytest.raises(AssertionError, match=r"has no label \['marketplace'\]"):
        check_against_binary("t", 'sum(rate(prime_proxy_requests_total{marketplace="US"}[5m]))', exposed)
    with pytest.raises(AssertionError, match=r"grouped by \['kind'\]"):
        check_against_binary("t", "sum by (kind) (rate(prime_proxy_requests_total[5m]))", exposed)
    with pytest.raises(AssertionError, match="not valid PromQL"):
        check_against_binary("t", "sum(rate(prime_proxy_requests_total[5m])", exposed)
    # A histogram's series are its _bucket/_sum/_count, not the family name.
    with pytest.raises(AssertionError, match="prime_proxy_request_duration_seconds is not exposed"):
        check_against_binary("t", "prime_proxy_request_duration_seconds", exposed)


@pytest.mark.parametrize("values, where", [
    ({"prometheusRule": {"alerts": {"high5xxRatio": {"ratio": 5}}}}, "ratio"),
    ({"prometheusRule": {"alerts": {"credentialsExpiring": {"for": "ten minutes"}}}}, "for"),
    ({"prometheusRule": {"alerts": {"http5xx": {"enabled": True}}}}, "http5xx"),
    ({"prometheusRule": {"groupBy": ["name-space"]}}, "groupBy"),
    ({"dashboards": {"sidecarLabel": ""}}, "sidecarLabel"),
    ({"dashboards": {"enable": True}}, "enable"),
])
def test_bad_monitoring_values_are_refused(values, where):
    render_fails(values, where)
