"""Shared helpers for the chart checks: lint and render with the Helm v4 SDK (helm-python-sdk),
offline, and load the rendered manifests as Python objects.

Used by check_chart.py (the lint/render/validate steps of scripts/check-chart.sh) and by the
pytest suite in this directory.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "charts" / "prime-sigv4-proxy"
CI_DIR = CHART_DIR / "ci"
EXAMPLE_APP_DIR = ROOT / "examples" / "sidecar-app"
SIDECAR_MANIFEST = ROOT / "examples" / "sidecar-manifest.yaml"

RELEASE = "demo"
NAMESPACE = "prime"
KUBE_VERSION = "1.30.0"

# Kinds from CRDs: kubernetes-validate only knows built-in kinds, so these are not validated
# against a schema offline (the tests check their content instead).
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}

CONFIG_PATH = "/etc/prime-sigv4-proxy/config.toml"
TLS_DIR = "/etc/prime-sigv4-proxy/tls"
REDIS_DIR = "/etc/prime-sigv4-proxy/redis"
PROXY_CONTAINER = "prime-sigv4-proxy"


class LintError(AssertionError):
    pass


def ci_values_files() -> list[Path]:
    """The chart's ci/*-values.yaml scenarios (helm chart-testing convention)."""
    return sorted(CI_DIR.glob("*-values.yaml"))


def scenario_name(values_file: Path) -> str:
    return values_file.name.removesuffix("-values.yaml")


def load_values(values_file: Path) -> dict[str, Any]:
    data = yaml.safe_load(values_file.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{values_file}: a values file must hold a mapping")
    return data


def lint(chart_dir: Path, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """`helm lint --strict` on a chart directory: any warning or error raises LintError.

    Returns the informational messages (e.g. "icon is recommended").
    """
    report = helm.lint(chart_dir, values, strict=True, kube_version=f"v{KUBE_VERSION}",
                       namespace=NAMESPACE, with_subcharts=True)
    if report.get("total_charts_linted", 0) < 1:
        raise LintError(f"{chart_dir}: nothing was linted: {report}")
    problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    if problems or report.get("errors"):
        lines = [f"  [{m.get('path')}] {m.get('error', '').strip()}" for m in problems]
        lines += [f"  {e.strip()}" for e in report.get("errors", []) if e.strip()]
        raise LintError(f"helm lint --strict {chart_dir} failed:\n" + "\n".join(dict.fromkeys(lines)))
    return [m for m in report.get("messages", []) if m.get("severity", 0) < 2]


@dataclass
class Rendered:
    """One rendered release: the manifests as parsed objects, plus the raw text per template."""

    templates: dict[str, str]
    docs: list[dict[str, Any]] = field(default_factory=list)
    notes: str = ""

    def kinds(self) -> list[str]:
        return sorted(d["kind"] for d in self.docs)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [d for d in self.all(kind) if name is None or d["metadata"]["name"] == name]
        if len(found) != 1:
            raise AssertionError(f"expected one {kind}{' ' + name if name else ''}, found {len(found)}")
        return found[0]

    def yaml_text(self, kinds: set[str] | None = None, exclude: set[str] | None = None) -> str:
        docs = [d for d in self.docs
                if (kinds is None or d["kind"] in kinds) and d["kind"] not in (exclude or set())]
        return yaml.safe_dump_all(docs, sort_keys=False)


def parse_manifests(templates: dict[str, str]) -> Rendered:
    rendered = Rendered(templates=templates)
    for path in sorted(templates):
        text = templates[path]
        if path.endswith("NOTES.txt"):
            rendered.notes = text
            continue
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is None:
                continue
            if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                raise AssertionError(f"{path}: rendered a document that is not a Kubernetes object: {doc!r}")
            rendered.docs.append(doc)
    return rendered


def render(chart_dir: Path, values: dict[str, Any] | None = None, *, name: str = RELEASE,
           namespace: str = NAMESPACE) -> Rendered:
    """`helm template` equivalent (values are checked against values.schema.json on the way)."""
    with helm.Chart.load(chart_dir) as chart:
        templates = chart.render(values, name=name, namespace=namespace, is_install=True)
    return parse_manifests(templates)


def prepare_example_app(workdir: Path) -> Path:
    """Copy examples/sidecar-app to workdir with the prime-sigv4-proxy chart in its charts/.

    That is what `helm dependency update` does for the file:// dependency; copying avoids both the
    network and writing into the source tree.
    """
    app = workdir / EXAMPLE_APP_DIR.name
    if app.exists():
        shutil.rmtree(app)
    shutil.copytree(EXAMPLE_APP_DIR, app, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    deps = yaml.safe_load((app / "Chart.yaml").read_text()).get("dependencies", [])
    chart_meta = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    for dep in deps:
        if dep["name"] != chart_meta["name"]:
            raise AssertionError(f"unexpected dependency {dep['name']} in {EXAMPLE_APP_DIR}")
        if dep["version"] != chart_meta["version"]:
            raise AssertionError(f"{EXAMPLE_APP_DIR}/Chart.yaml wants {dep['name']} {dep['version']}, "
                                 f"the chart is {chart_meta['version']}")
        repo = dep.get("repository", "")
        if not repo.startswith("file://") or (EXAMPLE_APP_DIR / repo.removeprefix("file://")).resolve() != CHART_DIR:
            raise AssertionError(f"{EXAMPLE_APP_DIR}/Chart.yaml: repository should point at {CHART_DIR}")
        shutil.copytree(CHART_DIR, app / "charts" / dep["name"],
                        ignore=shutil.ignore_patterns("ci"))
    return app


def render_example_app(values: dict[str, Any] | None = None, *, name: str = RELEASE) -> Rendered:
    with tempfile.TemporaryDirectory(prefix="sidecar-app-") as tmp:
        return render(prepare_example_app(Path(tmp)), values, name=name)


# ----------------------------------------------------------------------------------------------
# Pod helpers


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def proxy_container(workload: dict[str, Any]) -> dict[str, Any]:
    spec = pod_spec(workload)
    found = [c for c in spec.get("containers", []) + spec.get("initContainers", [])
             if c["name"] == PROXY_CONTAINER]
    if len(found) != 1:
        raise AssertionError(f"expected one {PROXY_CONTAINER} container, found {len(found)}")
    return found[0]


def container_port(container: dict[str, Any], port: int | str) -> dict[str, Any]:
    """The container port a probe or Service refers to, by number or by name."""
    for p in container.get("ports", []):
        if p["containerPort"] == port or p.get("name") == port:
            return p
    raise AssertionError(f"container {container['name']} has no port {port!r}")


def env_value(container: dict[str, Any], name: str) -> str | None:
    for e in container.get("env", []):
        if e["name"] == name:
            return e.get("value")
    return None


def config_map(rendered: Rendered) -> dict[str, Any]:
    """The ConfigMap holding config.toml (the dashboard, when enabled, is another ConfigMap)."""
    found = [cm for cm in rendered.all("ConfigMap") if "config.toml" in cm.get("data", {})]
    if len(found) != 1:
        raise AssertionError(f"expected one ConfigMap with config.toml, found {len(found)}")
    return found[0]


def config_toml(rendered: Rendered) -> tuple[str, dict[str, Any]]:
    cm = config_map(rendered)
    text = cm["data"]["config.toml"]
    return text, tomllib.loads(text)


def config_checksum(toml_text: str) -> str:
    # The chart hashes the template output; the ConfigMap block scalar adds one final newline.
    return hashlib.sha256(toml_text.rstrip("\n").encode()).hexdigest()


def merged_values(values: dict[str, Any] | None = None, chart_dir: Path = CHART_DIR) -> dict[str, Any]:
    """The values a release would use: chart defaults coalesced with `values` (Helm's own merge)."""
    with helm.Chart.load(chart_dir) as chart:
        return chart.merge_values(values)


# ----------------------------------------------------------------------------------------------
# The environment a pod gets


def service_links(service: dict[str, Any], cluster_ip: str) -> dict[str, str]:
    """The variables the kubelet writes for a Service into pods of its namespace (unless they
    set enableServiceLinks: false), as pkg/kubelet/envvars does."""
    name = service["metadata"]["name"].replace("-", "_").upper()
    ports = service["spec"]["ports"]
    env = {f"{name}_SERVICE_HOST": cluster_ip, f"{name}_SERVICE_PORT": str(ports[0]["port"])}
    for i, port in enumerate(ports):
        number, protocol = port["port"], port.get("protocol", "TCP")
        if port.get("name"):
            env[f"{name}_SERVICE_PORT_{port['name'].replace('-', '_').upper()}"] = str(number)
        link = f"{protocol.lower()}://{cluster_ip}:{number}"
        if i == 0:
            env[f"{name}_PORT"] = link
        base = f"{name}_PORT_{number}_{protocol.upper()}"
        env.update({base: link, f"{base}_PROTO": protocol.lower(), f"{base}_PORT": str(number),
                    f"{base}_ADDR": cluster_ip})
    return env


def service(name: str, ports: list[tuple[str, int]]) -> dict[str, Any]:
    """A minimal Service object, for services_links of Services the chart does not render."""
    return {"metadata": {"name": name},
            "spec": {"ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports]}}


# The API server's Service: its links are written into every pod, whatever enableServiceLinks.
KUBERNETES_SERVICE = service("kubernetes", [("https", 443)])


def pod_environment(workload: dict[str, Any], services: list[dict[str, Any]]) -> dict[str, str]:
    """The proxy container's environment in a pod of `workload` in a namespace with `services`:
    the container's own `env` values, the API server's links, and the links of `services` unless
    the pod sets enableServiceLinks: false."""
    env = service_links(KUBERNETES_SERVICE, "10.96.0.1")
    if pod_spec(workload).get("enableServiceLinks", True) is not False:
        for i, svc in enumerate(services):
            env.update(service_links(svc, f"10.96.1.{i + 2}"))
    container = proxy_container(workload)
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env
