"""Inbound TLS: the kubernetes.io/tls Secret mounted as a directory, and [tls] pointing into it."""

from __future__ import annotations

import posixpath

import chartlib
from conftest import render_fails, render_ok


def mounts_by_path(container) -> dict[str, dict]:
    return {m["mountPath"]: m for m in container["volumeMounts"]}


def volume(deployment, name) -> dict:
    return next(v for v in chartlib.pod_spec(deployment)["volumes"] if v["name"] == name)


def file_source(deployment, container, path: str) -> tuple[str, str]:
    """(secret name, key) that a file path in the container comes from."""
    directory, filename = posixpath.split(path)
    mount = mounts_by_path(container)[directory]
    assert mount["readOnly"] is True
    assert "subPath" not in mount, "a subPath mount would never see renewed certificates"
    secret = volume(deployment, mount["name"])["secret"]
    items = {i["path"]: i["key"] for i in secret.get("items", [])}
    return secret["secretName"], items.get(filename, filename)


def test_tls_secret_mounted_and_config_points_at_it(renders):
    r = renders["tls"]
    dep = r.one("Deployment")
    c = chartlib.proxy_container(dep)
    _, cfg = chartlib.config_toml(r)
    assert cfg["tls"]["cert_file"] == f"{chartlib.TLS_DIR}/tls.crt"
    assert cfg["tls"]["key_file"] == f"{chartlib.TLS_DIR}/tls.key"
    assert file_source(dep, c, cfg["tls"]["cert_file"]) == ("prime-sigv4-proxy-tls", "tls.crt")
    assert file_source(dep, c, cfg["tls"]["key_file"]) == ("prime-sigv4-proxy-tls", "tls.key")
    assert file_source(dep, c, cfg["tls"]["client_ca_file"]) == ("prime-clients-ca", "ca.crt")
    assert mounts_by_path(c)[chartlib.TLS_DIR]["readOnly"] is True


def test_tls_port_names_and_service(renders):
    r = renders["tls"]
    c = chartlib.proxy_container(r.one("Deployment"))
    assert chartlib.container_port(c, "https")["containerPort"] == 8080
    ports = {p["name"]: p for p in r.one("Service")["spec"]["ports"]}
    assert ports["https"]["appProtocol"] == "https"
    # Probes stay plain HTTP on the admin port.
    assert c["readinessProbe"]["httpGet"].get("scheme", "HTTP") == "HTTP"


def test_client_ca_in_the_tls_secret_itself():
    r = render_ok({"tls": {"enabled": True, "secretName": "proxy-cert", "clientCaSecretName": "proxy-cert"}})
    dep = r.one("Deployment")
    c = chartlib.proxy_container(dep)
    _, cfg = chartlib.config_toml(r)
    assert cfg["tls"]["client_ca_file"] == f"{chartlib.TLS_DIR}/ca.crt"
    assert file_source(dep, c, cfg["tls"]["client_ca_file"]) == ("proxy-cert", "ca.crt")
    assert len([v for v in chartlib.pod_spec(dep)["volumes"] if "secret" in v]) == 1


def test_no_tls_by_default(renders):
    r = renders["default"]
    _, cfg = chartlib.config_toml(r)
    assert "tls" not in cfg
    c = chartlib.proxy_container(r.one("Deployment"))
    assert chartlib.TLS_DIR not in mounts_by_path(c)
    assert not [v for v in chartlib.pod_spec(r.one("Deployment"))["volumes"] if "secret" in v]


def test_tls_needs_a_secret_name():
    render_fails({"tls": {"enabled": True}}, "tls.secretName")


def test_client_ca_needs_tls():
    render_fails({"tls": {"enabled": False, "clientCaSecretName": "x"}}, "tls.enabled")


def test_tls_in_sidecar_mode_mounts_into_the_sidecar():
    app = chartlib.render_example_app(
        {"prime-sigv4-proxy": {"tls": {"enabled": True, "secretName": "proxy-cert"}}})
    dep = app.one("Deployment")
    c = chartlib.proxy_container(dep)
    _, cfg = chartlib.config_toml(app)
    assert file_source(dep, c, cfg["tls"]["cert_file"]) == ("proxy-cert", "tls.crt")
