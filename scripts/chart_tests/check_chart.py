"""Lint and render steps of scripts/check-chart.sh.

    python3 scripts/chart_tests/check_chart.py OUT_DIR

1. `helm lint --strict` of charts/prime-sigv4-proxy with its default values and with every
   ci/*-values.yaml, and of the example application chart examples/sidecar-app;
2. renders each of them (release "demo", namespace "prime") into OUT_DIR/<scenario>.yaml, plus a
   copy of examples/sidecar-manifest.yaml; objects of CRD kinds (ServiceMonitor) go to
   OUT_DIR/crds/<scenario>.yaml instead, because kubernetes-validate has no schema for them.

Exits non-zero on the first failure. The shell script then runs kubernetes-validate on OUT_DIR/*.yaml.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import yaml

import chartlib


def write(out: Path, name: str, rendered: chartlib.Rendered) -> None:
    main = rendered.yaml_text(exclude=chartlib.CRD_KINDS)
    (out / f"{name}.yaml").write_text(main)
    crds = [d for d in rendered.docs if d["kind"] in chartlib.CRD_KINDS]
    if crds:
        (out / "crds").mkdir(exist_ok=True)
        (out / "crds" / f"{name}.yaml").write_text(yaml.safe_dump_all(crds, sort_keys=False))
    skipped = f"; not schema-validated (CRD): {', '.join(d['kind'] for d in crds)}" if crds else ""
    print(f"  rendered {name}: {', '.join(rendered.kinds())}{skipped}")


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)

    print(f"helm lint --strict (Helm SDK {chartlib.helm.helm_sdk_version()}, kube {chartlib.KUBE_VERSION}):")
    # ci/default-values.yaml stands for the chart's defaults.
    scenarios = [(chartlib.scenario_name(f), chartlib.load_values(f)) for f in chartlib.ci_values_files()]
    if "default" not in dict(scenarios):
        raise AssertionError(f"{chartlib.CI_DIR}/default-values.yaml is missing")
    for name, values in scenarios:
        infos = chartlib.lint(chartlib.CHART_DIR, values or None)
        note = f" ({'; '.join(m['error'] for m in infos)})" if infos else ""
        print(f"  ok  {chartlib.CHART_DIR.relative_to(chartlib.ROOT)} [{name}]{note}")

    with tempfile.TemporaryDirectory(prefix="sidecar-app-") as tmp:
        app = chartlib.prepare_example_app(Path(tmp))
        infos = chartlib.lint(app)
        note = f" ({'; '.join(m['error'] for m in infos)})" if infos else ""
        print(f"  ok  {chartlib.EXAMPLE_APP_DIR.relative_to(chartlib.ROOT)} (with its dependency){note}")

        print("helm template:")
        for name, values in scenarios:
            write(out, name, chartlib.render(chartlib.CHART_DIR, values or None))
        write(out, "example-sidecar-app", chartlib.render(app))

    manifest = chartlib.parse_manifests({"sidecar-manifest.yaml": chartlib.SIDECAR_MANIFEST.read_text()})
    write(out, "example-sidecar-manifest", manifest)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (chartlib.LintError, chartlib.helm.HelmError, AssertionError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
