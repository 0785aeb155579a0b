"""config.toml: the `config` value rendered as TOML by the chart's own template."""

from __future__ import annotations

import tomllib

import pytest

import chartlib
from conftest import SCENARIOS, render_fails, render_ok


def expected_config(values: dict | None, mode: str) -> dict:
    """The `config` value Helm would use, plus what the chart derives."""
    merged = chartlib.merged_values(values)
    cfg = merged["config"]
    ports = merged["ports"]
    cfg.setdefault("listen", f"{'127.0.0.1' if mode == 'sidecar' else '0.0.0.0'}:{ports['proxy']}")
    cfg.setdefault("admin_listen", f"0.0.0.0:{ports['admin']}")
    return cfg


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rendered_toml_parses_and_equals_the_values(scenario, renders, scenario_values):
    values = scenario_values[scenario]
    text, cfg = chartlib.config_toml(renders[scenario])
    expected = expected_config(values or None, values.get("mode", "standalone"))
    if values.get("tls", {}).get("enabled"):
        cfg = dict(cfg)
        cfg.pop("tls")  # checked in test_tls.py
    assert cfg == expected, text


def test_default_config_keeps_spec_key_names(renders):
    _, cfg = chartlib.config_toml(renders["default"])
    assert set(cfg) == {"listen", "admin_listen", "max_body_bytes", "shutdown_grace_ms",
                        "upstream", "retry", "rate_limit"}
    assert cfg["shutdown_grace_ms"] == 10000
    assert cfg["retry"]["retry_on_status"] == [429, 500, 502, 503, 504]
    assert isinstance(cfg["max_body_bytes"], int), "integers must not become floats (1.048576e+06)"


def test_sidecar_listens_on_loopback(renders):
    _, cfg = chartlib.config_toml(renders["sidecar"])
    assert cfg["listen"] == "127.0.0.1:8080"
    assert cfg["admin_listen"] == "0.0.0.0:9901"
    assert cfg["credentials"]["role_arn"].startswith("arn:aws:iam::")
    assert cfg["regions"] == {"na": {"endpoint": "https://prime-apis.amazon.com"}}


def test_standalone_full_tables_and_arrays_of_tables(renders):
    _, cfg = chartlib.config_toml(renders["standalone-full"])
    assert cfg["rate_limit"]["requests_per_second"] == 12.5
    assert cfg["rate_limit"]["routes"] == [
        {"path_prefix": "/v1/orders", "method": "POST", "requests_per_second": 2, "burst": 4}]
    assert cfg["regions"]["eu"]["marketplaces"][0] == "UK"
    assert cfg["upstream"]["http2"] is False


TRICKY = {
    "config": {
        "credentials": {
            "role_arn": "arn:aws:iam::123456789012:role/prime",
            "session_name": 'quote" backslash\\ tab\t newline\n unicode é ✓ <&>',
            "external_id": "",
        },
        "upstream": {"allow_plain_http": True, "pool_max_idle_per_host": 0},
        "regions": {
            "na": {"endpoint": "https://prime-apis.amazon.com", "signing_region": "us-east-1",
                   "marketplaces": ["US", "CA", "MX"]},
            "my.region": {"endpoint": "http://127.0.0.1:9", "signing_region": "us-east-1",
                          "marketplaces": ["ZZ"]},
        },
        "rate_limit": {
            "requests_per_second": 0.25, "burst": 1, "max_wait_ms": 4294967296,
            "routes": [{"path_prefix": "/a", "requests_per_second": 1},
                       {"path_prefix": "/b", "method": "GET", "requests_per_second": 1.5, "burst": 3}],
        },
        "listener": {"max_connections": 10, "nested": {"deeper": {"flag": False}}},
        "retry": {"retry_on_status": [], "max_attempts": 1},
        "max_body_bytes": 1048576,
    }
}


def test_toml_renderer_handles_strings_floats_nesting_and_quoting():
    r = render_ok(TRICKY)
    text, cfg = chartlib.config_toml(r)
    expected = expected_config(TRICKY, "standalone")
    assert cfg == expected, text
    assert '"my.region"' in text, "keys that are not bare keys are quoted"
    assert "[[rate_limit.routes]]" in text
    assert "max_wait_ms = 4294967296" in text


def test_null_leaves_a_key_out():
    _, cfg = chartlib.config_toml(render_ok({"config": {"max_body_bytes": None, "retry": None}}))
    assert "max_body_bytes" not in cfg and "retry" not in cfg


def test_toml_is_valid_for_every_scenario_value_file(scenario_values):
    # Render each values file on its own, then parse (guards against TOML syntax errors only).
    for values in scenario_values.values():
        text, _ = chartlib.config_toml(render_ok(values or None))
        tomllib.loads(text)


def test_listen_override_is_kept_and_mirrored_in_env():
    r = render_ok({"config": {"listen": "[::]:8080", "admin_listen": "[::]:9901"}})
    _, cfg = chartlib.config_toml(r)
    c = chartlib.proxy_container(r.one("Deployment"))
    assert cfg["listen"] == "[::]:8080" == chartlib.env_value(c, "PRIME_PROXY_LISTEN")
    assert cfg["admin_listen"] == "[::]:9901" == chartlib.env_value(c, "PRIME_PROXY_ADMIN_LISTEN")


def test_same_proxy_and_admin_port_is_refused():
    render_fails({"ports": {"proxy": 9000, "admin": 9000}}, "must differ")
