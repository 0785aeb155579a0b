"""configReload: `restart` rolls the pods on a config change (checksum annotation, config.toml
mounted alone); `inPlace` leaves them running (no checksum) and mounts the ConfigMap as a
directory, so the kubelet's atomic `..data` swap reaches the proxy, which reloads its file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

import chartlib
from conftest import render_fails, render_ok
from proxybin import check_config_file

CHECKSUM = "checksum/prime-sigv4-proxy-config"
IN_PLACE_DIR = "/etc/prime-sigv4-proxy/config"
IN_PLACE_PATH = f"{IN_PLACE_DIR}/config.toml"


def config_mount(container: dict) -> dict:
    mounts = [m for m in container["volumeMounts"] if m["name"] == "prime-sigv4-proxy-config"]
    assert len(mounts) == 1, mounts
    return mounts[0]


def pod_annotations(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"].get("annotations") or {}


def test_restart_is_the_default(chart_defaults):
    assert chart_defaults["configReload"] == "restart"


@pytest.mark.parametrize("values", [None, {"configReload": "restart"}])
def test_restart_rolls_the_pods_on_a_config_change(values):
    rendered = render_ok(values)
    deployment = rendered.one("Deployment")
    text, _ = chartlib.config_toml(rendered)
    assert pod_annotations(deployment)[CHECKSUM] == chartlib.config_checksum(text)
    c = chartlib.proxy_container(deployment)
    assert c["args"] == ["--config", chartlib.CONFIG_PATH]
    mount = config_mount(c)
    assert (mount["mountPath"], mount["subPath"], mount["readOnly"]) == (chartlib.CONFIG_PATH, "config.toml", True)


def test_in_place_has_no_checksum_and_mounts_the_directory():
    rendered = render_ok({"configReload": "inPlace"})
    deployment = rendered.one("Deployment")
    annotations = pod_annotations(deployment)
    assert CHECKSUM not in annotations, "a checksum would roll the pods on every config change"
    assert annotations["prometheus.io/scrape"] == "true", "the other annotations stay"
    c = chartlib.proxy_container(deployment)
    assert c["args"] == ["--config", IN_PLACE_PATH]
    mount = config_mount(c)
    assert "subPath" not in mount, "a subPath mount never sees the kubelet's ..data swap"
    assert (mount["mountPath"], mount["readOnly"]) == (IN_PLACE_DIR, True)
    volume = next(v for v in chartlib.pod_spec(deployment)["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == chartlib.config_map(rendered)["metadata"]["name"]
    assert volume["configMap"]["items"] == [{"key": "config.toml", "path": "config.toml"}]


def test_in_place_keeps_the_pod_template_unchanged_across_config_changes():
    a = render_ok({"configReload": "inPlace", "config": {"retry": {"max_attempts": 3}}})
    b = render_ok({"configReload": "inPlace", "config": {"retry": {"max_attempts": 4}}})
    assert chartlib.config_toml(a)[1]["retry"]["max_attempts"] != chartlib.config_toml(b)[1]["retry"]["max_attempts"]
    assert a.one("Deployment")["spec"]["template"] == b.one("Deployment")["spec"]["template"]


def test_in_place_without_scrape_annotations_renders_no_annotations():
    deployment = render_ok({"configReload": "inPlace", "metrics": {"podAnnotations": False}}).one("Deployment")
    assert "annotations" not in deployment["spec"]["template"]["metadata"]
    with_own = render_ok({"configReload": "inPlace", "metrics": {"podAnnotations": False},
                          "podAnnotations": {"team": "checkout"}}).one("Deployment")
    assert pod_annotations(with_own) == {"team": "checkout"}


@pytest.mark.parametrize("reload, checksum, path", [
    ("restart", True, chartlib.CONFIG_PATH),
    ("inPlace", False, IN_PLACE_PATH),
])
def test_sidecar_mode_follows_the_switch(reload, checksum, path):
    app = chartlib.render_example_app({"prime-sigv4-proxy": {"configReload": reload}})
    deployment = app.one("Deployment")
    assert (CHECKSUM in pod_annotations(deployment)) is checksum
    c = chartlib.proxy_container(deployment)
    assert c["args"] == ["--config", path]
    mount = config_mount(c)
    assert ("subPath" in mount) is checksum


def test_in_place_keeps_the_other_mounts():
    rendered = render_ok({"configReload": "inPlace", "tls": {"enabled": True, "secretName": "proxy-tls"}})
    mounts = {m["mountPath"] for m in chartlib.proxy_container(rendered.one("Deployment"))["volumeMounts"]}
    assert mounts == {IN_PLACE_DIR, chartlib.TLS_DIR}


def test_an_unknown_reload_mode_is_refused():
    render_fails({"configReload": "hot"}, "configReload")


def test_the_proxy_reads_its_config_through_the_kubelets_symlinks():
    """The kubelet writes a ConfigMap volume as <dir>/..<timestamp>/config.toml, a ..data symlink
    to that directory and config.toml -> ..data/config.toml; the rendered --config path is read
    through them."""
    text, _ = chartlib.config_toml(render_ok({"configReload": "inPlace"}))
    with tempfile.TemporaryDirectory() as tmp:
        volume = Path(tmp) / "config"
        version = volume / "..2026_01_01_00_00_00.000000001"
        version.mkdir(parents=True)
        (version / "config.toml").write_text(text)
        os.symlink(version.name, volume / "..data")
        os.symlink("..data/config.toml", volume / "config.toml")
        result = check_config_file(volume / "config.toml", {})
    assert result.returncode == 0, result.stderr
    assert "[regions.na]" in result.stdout

