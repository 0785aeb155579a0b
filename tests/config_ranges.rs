//! Every number has a range: generated configurations, with random and extreme values for
//! every numeric key, are either refused with a message that names a key, or accepted, and
//! then the proxy starts, serves and stops without a panic.
//!
//! The numeric keys are discovered from the built-in defaults (plus one rate-limit route), so
//! a key added later is generated too. The start checks use the largest and smallest value
//! validation accepts for each key, found by bisection, because that is where a missing
//! bound shows up (a semaphore too large, an `Instant` overflow, a huge allocation).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::time::Duration;

use aws_credential_types::provider::SharedCredentialsProvider;
use common::{static_credentials, FakeUpstream, Pki};
use prime_sigv4_proxy::config::Config;
use prime_sigv4_proxy::CredentialSource;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use toml::Value;

/// The route every generated configuration may carry, so its numbers are generated too.
const ROUTE: &str = "rate_limit.routes[0]";

/// A numeric key: its path (`a.b.c`, or `rate_limit.routes[0].burst`) and whether it is a
/// float.
#[derive(Debug, Clone)]
struct NumericKey {
    path: String,
    float: bool,
}

/// Every integer and float key of the configuration, found in the built-in defaults.
fn numeric_keys() -> &'static [NumericKey] {
    static KEYS: OnceLock<Vec<NumericKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        fn walk(value: &Value, path: &str, out: &mut Vec<NumericKey>) {
            match value {
                Value::Table(table) => {
                    for (key, value) in table {
                        let path = if path.is_empty() {
                            key.clone()
                        } else {
                            format!("{path}.{key}")
                        };
                        walk(value, &path, out);
                    }
                }
                Value::Integer(_) => out.push(NumericKey {
                    path: path.to_owned(),
                    float: false,
                }),
                Value::Float(_) => out.push(NumericKey {
                    path: path.to_owned(),
                    float: true,
                }),
                _ => {}
            }
        }
        let mut keys = Vec::new();
        walk(&Value::try_from(Config::default()).unwrap(), "", &mut keys);
        keys.push(NumericKey {
            path: format!("{ROUTE}.requests_per_second"),
            float: true,
        });
        keys.push(NumericKey {
            path: format!("{ROUTE}.burst"),
            float: false,
        });
        assert!(keys.len() >= 27, "{keys:?}");
        keys
    })
}

/// A TOML document setting `values` (path → value); a route gets a path prefix and a rate.
fn document(values: &BTreeMap<String, Value>, extra: &[(&str, Value)]) -> String {
    let mut root = toml::Table::new();
    let mut route = toml::Table::new();
    let mut set = |path: &str, value: Value| {
        if let Some(field) = path.strip_prefix(&format!("{ROUTE}.")) {
            route.insert(field.to_owned(), value);
            return;
        }
        let mut parts: Vec<&str> = path.split('.').collect();
        let last = parts.pop().unwrap();
        let mut table = &mut root;
        for part in parts {
            table = table
                .entry(part)
                .or_insert_with(|| Value::Table(toml::Table::new()))
                .as_table_mut()
                .unwrap();
        }
        table.insert(last.to_owned(), value);
    };
    for (path, value) in extra {
        set(path, value.clone());
    }
    for (path, value) in values {
        set(path, value.clone());
    }
    if !route.is_empty() {
        route.insert("path_prefix".into(), Value::String("/".into()));
        route
            .entry("requests_per_second")
            .or_insert(Value::Float(1.0));
        let limits = root
            .entry("rate_limit")
            .or_insert_with(|| Value::Table(toml::Table::new()))
            .as_table_mut()
            .unwrap();
        limits.insert("routes".into(), Value::Array(vec![Value::Table(route)]));
    }
    toml::to_string(&root).unwrap()
}

fn accepted(values: &BTreeMap<String, Value>) -> bool {
    Config::from_toml(&document(values, &[])).is_ok()
}

/// Integers as an operator (or a fuzzer) might write them: edges, powers of two, anything.
fn integer() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(0i64),
        Just(1),
        Just(-1),
        Just(i64::MAX),
        Just(i64::MIN),
        Just(i64::from(u32::MAX)),
        Just(i64::from(u32::MAX) + 1),
        Just(1 << 62),
        0i64..100_000,
        (0u32..63).prop_map(|bit| 1i64 << bit),
        (1u32..63).prop_map(|bit| (1i64 << bit) - 1),
        any::<i64>(),
    ]
    .prop_map(Value::Integer)
}

fn float() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(0.0f64),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(f64::MIN_POSITIVE),
        Just(f64::MAX),
        Just(1e-300),
        Just(0.001),
        Just(0.000_999),
        Just(1e6),
        Just(1e6 + 1.0),
        -10.0f64..1e7,
        any::<f64>(),
    ]
    .prop_map(Value::Float)
}

/// A value for a key: usually of its type, sometimes not (a float for an integer, a string).
fn value_for(key: &NumericKey) -> BoxedStrategy<Value> {
    if key.float {
        prop_oneof![4 => float(), 1 => integer()].boxed()
    } else {
        prop_oneof![
            8 => integer(),
            1 => (-1e3f64..1e3).prop_map(Value::Float),
            1 => Just(Value::String("10".into())),
        ]
        .boxed()
    }
}

/// A few keys (one to four) set to generated values; the rest keep their defaults.
fn some_numbers() -> impl Strategy<Value = BTreeMap<String, Value>> {
    let keys = numeric_keys();
    prop::collection::vec(
        (0..keys.len()).prop_flat_map(|i| (Just(i), value_for(&keys[i]))),
        1..=4,
    )
    .prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(i, value)| (numeric_keys()[i].path.clone(), value))
            .collect()
    })
}

/// True when `message` names one of the configuration's numeric keys, as `key` or the
/// figment form of a route key (`rate_limit.routes.0.burst`).
fn names_a_key(message: &str) -> bool {
    numeric_keys().iter().any(|key| {
        message.contains(&format!("`{}`", key.path))
            || message.contains(&format!("`{}`", key.path.replace("[0]", ".0")))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn a_number_is_refused_naming_a_key_or_accepted_as_written(values in some_numbers()) {
        let text = document(&values, &[]);
        match Config::from_toml(&text) {
            Err(error) => {
                let message = error.to_string();
                prop_assert!(names_a_key(&message), "{text}\n→ {message}");
            }
            Ok(config) => {
                // Accepted as written: printing the configuration shows each value set.
                let printed: Value = toml::from_str(&config.to_redacted_toml().unwrap()).unwrap();
                for (path, value) in &values {
                    let mut shown = &printed;
                    for part in path.replace("[0]", ".0").split('.') {
                        shown = match part.parse::<usize>() {
                            Ok(i) => &shown[i],
                            Err(_) => &shown[part],
                        };
                    }
                    let same = match (shown, value) {
                        (Value::Float(a), Value::Float(b)) => a == b,
                        (Value::Float(a), Value::Integer(b)) => *a == *b as f64,
                        (a, b) => a == b,
                    };
                    prop_assert!(same, "{path}: set {value}, shown {shown}");
                }
            }
        }
    }
}

/// The smallest and largest value validation accepts for each key (others at their
/// defaults), by bisection over what TOML can write.
fn bounds() -> &'static BTreeMap<String, (Value, Value)> {
    static BOUNDS: OnceLock<BTreeMap<String, (Value, Value)>> = OnceLock::new();
    BOUNDS.get_or_init(|| {
        let with = |path: &str, value: Value| BTreeMap::from([(path.to_owned(), value)]);
        let mut out = BTreeMap::new();
        for key in numeric_keys() {
            let ok = |value: Value| accepted(&with(&key.path, value));
            let pair = if key.float {
                // Positive floats are ordered as their bit patterns: bisect those.
                let float_ok = |bits: u64| ok(Value::Float(f64::from_bits(bits)));
                let bisect = |mut yes: u64, mut no: u64| {
                    while yes.abs_diff(no) > 1 {
                        let mid = yes.min(no) + yes.abs_diff(no) / 2;
                        if float_ok(mid) {
                            yes = mid;
                        } else {
                            no = mid;
                        }
                    }
                    f64::from_bits(yes)
                };
                let (one, largest, smallest) = (
                    1f64.to_bits(),
                    f64::MAX.to_bits(),
                    f64::MIN_POSITIVE.to_bits(),
                );
                assert!(float_ok(one), "{} refuses 1", key.path);
                assert!(!float_ok(largest), "{} accepts f64::MAX", key.path);
                // A ratio's range starts at 0 itself; a rate's at its smallest positive value.
                let lowest = if float_ok(0f64.to_bits()) {
                    0.0
                } else {
                    assert!(!float_ok(smallest), "{} accepts any rate", key.path);
                    bisect(one, smallest)
                };
                (Value::Float(lowest), Value::Float(bisect(one, largest)))
            } else {
                let default = Value::try_from(Config::default())
                    .ok()
                    .and_then(|config| {
                        let mut at = &config;
                        for part in key.path.split('.') {
                            at = at.get(part)?;
                        }
                        at.as_integer()
                    })
                    .unwrap_or(0);
                let int_ok = |v: i64| ok(Value::Integer(v));
                assert!(int_ok(default), "{} refuses its default", key.path);
                assert!(!int_ok(i64::MAX), "{} accepts i64::MAX", key.path);
                let (mut lo, mut hi) = (default, i64::MAX);
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if int_ok(mid) {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                let max = lo;
                let (mut lo, mut hi) = (-1i64, default);
                assert!(!int_ok(-1), "{} accepts -1", key.path);
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if int_ok(mid) {
                        hi = mid;
                    } else {
                        lo = mid;
                    }
                }
                (Value::Integer(hi), Value::Integer(max))
            };
            out.insert(key.path.clone(), pair);
        }
        out
    })
}

/// Panics on the threads of the runtime the proxy under test runs on (tokio catches a
/// task's panic and the proxy only logs the failed task, so a hook is the way to see it).
static PANICS: AtomicUsize = AtomicUsize::new(0);
/// Name of those threads; a failing assertion on a test thread is not counted.
const PROXY_THREADS: &str = "proxy-under-test";
/// Held while a proxy runs, so that one run's panics are not counted in another's window.
static COUNTING: Mutex<()> = Mutex::new(());

fn proxy_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(PROXY_THREADS)
        .enable_all()
        .build()
        .unwrap()
}

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some(PROXY_THREADS) {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

/// One HTTP/1.1 exchange written at once (a single short header, so even the shortest head
/// timeout and the smallest header limit let it through): the status, or 0.
async fn status_of(addr: std::net::SocketAddr, request: &str) -> u16 {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(2).any(|w| w == b"\r\n") {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        text.split(' ').nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

/// Starts the proxy in-process with `values` on port-0 listeners, its regions on a real
/// TLS upstream, checks that it serves, sends one request through it, and stops it.
fn start_and_stop(values: &BTreeMap<String, Value>) -> Result<(), String> {
    count_panics();
    let _counting = COUNTING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let panics_before = PANICS.load(Ordering::SeqCst);
    let runtime = proxy_runtime();
    let outcome: Result<(), String> = runtime.block_on(async {
        let pki = Pki::new();
        let upstream = FakeUpstream::start(&pki).await;
        let endpoint = Value::String(upstream.endpoint.clone());
        let ca = Value::String(pki.ca_file.display().to_string());
        let text = document(
            values,
            &[
                ("upstream.ca_file", ca),
                ("regions.na.endpoint", endpoint.clone()),
                ("regions.eu.endpoint", endpoint.clone()),
                ("regions.fe.endpoint", endpoint),
            ],
        );
        let config = Config::from_toml(&text).map_err(|e| format!("refused: {e}\n{text}"))?;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, admin) = (
            listener.local_addr().unwrap(),
            admin_listener.local_addr().unwrap(),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let provider = SharedCredentialsProvider::new(static_credentials(None));
        let proxy = tokio::spawn(prime_sigv4_proxy::run_with(
            config,
            listener,
            admin_listener,
            CredentialSource::Provider(provider),
            async {
                let _ = stopped.await;
            },
        ));
        let mut health = 0;
        for _ in 0..100 {
            health = status_of(admin, "GET /healthz HTTP/1.1\r\nhost: a\r\n\r\n").await;
            if health == 200 || proxy.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Through the proxy: whatever the limits make of it (a 431 with max_headers = 1, a
        // 429, a 200), it must be answered or refused without harm.
        let _ = status_of(
            addr,
            "GET /v1/a HTTP/1.1\r\nx-amz-marketplace: US\r\nconnection: close\r\n\r\n",
        )
        .await;
        let _ = stop.send(());
        let finished = tokio::time::timeout(Duration::from_secs(30), proxy).await;
        if health != 200 {
            return Err(format!("/healthz answered {health}\n{text}"));
        }
        match finished {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(error))) => Err(format!("did not start: {error}\n{text}")),
            Ok(Err(join)) => Err(format!("panicked: {join}\n{text}")),
            Err(_) => Err(format!("did not stop within 30 s\n{text}")),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    let panics = PANICS.load(Ordering::SeqCst) - panics_before;
    if panics > 0 {
        return Err(format!("{panics} panic(s) while running {values:?}"));
    }
    outcome
}

#[test]
fn every_key_has_a_finite_range_with_its_default_inside() {
    let bounds = bounds();
    assert_eq!(bounds.len(), numeric_keys().len());
    for (path, (min, max)) in bounds {
        eprintln!("{path}: {min} to {max}");
    }
    assert_eq!(
        bounds["listener.max_in_flight"].1,
        Value::Integer(100_000),
        "the bisection finds the documented bound"
    );
}

#[test]
fn every_key_at_its_largest_accepted_value_starts() {
    let values: BTreeMap<String, Value> = bounds()
        .iter()
        .map(|(path, (_, max))| (path.clone(), max.clone()))
        .collect();
    start_and_stop(&values).unwrap();
}

#[test]
fn every_key_at_its_smallest_accepted_value_starts() {
    let values: BTreeMap<String, Value> = bounds()
        .iter()
        .map(|(path, (min, _))| (path.clone(), min.clone()))
        .collect();
    start_and_stop(&values).unwrap();
}

#[test]
fn each_key_alone_at_either_end_of_its_range_starts() {
    // One key at a time, so a failure names the key that caused it.
    let ends: Vec<(String, Value)> = bounds()
        .iter()
        .flat_map(|(path, (min, max))| [(path.clone(), min.clone()), (path.clone(), max.clone())])
        .collect();
    let failures: Vec<String> = ends
        .into_iter()
        .filter_map(|(path, value)| {
            start_and_stop(&BTreeMap::from([(path.clone(), value.clone())]))
                .err()
                .map(|e| format!("{path} = {value}: {e}"))
        })
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

/// For each key: its default, either end of its range, or a value between.
fn within_ranges() -> impl Strategy<Value = BTreeMap<String, Value>> {
    let choices: Vec<BoxedStrategy<Option<(String, Value)>>> = bounds()
        .iter()
        .map(|(path, (min, max))| {
            let path = path.clone();
            let between = match (min, max) {
                (Value::Integer(a), Value::Integer(b)) => {
                    (*a..=*b).prop_map(Value::Integer).boxed()
                }
                (Value::Float(a), Value::Float(b)) => (*a..=*b).prop_map(Value::Float).boxed(),
                _ => unreachable!(),
            };
            prop_oneof![
                3 => Just(None),
                1 => Just(Some((path.clone(), min.clone()))),
                1 => Just(Some((path.clone(), max.clone()))),
                1 => between.prop_map(move |v| Some((path.clone(), v))),
            ]
            .boxed()
        })
        .collect();
    choices.prop_map(|set| set.into_iter().flatten().collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn an_accepted_mix_of_extremes_starts(values in within_ranges()) {
        // Cross-key rules (base_delay_ms ≤ max_delay_ms, …) may refuse a mix: that is fine.
        if accepted(&values) {
            let started = start_and_stop(&values);
            prop_assert!(started.is_ok(), "{}", started.unwrap_err());
        }
    }
}

#[test]
fn the_shared_panic_counter_sees_a_task_panic() {
    // The hook counts panics inside tokio tasks, which never reach the test thread.
    count_panics();
    let _counting = COUNTING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let before = PANICS.load(Ordering::SeqCst);
    let runtime = proxy_runtime();
    let joined =
        runtime.block_on(async { tokio::spawn(async { panic!("deliberate, in a task") }).await });
    assert!(joined.is_err());
    assert_eq!(PANICS.load(Ordering::SeqCst), before + 1);
}
