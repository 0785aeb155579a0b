"""values.schema.json: wrong values fail at install/template time, not in a crash-looping pod."""

from __future__ import annotations

import json

import pytest

import chartlib
from conftest import render_fails, render_ok


def test_schema_is_draft_07_and_closed_at_the_top():
    schema = json.loads((chartlib.CHART_DIR / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    defaults = chartlib.load_values(chartlib.CHART_DIR / "values.yaml")
    assert set(defaults) <= set(schema["properties"]), set(defaults) - set(schema["properties"])


@pytest.mark.parametrize("values,where", [
    ({"mode": "bogus"}, "/mode"),
    ({"replicaCount": "x"}, "/replicaCount"),
    ({"replicaCount": -1}, "/replicaCount"),
    ({"image": {"repository": ""}}, "/image/repository"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"image": {"digest": "latest"}}, "/image/digest"),
    ({"image": {"tag": 1.0}}, "/image/tag"),
    ({"imageTag": "1.0"}, "imageTag"),
    ({"ports": {"admin": 70000}}, "/ports/admin"),
    ({"ports": {"proxy": "8080"}}, "/ports/proxy"),
    ({"tls": {"enabled": "yes"}}, "/tls/enabled"),
    ({"serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": 123}}}, "/serviceAccount/annotations"),
    ({"service": {"type": "Ingress"}}, "/service/type"),
    ({"terminationGracePeriodSeconds": "30"}, "/terminationGracePeriodSeconds"),
    ({"config": {"shutdown_grace_ms": "10s"}}, "/config/shutdown_grace_ms"),
    ({"config": {"retry": {"max_attempts": 0}}}, "/config/retry/max_attempts"),
    ({"config": {"regions": {"na": {"endpoint": "prime-apis.amazon.com"}}}}, "/config/regions/na/endpoint"),
    ({"config": {"upstream": {"http2": "false"}}}, "/config/upstream/http2"),
    ({"serviceMonitor": {"interval": "often"}}, "/serviceMonitor/interval"),
    ({"networkPolicy": {"enabled": True, "egressPorts": [80]}}, "egressPorts"),
    ({"networkPolicy": {"clients": {"podLabels": {"prime-sigv4-proxy/client": True}}}},
     "/networkPolicy/clients/podLabels"),
    ({"networkPolicy": {"metrics": {"namespaceSelector": "monitoring"}}}, "/networkPolicy/metrics/namespaceSelector"),
    ({"sharedRateLimit": {"password": "x"}}, "password"),
    ({"sharedRateLimit": {"passwordSecret": {"name": "r", "key": ""}}}, "/sharedRateLimit/passwordSecret/key"),
    ({"config": {"listener": {"max_in_flight": 0}}}, "/config/listener/max_in_flight"),
])
def test_bad_values_fail_rendering(values, where):
    message = render_fails(values, "schema")
    assert where in message, message


def test_bad_values_fail_validate_schema_and_lint():
    with chartlib.helm.Chart.load(chartlib.CHART_DIR) as chart:
        with pytest.raises(chartlib.helm.HelmValuesError):
            chart.validate_schema({"mode": "bogus"})
        chart.validate_schema({"mode": "sidecar"})
    with pytest.raises(chartlib.LintError, match="mode"):
        chartlib.lint(chartlib.CHART_DIR, {"mode": "bogus"})


def test_subchart_globals_and_condition_flag_are_accepted():
    render_ok({"global": {"imageRegistry": "x"}, "enabled": True})


def test_bad_subchart_values_fail_the_parent_chart():
    with pytest.raises(chartlib.helm.HelmError, match="mode"):
        chartlib.render_example_app({"prime-sigv4-proxy": {"mode": "bogus"}})
