//! The documentation cannot drift from the binary: every configuration key that
//! `docs/contract.md` and the README's key table name, with its default, is held against what
//! `--check-config` prints for the built-in defaults (and the other way round), and the metric
//! tables against the series the real binary registers on `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use std::time::Duration;

use common::{
    command_with_static_key, get, keep_alive_client, regions_config_file, Action, Pki,
    ProxyProcess, Upstreams,
};

const CONTRACT: &str = include_str!("../docs/contract.md");
const README: &str = include_str!("../README.md");

/// The built-in defaults as the binary prints them, flattened to dotted keys. Region tables
/// (the region table, documented as such) and the empty `[upstream.headers]` are left out.
fn binary_defaults() -> BTreeMap<String, toml::Value> {
    let output = std::process::Command::new(common::binary())
        .arg("--check-config")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let table: toml::Table = toml::from_str(&String::from_utf8(output.stdout).unwrap()).unwrap();
    let mut flat = BTreeMap::new();
    flatten("", &table, &mut flat);
    flat.retain(|key, _| !key.starts_with("regions.") && key != "upstream.headers");
    flat
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, toml::Value>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner) if !inner.is_empty() => flatten(&path, inner, out),
            other => {
                out.insert(path, other.clone());
            }
        }
    }
}

/// The cells of a Markdown table row, trimmed; `None` for lines that are not a row or are
/// the header's separator.
fn row(line: &str) -> Option<Vec<&str>> {
    let line = line.trim();
    if !line.starts_with('|') || line.starts_with("|---") {
        return None;
    }
    Some(
        line.trim_matches('|')
            .split(" | ")
            .map(|cell| cell.trim().trim_matches('|').trim())
            .collect(),
    )
}

/// The first `code span` of a cell.
fn code(cell: &str) -> Option<&str> {
    let start = cell.find('`')? + 1;
    let end = start + cell[start..].find('`')?;
    Some(&cell[start..end])
}

/// A documented default as a TOML value, so `0` and `0.0`, or list spacing, compare equal.
fn value_of(text: &str) -> toml::Value {
    let document: toml::Table = toml::from_str(&format!("v = {text}"))
        .unwrap_or_else(|e| panic!("documented default {text:?} is not a TOML value: {e}"));
    document["v"].clone()
}

fn same(documented: &toml::Value, binary: &toml::Value) -> bool {
    match (documented, binary) {
        (toml::Value::Integer(a), toml::Value::Float(b))
        | (toml::Value::Float(b), toml::Value::Integer(a)) => (*a as f64 - b).abs() < 1e-9,
        (a, b) => a == b,
    }
}

/// `docs/contract.md`'s "Configuration keys" tables: dotted key → documented default (as
/// written). The section is the heading's first `[table]` (top level without one); tables
/// without a default column (the per-region keys) and the `[[rate_limit.routes]]` entry
/// keys (defaults per entry, not built-in values) are left out.
fn contract_keys() -> BTreeMap<String, String> {
    let start = CONTRACT
        .find("## Configuration keys")
        .expect("a Configuration keys section");
    let section = &CONTRACT[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let mut keys = BTreeMap::new();
    let mut prefix: Option<String> = Some(String::new());
    for line in section[..end].lines() {
        if let Some(heading) = line.strip_prefix("### ") {
            prefix = match code(heading) {
                Some(table) if table.contains('<') => None,
                Some(table) => Some(format!("{}.", table.trim_matches(['[', ']']))),
                None => Some(String::new()),
            };
            continue;
        }
        if line.starts_with("Each `[[") {
            prefix = None;
        }
        let (Some(prefix), Some(cells)) = (&prefix, row(line)) else {
            continue;
        };
        if cells.len() < 3 || cells[0] == "key" {
            continue;
        }
        let key = code(cells[0]).unwrap_or_else(|| panic!("key cell without code: {line}"));
        let default = code(cells[1]).unwrap_or_else(|| panic!("default without code: {line}"));
        keys.insert(format!("{prefix}{key}"), default.to_owned());
    }
    keys
}

#[test]
fn every_key_in_the_contract_has_the_binarys_default_and_every_key_is_documented() {
    let binary = binary_defaults();
    let documented = contract_keys();
    assert!(documented.len() > 40, "parsed too few keys: {documented:?}");
    let mut problems = Vec::new();
    for (key, default) in &documented {
        match binary.get(key) {
            None => problems.push(format!(
                "docs/contract.md documents `{key}`, the binary has no such key"
            )),
            Some(value) if !same(&value_of(default), value) => problems.push(format!(
                "docs/contract.md gives `{key}` the default `{default}`, the binary `{value}`"
            )),
            Some(_) => {}
        }
    }
    for key in binary.keys() {
        if !documented.contains_key(key) {
            problems.push(format!("docs/contract.md does not document `{key}`"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_readmes_key_table_gives_the_binarys_defaults() {
    let binary = binary_defaults();
    let mut checked = 0;
    let mut problems = Vec::new();
    for cells in README.lines().filter_map(row) {
        let Some(key) = cells.first().and_then(|cell| code(cell)) else {
            continue;
        };
        let Some(value) = binary.get(key) else {
            continue;
        };
        // "0 (off)", "[429, 500]", "67108864": the value before any explanation.
        let cell = cells[1];
        let written = if cell.starts_with('[') {
            &cell[..=cell.find(']').unwrap()]
        } else {
            cell.split_whitespace().next().unwrap_or_default()
        };
        checked += 1;
        if !same(&value_of(written.trim_matches('`')), value) {
            problems.push(format!(
                "README gives `{key}` the default {written}, the binary `{value}`"
            ));
        }
    }
    assert!(checked > 20, "parsed too few README rows: {checked}");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Series names as a scrape shows them: `# TYPE` names, with `_total` for counters and
/// `_info` for info metrics (OpenMetrics leaves the suffix off the TYPE line).
fn exposed_series(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| {
            let (name, kind) = rest.split_once(' ')?;
            Some(match kind {
                "counter" => format!("{name}_total"),
                "info" => format!("{name}_info"),
                _ => name.to_owned(),
            })
        })
        .filter(|name| name.starts_with("prime_proxy_"))
        .collect()
}

/// The series named in the first column of a document's tables.
fn documented_series(document: &str) -> BTreeSet<String> {
    document
        .lines()
        .filter_map(row)
        .filter_map(|cells| cells.first().map(|cell| cell.to_string()))
        .flat_map(|cell| {
            cell.split('`')
                .filter(|part| part.starts_with("prime_proxy_") && !part.ends_with('*'))
                .map(|part| part.split('{').next().unwrap_or(part).to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn the_metric_tables_name_exactly_the_series_the_binary_registers() {
    let pki = Pki::new();
    let upstreams = Upstreams::start(&pki).await;
    // A shared limit on a port where nothing listens registers its series too.
    let config = regions_config_file(
        &pki,
        &upstreams,
        "[rate_limit]\nrequests_per_second = 100\n[rate_limit.shared]\nurl = \"redis://127.0.0.1:1/0\"\n",
    );
    let proxy = ProxyProcess::start(command_with_static_key(pki.dir.path()), &config).await;
    // Labelled series appear with their first sample: one request answered, one 403 from
    // Prime, and the failed Redis connection.
    upstreams.region("na").push([Action::with_header(
        403,
        "x-amzn-ErrorType",
        "AccessDeniedException",
    )]);
    let client = keep_alive_client();
    for marketplace in ["US", "DE"] {
        get(
            &client,
            &proxy.url("/v1/ping"),
            &[("x-amz-marketplace", marketplace)],
        )
        .await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut text = proxy.metrics().await;
    while !text.contains("prime_proxy_rate_limit_shared_redis_errors_total{")
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = proxy.metrics().await;
    }
    let exposed = exposed_series(&text);
    proxy.terminate().await;
    assert!(exposed.len() > 15, "{exposed:?}");

    let contract = documented_series(CONTRACT);
    let missing: Vec<_> = exposed.difference(&contract).collect();
    let stale: Vec<_> = contract.difference(&exposed).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/contract.md's metric table: not documented {missing:?}; documented but not exposed {stale:?}"
    );
    let readme = documented_series(README);
    let stale: Vec<_> = readme.difference(&exposed).collect();
    assert!(
        stale.is_empty(),
        "README names series the binary does not expose: {stale:?}"
    );
}
