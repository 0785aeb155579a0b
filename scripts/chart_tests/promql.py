"""What a PromQL expression of the dashboard or an alert uses, read with a real PromQL parser
(promql-parser: Prometheus' grammar in Rust): the series it selects, the label names it matches
and groups by, and the labels its result carries (what an alert's `$labels` can name)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import promql_parser as pq

# Labels Prometheus attaches when it scrapes a target (prometheus-operator's ServiceMonitor and
# the usual pod-annotation relabelling), not exposed by the binary itself.
TARGET_LABELS = {"namespace", "pod", "job", "instance", "service", "container", "endpoint"}

_GRAFANA_VARIABLE = re.compile(r"\$\{?(\w+)(?::\w+)?\}?")
_LABEL_VALUES = re.compile(r"^label_values\((?P<query>.*),\s*(?P<label>\w+)\s*\)$", re.S)


def grafana_to_promql(expr: str) -> str:
    """A Grafana query with its variables replaced by what Grafana would put in: an interval for
    $__rate_interval / $__interval / $__range, a regex (.*) for the dashboard's own variables."""
    def value(match: re.Match) -> str:
        return "5m" if match.group(1).startswith("__") else ".*"
    return _GRAFANA_VARIABLE.sub(value, expr)


def label_values_query(query: str) -> tuple[str, str]:
    """`label_values(<selector>, <label>)` (a Grafana variable query): (selector, label)."""
    match = _LABEL_VALUES.match(query.strip())
    if not match:
        raise AssertionError(f"not a label_values() query: {query!r}")
    return match.group("query"), match.group("label")


@dataclass
class Uses:
    # metric name -> label names its matchers name
    selectors: dict[str, set[str]] = field(default_factory=dict)
    # (labels of a `by (...)`, metric names under that aggregation)
    groupings: list[tuple[set[str], set[str]]] = field(default_factory=list)


def parse(expr: str) -> pq.Expr:
    """Parses or raises ValueError with the parser's message."""
    return pq.parse(expr)


def uses(expr: str) -> Uses:
    tree = parse(expr)
    found = Uses()

    def names_under(node: pq.Expr) -> set[str]:
        names: set[str] = set()

        def visit(n):
            if isinstance(n, pq.VectorSelector) and n.name:
                names.add(n.name)
        pq.walk(node, visit)
        return names

    def visit(node):
        if isinstance(node, pq.VectorSelector):
            if not node.name:
                raise AssertionError(f"a selector without a metric name in {expr!r}")
            matchers = list(node.matchers.matchers)
            for group in node.matchers.or_matchers:
                matchers.extend(group)
            found.selectors.setdefault(node.name, set()).update(m.name for m in matchers)
        elif isinstance(node, pq.AggregateExpr) and node.modifier is not None:
            found.groupings.append((set(node.modifier.labels), names_under(node.expr)))
    pq.walk(tree, visit)
    return found


def result_labels(node: pq.Expr) -> set[str] | None:
    """The label names a vector expression's result carries, or None when it keeps all the
    labels of its series (a bare selector, rate() of one)."""
    if isinstance(node, pq.AggregateExpr):
        if node.modifier is None:
            return set()
        if node.modifier.type == pq.AggModifierType.By:
            return set(node.modifier.labels)
        return None
    if isinstance(node, pq.ParenExpr):
        return result_labels(node.expr)
    if isinstance(node, pq.BinaryExpr):
        if isinstance(node.lhs, (pq.NumberLiteral, pq.StringLiteral)):
            return result_labels(node.rhs)
        return result_labels(node.lhs)
    if isinstance(node, pq.Call):
        vectors = [a for a in node.args if not isinstance(a, (pq.NumberLiteral, pq.StringLiteral))]
        if not vectors:
            return set()
        labels = result_labels(vectors[0])
        if node.func.name == "histogram_quantile" and labels is not None:
            labels = labels - {"le"}
        return labels
    if isinstance(node, pq.NumberLiteral):
        return set()
    return None
