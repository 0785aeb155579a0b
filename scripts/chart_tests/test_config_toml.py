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
    secret = merged["sharedRateLimit"]["passwordSecret"]
    if secret["name"]:
        cfg["rate_limit"].setdefault("shared", {})["password_file"] = \
            f"{chartlib.REDIS_DIR}/{secret['key']}"
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


def test_shared_rate_limit_password_comes_from_the_secret_as_a_file(renders, scenario_values):
    r = renders["shared-limit"]
    _, cfg = chartlib.config_toml(r)
    shared = cfg["rate_limit"]["shared"]
    values = scenario_values["shared-limit"]
    assert shared["url"] == values["config"]["rate_limit"]["shared"]["url"]
    assert shared["key"] == "prime-sigv4-proxy-checkout" and shared["on_error"] == "local"
    assert shared["password_file"] == f"{chartlib.REDIS_DIR}/auth-token"
    dep = r.one("Deployment")
    c = chartlib.proxy_container(dep)
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == chartlib.REDIS_DIR)
    assert mount["readOnly"] is True and "subPath" not in mount
    volume = next(v for v in chartlib.pod_spec(dep)["volumes"] if v["name"] == mount["name"])
    assert volume["secret"] == {"secretName": "prime-limits-redis",
                                "items": [{"key": "auth-token", "path": "auth-token"}]}
    # The password itself is nowhere in what the chart renders.
    assert "password" not in str(c.get("env", [])).lower()


def test_no_password_secret_no_password_file():
    r = render_ok({"config": {"rate_limit": {"shared": {"url": "redis://redis.prime.svc:6379/0"}}}})
    _, cfg = chartlib.config_toml(r)
    assert cfg["rate_limit"]["shared"] == {"url": "redis://redis.prime.svc:6379/0"}
    c = chartlib.proxy_container(r.one("Deployment"))
    assert all(m["mountPath"] != chartlib.REDIS_DIR for m in c["volumeMounts"])


def test_a_password_secret_without_a_url_is_refused():
    render_fails({"sharedRateLimit": {"passwordSecret": {"name": "redis"}}},
                 "config.rate_limit.shared.url")


@pytest.mark.parametrize("values,where", [
    ({"config": {"rate_limit": {"shared": {"url": "http://redis:6379"}}}}, "/config/rate_limit/shared/url"),
    ({"config": {"rate_limit": {"shared": {"on_error": "retry"}}}}, "/config/rate_limit/shared/on_error"),
])
def test_bad_shared_rate_limit_values_fail_rendering(values, where):
    assert where in render_fails(values, "schema")
