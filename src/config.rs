//! The one typed configuration: built-in defaults < TOML file < `PRIME_PROXY_*` environment,
//! deserialised by figment and validated once at start.
//!
//! Everything downstream receives values from here that are already valid: addresses parsed,
//! endpoints checked, marketplaces unique. A refusal names the key that caused it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

mod service_links;

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "PRIME_PROXY_";

/// Environment variables under [`ENV_PREFIX`] that are not configuration keys.
const NON_CONFIG_ENV: &[&str] = &["log_format"];

/// Shown instead of secrets when the configuration is printed.
const REDACTED: &str = "<redacted>";

/// The whole configuration of one proxy process.
///
/// Field order matters: TOML needs plain values before tables when printed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where applications send their unsigned requests.
    pub listen: SocketAddr,
    /// Health, readiness and metrics.
    pub admin_listen: SocketAddr,
    /// Larger request bodies get 413 `body_too_large`.
    pub max_body_bytes: u64,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    pub shutdown_grace_ms: u64,
    /// Threads serving requests (0 = one per CPU core). One is the default: a sidecar's CPU
    /// is paid in every pod, and one thread does the least work per request (see README,
    /// Performance).
    pub worker_threads: usize,
    /// Optional TLS on `listen`.
    pub tls: InboundTlsConfig,
    /// Limits that protect the listener from abusive or broken clients.
    pub listener: ListenerConfig,
    /// How the proxy talks to Prime.
    pub upstream: UpstreamConfig,
    /// Region key (`na`, `eu`, `fe`, …) → endpoint, signing region and marketplaces.
    pub regions: BTreeMap<String, RegionConfig>,
    /// SigV4 settings.
    pub signing: SigningConfig,
    /// Optional role to assume on top of the default AWS credential chain.
    pub credentials: CredentialsConfig,
    /// Retry policy for upstream attempts.
    pub retry: RetryConfig,
    /// Local rate limits applied before anything goes upstream.
    pub rate_limit: RateLimitConfig,
    /// OpenTelemetry traces over OTLP; off unless an endpoint is set.
    pub tracing: TracingConfig,
}

/// `[tls]`: serve the listener over TLS (for non-loopback use).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboundTlsConfig {
    /// PEM certificate chain; reloaded when the file changes. Empty: plain HTTP.
    pub cert_file: String,
    /// PEM private key; reloaded together with `cert_file`.
    pub key_file: String,
    /// PEM roots for client certificates; when set, clients must present one (mutual TLS).
    pub client_ca_file: String,
}

/// `[listener]`: protection against slow, oversized or too many clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    /// A client must send its complete request head within this time (slowloris).
    pub header_read_timeout_ms: u64,
    /// A client must send its complete request body within this time.
    pub body_read_timeout_ms: u64,
    /// A keep-alive connection with no request in flight and no bytes moving for this long
    /// is closed.
    pub idle_timeout_ms: u64,
    /// Upper bound on the bytes of one request head. Also the size of each connection's
    /// read buffer (hyper uses one limit for both), so it weighs on memory per connection.
    pub max_header_bytes: usize,
    /// Upper bound on the number of headers of one request.
    pub max_headers: usize,
    /// Connections beyond this wait in the kernel's backlog until one closes.
    pub max_connections: usize,
    /// Requests beyond this are answered 503 `overloaded` at once.
    pub max_in_flight: usize,
    /// Memory budget for buffered request and response bodies together: a request whose
    /// body would exceed it gets 503 `overloaded`; a response that would is streamed instead
    /// of buffered.
    pub max_buffered_bytes: u64,
}

/// `[upstream]`: the TLS client towards Prime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// PEM roots trusted in addition to the system's. Empty: system roots only.
    pub ca_file: String,
    pub connect_timeout_ms: u64,
    /// One upstream attempt, up to the response head (and a small body, read whole).
    pub attempt_timeout_ms: u64,
    /// All attempts and backoff together.
    pub total_timeout_ms: u64,
    pub pool_idle_timeout_ms: u64,
    /// Idle keep-alive connections kept per endpoint.
    pub pool_max_idle_per_host: usize,
    /// Allow `http://` endpoints (tests, local fakes). Never on by default.
    pub allow_plain_http: bool,
    /// HTTP/2 to Prime only after Prime has agreed to it.
    pub http2: bool,
    /// With `http2`: connections per endpoint at most. A new one is opened only while every
    /// open one is at the server's SETTINGS_MAX_CONCURRENT_STREAMS.
    pub http2_max_connections: usize,
    /// A streamed response body that brings no bytes for this long is ended: the client sees
    /// a broken response and the upstream connection is discarded.
    pub body_idle_timeout_ms: u64,
    /// Static headers added to every upstream attempt, and signed.
    pub headers: BTreeMap<String, String>,
}

/// `[regions.<key>]`: one Prime region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    pub endpoint: String,
    pub signing_region: String,
    pub marketplaces: Vec<String>,
}

/// `[signing]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigningConfig {
    pub service: String,
}

/// `[credentials]`: the default AWS chain is always the source; this optionally assumes a role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CredentialsConfig {
    /// Empty: use the chain's identity directly.
    pub role_arn: String,
    pub session_name: String,
    /// A secret shared with the role's owner: never printed.
    pub external_id: String,
}

/// `[retry]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// 1 = no retries.
    pub max_attempts: u32,
    pub base_delay_ms: u64,
    pub max_delay_ms: u64,
    pub retry_on_status: Vec<u16>,
    /// Size of each region's retry token bucket (0 = no budget: every retry is allowed).
    pub budget_tokens: u32,
    /// Tokens one retry costs (a retry after a timeout costs twice this).
    pub budget_retry_cost: u32,
    /// Tokens a first-attempt success puts back.
    pub budget_success_refill: u32,
}

/// `[rate_limit]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// 0 = off.
    pub requests_per_second: f64,
    /// 0 = the per-second rate, rounded up.
    pub burst: u32,
    /// Wait up to this long for a permit, then reject with 429.
    pub max_wait_ms: u64,
    /// Requests allowed to wait for a permit at once; more are rejected at once.
    pub max_waiting: usize,
    /// Extra limits for matching requests, applied on top of the global one.
    pub routes: Vec<RouteLimitConfig>,
    /// One limit for every replica, kept in Redis (off while `url` is empty).
    pub shared: SharedLimitConfig,
}

/// `[rate_limit.shared]`: with `url` set, `requests_per_second` and `burst` (and each
/// route's) are totals for every replica with the same `url` and `key`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SharedLimitConfig {
    /// `redis://HOST:PORT/DB` or `rediss://HOST:PORT/DB` (TLS); empty = off. A password in
    /// it is a secret: redacted when printed, never logged.
    pub url: String,
    /// Replicas with the same `url` and `key` share one quota; the Redis keys are
    /// `{<key>}:…` (one Redis Cluster slot).
    pub key: String,
    /// Redis password read from this file (a mounted Secret), re-read on every reconnect.
    pub password_file: String,
    /// PEM roots that verify a `rediss://` server (empty: the system's roots).
    pub ca_file: String,
    /// While Redis is unreachable, slow or failing: local | allow | deny.
    pub on_error: OnRedisError,
    /// A Redis call that takes longer than this counts as a failure.
    pub timeout_ms: u64,
}

/// What the shared limit does while Redis cannot be used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnRedisError {
    /// Enforce this replica's last known share: the rate ÷ the replicas seen recently.
    #[default]
    Local,
    /// Let every request through.
    Allow,
    /// Answer 429 `rate_limited`.
    Deny,
}

impl OnRedisError {
    pub fn as_str(self) -> &'static str {
        match self {
            OnRedisError::Local => "local",
            OnRedisError::Allow => "allow",
            OnRedisError::Deny => "deny",
        }
    }
}

/// Never prints the URL's password.
impl std::fmt::Debug for SharedLimitConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimitConfig")
            .field("url", &redact_url_password(&self.url))
            .field("key", &self.key)
            .field("password_file", &self.password_file)
            .field("ca_file", &self.ca_file)
            .field("on_error", &self.on_error)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

/// `[[rate_limit.routes]]`: a limit for requests whose path starts with `path_prefix`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteLimitConfig {
    pub path_prefix: String,
    /// Empty: every method.
    #[serde(default)]
    pub method: String,
    pub requests_per_second: f64,
    #[serde(default)]
    pub burst: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9901)),
            max_body_bytes: 1024 * 1024,
            shutdown_grace_ms: 10_000,
            worker_threads: 1,
            tls: InboundTlsConfig::default(),
            listener: ListenerConfig::default(),
            upstream: UpstreamConfig::default(),
            regions: default_regions(),
            signing: SigningConfig::default(),
            credentials: CredentialsConfig::default(),
            retry: RetryConfig::default(),
            rate_limit: RateLimitConfig::default(),
            tracing: TracingConfig::default(),
        }
    }
}

/// Prime's region table ("Appendix A").
fn default_regions() -> BTreeMap<String, RegionConfig> {
    let region = |endpoint: &str, signing_region: &str, marketplaces: &[&str]| RegionConfig {
        endpoint: endpoint.to_owned(),
        signing_region: signing_region.to_owned(),
        marketplaces: marketplaces.iter().map(|m| (*m).to_owned()).collect(),
    };
    BTreeMap::from([
        (
            "na".to_owned(),
            region(
                "https://prime-apis.amazon.com",
                "us-east-1",
                &["US", "CA", "MX"],
            ),
        ),
        (
            "eu".to_owned(),
            region(
                "https://prime-apis.amazon.eu",
                "eu-west-1",
                &[
                    "UK", "FR", "IT", "ES", "IN", "AE", "SA", "EG", "NL", "DE", "TR",
                ],
            ),
        ),
        (
            "fe".to_owned(),
            region(
                "https://prime-apis.amazon.jp",
                "us-west-2",
                &["JP", "SG", "AU"],
            ),
        ),
    ])
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            idle_timeout_ms: 120_000,
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_connections: 4096,
            max_in_flight: 1024,
            max_buffered_bytes: 64 * 1024 * 1024,
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            ca_file: String::new(),
            connect_timeout_ms: 2_000,
            attempt_timeout_ms: 10_000,
            total_timeout_ms: 30_000,
            pool_idle_timeout_ms: 90_000,
            pool_max_idle_per_host: 256,
            allow_plain_http: false,
            http2: false,
            http2_max_connections: 8,
            body_idle_timeout_ms: 10_000,
            headers: BTreeMap::new(),
        }
    }
}

impl Default for SigningConfig {
    fn default() -> Self {
        Self {
            service: "execute-api".to_owned(),
        }
    }
}

impl Default for CredentialsConfig {
    fn default() -> Self {
        Self {
            role_arn: String::new(),
            session_name: "prime-sigv4-proxy".to_owned(),
            external_id: String::new(),
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay_ms: 100,
            max_delay_ms: 5_000,
            retry_on_status: vec![429, 500, 502, 503, 504],
            budget_tokens: 500,
            budget_retry_cost: 5,
            budget_success_refill: 1,
        }
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            requests_per_second: 0.0,
            burst: 0,
            max_wait_ms: 0,
            max_waiting: 1024,
            routes: Vec::new(),
            shared: SharedLimitConfig::default(),
        }
    }
}

impl Default for SharedLimitConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            key: "prime-sigv4-proxy".to_owned(),
            password_file: String::new(),
            ca_file: String::new(),
            on_error: OnRedisError::Local,
            timeout_ms: 50,
        }
    }
}

/// Why the configuration was refused. Each variant names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Parse(String),
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

impl Config {
    /// Merges defaults, the optional TOML file and the process environment, then validates.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, Env::prefixed(ENV_PREFIX))
    }

    /// Like [`Config::load`] with the given environment provider (tests pass a fixed one).
    ///
    /// The provider's keys are taken to be stripped of [`ENV_PREFIX`]: Kubernetes service
    /// links (`PRIME_PROXY_SERVICE_HOST`, `PRIME_PROXY_PORT=tcp://…`, …) are recognised by
    /// their full name and value and left out.
    pub fn load_from(file: Option<&Path>, env: Env) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            // figment treats a missing file as empty: a typo in --config must not go unnoticed.
            if let Err(e) = std::fs::metadata(path) {
                return Err(ConfigError::File {
                    path: path.to_owned(),
                    reason: e.to_string(),
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let env = env
            .ignore(NON_CONFIG_ENV)
            .filter(|key| !is_injected_service_link(key.as_str()))
            .split("__");
        figment = figment.merge(env);
        let config: Config = figment.extract().map_err(describe_figment_error)?;
        config.validate()?;
        // The standard OTEL_* variables tracing also reads: a bad one is refused here too.
        crate::telemetry::Settings::resolve(&config.tracing, |name| std::env::var(name).ok())?;
        Ok(config)
    }

    /// Parses a TOML document on top of the defaults, without the environment (tests, examples).
    pub fn from_toml(toml: &str) -> Result<Self, ConfigError> {
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(toml))
            .extract()
            .map_err(describe_figment_error)?;
        config.validate()?;
        Ok(config)
    }

    /// The merged configuration as TOML, with secrets redacted (for `--check-config`).
    pub fn to_redacted_toml(&self) -> Result<String, ConfigError> {
        let mut shown = self.clone();
        if !shown.credentials.external_id.is_empty() {
            shown.credentials.external_id = REDACTED.to_owned();
        }
        shown.rate_limit.shared.url = redact_url_password(&shown.rate_limit.shared.url);
        toml::to_string(&shown).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Every rule that figment's types cannot express.
    fn validate(&self) -> Result<(), ConfigError> {
        for bounded in self.integer_keys() {
            bounded.check()?;
        }
        if self.listen == self.admin_listen && self.listen.port() != 0 {
            return Err(invalid("admin_listen", "must differ from `listen`"));
        }
        self.tls.validate()?;
        if self.max_body_bytes > self.listener.max_buffered_bytes {
            return Err(invalid(
                "max_body_bytes",
                "must not exceed listener.max_buffered_bytes (a body is buffered whole)",
            ));
        }
        for (name, value) in &self.upstream.headers {
            let key = format!("upstream.headers.{name}");
            check_static_header(name, value).map_err(|reason| invalid(key, reason))?;
        }
        self.validate_regions()?;
        if self.signing.service.trim().is_empty() {
            return Err(invalid("signing.service", "must not be empty"));
        }
        if !self.credentials.role_arn.is_empty() && !self.credentials.role_arn.starts_with("arn:") {
            return Err(invalid(
                "credentials.role_arn",
                "must be a role ARN (arn:aws:iam::<account>:role/<name>)",
            ));
        }
        if !self.credentials.role_arn.is_empty() && self.credentials.session_name.is_empty() {
            return Err(invalid("credentials.session_name", "must not be empty"));
        }
        self.retry.validate()?;
        self.rate_limit.validate()?;
        self.tracing.validate()?;
        Ok(())
    }

    /// Every integer key with the values it may take. Validation checks these before
    /// anything else, so that no accepted value can overflow a `Duration`, an `Instant` or a
    /// semaphore, or allocate without bound, once the proxy runs. `config/example.toml`
    /// states each range (a unit test keeps them equal).
    fn integer_keys(&self) -> Vec<Bounded> {
        use Unit::{Bytes, Count, Millis};
        let key = |key: &str, value: u64, min: u64, max: u64, unit: Unit| Bounded {
            key: key.to_owned(),
            value,
            min,
            max,
            unit,
        };
        let (listener, upstream, retry, limit) = (
            &self.listener,
            &self.upstream,
            &self.retry,
            &self.rate_limit,
        );
        let mut keys = vec![
            key("max_body_bytes", self.max_body_bytes, 1, GIB, Bytes),
            key(
                "shutdown_grace_ms",
                self.shutdown_grace_ms,
                0,
                HOUR_MS,
                Millis,
            ),
            key("worker_threads", wide(self.worker_threads), 0, 256, Count),
            key(
                "listener.header_read_timeout_ms",
                listener.header_read_timeout_ms,
                1,
                10 * MINUTE_MS,
                Millis,
            ),
            key(
                "listener.body_read_timeout_ms",
                listener.body_read_timeout_ms,
                1,
                HOUR_MS,
                Millis,
            ),
            key(
                "listener.idle_timeout_ms",
                listener.idle_timeout_ms,
                1,
                DAY_MS,
                Millis,
            ),
            // hyper refuses a read buffer under 8 KiB (it asserts).
            key(
                "listener.max_header_bytes",
                wide(listener.max_header_bytes),
                8192,
                MIB,
                Bytes,
            ),
            // hyper allocates room for this many headers each time it parses a request head.
            key(
                "listener.max_headers",
                wide(listener.max_headers),
                1,
                1000,
                Count,
            ),
            key(
                "listener.max_connections",
                wide(listener.max_connections),
                1,
                100_000,
                Count,
            ),
            key(
                "listener.max_in_flight",
                wide(listener.max_in_flight),
                1,
                100_000,
                Count,
            ),
            key(
                "listener.max_buffered_bytes",
                listener.max_buffered_bytes,
                MIB,
                16 * GIB,
                Bytes,
            ),
            key(
                "upstream.connect_timeout_ms",
                upstream.connect_timeout_ms,
                1,
                10 * MINUTE_MS,
                Millis,
            ),
            key(
                "upstream.attempt_timeout_ms",
                upstream.attempt_timeout_ms,
                1,
                HOUR_MS,
                Millis,
            ),
            key(
                "upstream.total_timeout_ms",
                upstream.total_timeout_ms,
                1,
                HOUR_MS,
                Millis,
            ),
            key(
                "upstream.pool_idle_timeout_ms",
                upstream.pool_idle_timeout_ms,
                0,
                DAY_MS,
                Millis,
            ),
            key(
                "upstream.body_idle_timeout_ms",
                upstream.body_idle_timeout_ms,
                1,
                HOUR_MS,
                Millis,
            ),
            key(
                "rate_limit.shared.timeout_ms",
                self.rate_limit.shared.timeout_ms,
                1,
                5_000,
                Millis,
            ),
            key(
                "upstream.pool_max_idle_per_host",
                wide(upstream.pool_max_idle_per_host),
                0,
                100_000,
                Count,
            ),
            key(
                "upstream.http2_max_connections",
                wide(upstream.http2_max_connections),
                1,
                1_024,
                Count,
            ),
            key(
                "retry.max_attempts",
                u64::from(retry.max_attempts),
                1,
                100,
                Count,
            ),
            key(
                "retry.base_delay_ms",
                retry.base_delay_ms,
                0,
                10 * MINUTE_MS,
                Millis,
            ),
            key("retry.max_delay_ms", retry.max_delay_ms, 0, HOUR_MS, Millis),
            key(
                "retry.budget_tokens",
                u64::from(retry.budget_tokens),
                0,
                MILLION,
                Count,
            ),
            key(
                "retry.budget_retry_cost",
                u64::from(retry.budget_retry_cost),
                0,
                MILLION,
                Count,
            ),
            key(
                "retry.budget_success_refill",
                u64::from(retry.budget_success_refill),
                0,
                MILLION,
                Count,
            ),
            // With the slowest rate (0.001/s) a burst of a million still fits governor's
            // nanosecond arithmetic (10^18 ns).
            key(
                "rate_limit.burst",
                u64::from(limit.burst),
                0,
                MILLION,
                Count,
            ),
            key(
                "rate_limit.max_wait_ms",
                limit.max_wait_ms,
                0,
                10 * MINUTE_MS,
                Millis,
            ),
            key(
                "rate_limit.max_waiting",
                wide(limit.max_waiting),
                0,
                100_000,
                Count,
            ),
        ];
        for (i, route) in limit.routes.iter().enumerate() {
            keys.push(key(
                &format!("rate_limit.routes[{i}].burst"),
                u64::from(route.burst),
                0,
                MILLION,
                Count,
            ));
        }
        keys
    }

    /// What the operator should hear about at start, one message each (the binary logs them
    /// as WARN once logging is up). Nothing here stops the proxy.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if !is_loopback(self.listen) && self.tls.client_ca_file.is_empty() {
            warnings.push(format!(
                "`listen` = {} is not a loopback address and `tls.client_ca_file` is not set: \
                 anyone who can reach this port can have requests signed with this proxy's AWS \
                 identity. Admit only your clients (the Helm chart's NetworkPolicy, a security \
                 group) or require client certificates (`tls.client_ca_file`)",
                self.listen
            ));
        }
        warnings
    }

    fn validate_regions(&self) -> Result<(), ConfigError> {
        if self.regions.is_empty() {
            return Err(invalid("regions", "at least one region is needed"));
        }
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for (key, region) in &self.regions {
            let at = |field: &str| format!("regions.{key}.{field}");
            if key.is_empty()
                || !key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(invalid(
                    format!("regions.{key}"),
                    "a region key is letters, digits, '-' or '_'",
                ));
            }
            if key == "none" {
                return Err(invalid(
                    "regions.none",
                    "`none` is the metrics label for requests that matched no region",
                ));
            }
            check_endpoint(&region.endpoint, self.upstream.allow_plain_http)
                .map_err(|reason| invalid(at("endpoint"), reason))?;
            if region.signing_region.trim().is_empty() {
                return Err(invalid(at("signing_region"), "must not be empty"));
            }
            if region.marketplaces.is_empty() {
                return Err(invalid(
                    at("marketplaces"),
                    "must list at least one marketplace",
                ));
            }
            for marketplace in &region.marketplaces {
                let code = marketplace.trim().to_ascii_uppercase();
                if code.is_empty() || !code.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(invalid(
                        at("marketplaces"),
                        format!("{marketplace:?} is not a marketplace code"),
                    ));
                }
                if let Some(other) = seen.insert(code.clone(), key) {
                    return Err(invalid(
                        at("marketplaces"),
                        format!(
                            "marketplace {code} is also listed in regions.{other}.marketplaces"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

/// An endpoint is `https://host[:port]` with no path, query or credentials.
fn check_endpoint(endpoint: &str, allow_plain_http: bool) -> Result<(), String> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| format!("{endpoint:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if allow_plain_http => {}
        Some("http") => {
            return Err(format!(
                "{endpoint:?} is not https:// (set upstream.allow_plain_http = true for a local test endpoint)"
            ))
        }
        _ => return Err(format!("{endpoint:?} must start with https://")),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{endpoint:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("{endpoint:?} must not carry user information"));
    }
    if authority.host().is_empty() {
        return Err(format!("{endpoint:?} has no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "{endpoint:?} must be scheme and host only: the client's path is appended"
        ));
    }
    Ok(())
}

impl InboundTlsConfig {
    /// True when the listener serves TLS.
    pub fn enabled(&self) -> bool {
        !self.cert_file.is_empty()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        match (self.cert_file.is_empty(), self.key_file.is_empty()) {
            (true, false) => Err(invalid(
                "tls.cert_file",
                "is needed when tls.key_file is set",
            )),
            (false, true) => Err(invalid(
                "tls.key_file",
                "is needed when tls.cert_file is set",
            )),
            (true, true) if !self.client_ca_file.is_empty() => Err(invalid(
                "tls.client_ca_file",
                "needs tls.cert_file and tls.key_file (mutual TLS is TLS first)",
            )),
            _ => Ok(()),
        }
    }
}

impl UpstreamConfig {
    pub fn body_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.body_idle_timeout_ms)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn attempt_timeout(&self) -> Duration {
        Duration::from_millis(self.attempt_timeout_ms)
    }
    pub fn total_timeout(&self) -> Duration {
        Duration::from_millis(self.total_timeout_ms)
    }
    pub fn pool_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.pool_idle_timeout_ms)
    }
}

/// Header names the proxy sets or strips itself: a static header may not replace them.
const PROXY_OWNED_HEADERS: &[&str] = &[
    "host",
    "authorization",
    "content-length",
    "content-type",
    "expect",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A `[upstream.headers]` entry: a valid header name the proxy does not own, with a value
/// that can be signed (visible ASCII and spaces).
fn check_static_header(name: &str, value: &str) -> Result<(), String> {
    let lower = name.to_ascii_lowercase();
    if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
        return Err(format!("{name:?} is not a header name"));
    }
    if PROXY_OWNED_HEADERS.contains(&lower.as_str()) || lower.starts_with("x-amz-") {
        return Err(format!(
            "{name:?} is set by the proxy itself (host, authorization, framing and x-amz-* headers cannot be configured)"
        ));
    }
    if value.is_empty() || !value.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err(format!(
            "the value of {name:?} must be non-empty visible ASCII (it is signed)"
        ));
    }
    Ok(())
}

impl RetryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_delay_ms < self.base_delay_ms {
            return Err(invalid(
                "retry.max_delay_ms",
                "must not be below retry.base_delay_ms",
            ));
        }
        for status in &self.retry_on_status {
            if !(100..=599).contains(status) {
                return Err(invalid(
                    "retry.retry_on_status",
                    format!("{status} is not an HTTP status"),
                ));
            }
            if matches!(status, 400 | 403) {
                return Err(invalid(
                    "retry.retry_on_status",
                    format!("{status} is never retried: the request itself is at fault"),
                ));
            }
        }
        if self.budget_tokens > 0 && self.budget_retry_cost == 0 {
            return Err(invalid(
                "retry.budget_retry_cost",
                "must be at least 1 when retry.budget_tokens is set",
            ));
        }
        Ok(())
    }
}

impl RateLimitConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        check_rate("rate_limit.requests_per_second", self.requests_per_second)?;
        for (i, route) in self.routes.iter().enumerate() {
            let at = |field: &str| format!("rate_limit.routes[{i}].{field}");
            if !route.path_prefix.starts_with('/') {
                return Err(invalid(at("path_prefix"), "must start with '/'"));
            }
            if !route.method.is_empty()
                && http::Method::from_bytes(route.method.as_bytes()).is_err()
            {
                return Err(invalid(
                    at("method"),
                    format!("{:?} is not an HTTP method", route.method),
                ));
            }
            check_rate(&at("requests_per_second"), route.requests_per_second)?;
            if route.requests_per_second == 0.0 {
                return Err(invalid(at("requests_per_second"), "must be greater than 0"));
            }
        }
        self.shared.validate()?;
        if self.shared.enabled() && self.requests_per_second == 0.0 && self.routes.is_empty() {
            return Err(invalid(
                "rate_limit.shared.url",
                "is set, but there is no limit to share: set rate_limit.requests_per_second or add [[rate_limit.routes]]",
            ));
        }
        Ok(())
    }
}

impl SharedLimitConfig {
    /// True when the limits are shared through Redis.
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        // The other keys are checked even while `url` is empty, so a typo is caught before
        // the shared limit is switched on.
        if self.key.is_empty()
            || self.key.len() > 128
            || self
                .key
                .chars()
                .any(|c| c == '{' || c == '}' || c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                "rate_limit.shared.key",
                "must be 1 to 128 characters without braces, spaces or control characters",
            ));
        }
        if !(1..=5_000).contains(&self.timeout_ms) {
            return Err(invalid(
                "rate_limit.shared.timeout_ms",
                "must be between 1 and 5000",
            ));
        }
        if !self.enabled() {
            return Ok(());
        }
        // The URL may carry a password: messages describe it, never quote it.
        let url = &self.url;
        let tls = if url.starts_with("rediss://") {
            true
        } else if url.starts_with("redis://") {
            false
        } else {
            return Err(invalid(
                "rate_limit.shared.url",
                "must start with redis:// or rediss:// (TLS)",
            ));
        };
        if url.contains('#') {
            return Err(invalid(
                "rate_limit.shared.url",
                "must not have a #fragment (#insecure would turn off certificate checks)",
            ));
        }
        let info = redis::IntoConnectionInfo::into_connection_info(url.as_str()).map_err(|e| {
            invalid(
                "rate_limit.shared.url",
                format!("is not a Redis URL (redis://[:PASSWORD@]HOST[:PORT][/DB]): {e}"),
            )
        })?;
        if !self.password_file.is_empty() && info.redis_settings().password().is_some() {
            return Err(invalid(
                "rate_limit.shared.password_file",
                "is set, but rate_limit.shared.url carries a password too: keep it in one place",
            ));
        }
        if !self.ca_file.is_empty() && !tls {
            return Err(invalid(
                "rate_limit.shared.ca_file",
                "is only used with a rediss:// URL",
            ));
        }
        Ok(())
    }
}

/// `scheme://user:<redacted>@host…`: the URL with its password (or a lone userinfo, which
/// some clients read as a password) replaced.
pub fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let (userinfo, host) = authority.split_at(at);
    let shown = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:{REDACTED}"),
        None => REDACTED.to_owned(),
    };
    format!("{scheme}://{shown}{host}{tail}")
}

/// Slowest and fastest rate a limit may have, in requests per second.
const MIN_RATE: f64 = 0.001;
const MAX_RATE: f64 = 1_000_000.0;

/// A rate is 0 (off) or between [`MIN_RATE`] and [`MAX_RATE`].
fn check_rate(key: &str, rate: f64) -> Result<(), ConfigError> {
    if rate == 0.0 || (MIN_RATE..=MAX_RATE).contains(&rate) {
        return Ok(());
    }
    Err(invalid(
        key,
        format!("{rate} is out of range: must be 0 (off) or 0.001 to 1000000"),
    ))
}

const MINUTE_MS: u64 = 60_000;
const HOUR_MS: u64 = 60 * MINUTE_MS;
const DAY_MS: u64 = 24 * HOUR_MS;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const MILLION: u64 = 1_000_000;

/// What an integer key counts, for messages.
#[derive(Debug, Clone, Copy)]
enum Unit {
    Millis,
    Bytes,
    Count,
}

/// One integer key, its value and the closed range it must be in.
#[derive(Debug)]
struct Bounded {
    key: String,
    value: u64,
    min: u64,
    max: u64,
    unit: Unit,
}

impl Bounded {
    fn check(&self) -> Result<(), ConfigError> {
        if (self.min..=self.max).contains(&self.value) {
            return Ok(());
        }
        let (min, max) = (self.min, self.max);
        let range = match self.unit {
            Unit::Millis => format!("{min} to {max} ms ({})", human_millis(max)),
            Unit::Bytes => format!("{min} to {max} bytes ({})", human_bytes(max)),
            Unit::Count => format!("{min} to {max}"),
        };
        Err(invalid(
            self.key.clone(),
            format!("{} is out of range: must be {range}", self.value),
        ))
    }
}

/// `3600000` → `at most 1 h`, for range messages.
fn human_millis(ms: u64) -> String {
    match ms {
        ms if ms % DAY_MS == 0 => format!("at most {} day", ms / DAY_MS),
        ms if ms % HOUR_MS == 0 => format!("at most {} h", ms / HOUR_MS),
        ms if ms % MINUTE_MS == 0 => format!("at most {} min", ms / MINUTE_MS),
        ms => format!("at most {} s", ms as f64 / 1000.0),
    }
}

/// `1073741824` → `at most 1 GiB`, for range messages.
fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b % GIB == 0 => format!("at most {} GiB", b / GIB),
        b if b % MIB == 0 => format!("at most {} MiB", b / MIB),
        b => format!("at most {} KiB", b as f64 / 1024.0),
    }
}

/// A `usize` key's value as `u64` (saturating, for exotic targets).
fn wide(value: usize) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

/// Loopback, also as an IPv4-mapped IPv6 address (`::ffff:127.0.0.1`).
fn is_loopback(address: SocketAddr) -> bool {
    address.ip().to_canonical().is_loopback()
}

/// True when the variable `PRIME_PROXY_<key>` is one the kubelet wrote for a Service in the
/// namespace (SPEC, "Running"): such variables are never configuration.
fn is_injected_service_link(key: &str) -> bool {
    let name = format!("{ENV_PREFIX}{key}");
    std::env::var(&name).is_ok_and(|value| service_links::is_service_link(&name, &value))
}

/// figment's messages already carry the key path; this makes them read as one line per fault.
fn describe_figment_error(error: figment::Error) -> ConfigError {
    let lines: Vec<String> = error.into_iter().map(describe_one).collect();
    ConfigError::Parse(lines.join("; "))
}

fn describe_one(error: figment::Error) -> String {
    let key = error.path.join(".");
    let origin = error
        .metadata
        .as_ref()
        .map(|m| match &m.source {
            Some(source) => format!(" (from {source})"),
            None => format!(" (from {})", m.name),
        })
        .unwrap_or_default();
    match &error.kind {
        // figment's path already ends with the unknown field.
        figment::error::Kind::UnknownField(field, _) => {
            let full = if key.is_empty() {
                field.as_str()
            } else {
                key.as_str()
            };
            format!("unknown configuration key `{full}`{origin}")
        }
        kind if key.is_empty() => format!("{kind}{origin}"),
        kind => format!("invalid value for `{key}`: {kind}{origin}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const EXAMPLE: &str = include_str!("../config/example.toml");

    #[test]
    fn the_example_file_is_exactly_the_built_in_defaults() {
        // deny_unknown_fields refuses a key the example has and the code lost; equality
        // catches a default that changed on one side only.
        assert_eq!(Config::from_toml(EXAMPLE).unwrap(), Config::default());
    }

    #[test]
    fn the_example_file_documents_every_key() {
        fn keys(value: &toml::Value, prefix: &str, out: &mut Vec<String>) {
            if let toml::Value::Table(table) = value {
                for (key, value) in table {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    keys(value, &path, out);
                    out.push(path);
                }
            }
        }
        let example: toml::Value = toml::from_str(EXAMPLE).unwrap();
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        let (mut documented, mut known) = (Vec::new(), Vec::new());
        keys(&example, "", &mut documented);
        keys(&defaults, "", &mut known);
        for key in known {
            assert!(
                documented.contains(&key),
                "config/example.toml does not document `{key}`"
            );
        }
    }

    #[test]
    fn a_region_table_with_only_an_endpoint_keeps_the_built_in_rest() {
        let config =
            Config::from_toml("[regions.eu]\nendpoint = \"https://eu.example\"\n").unwrap();
        let eu = &config.regions["eu"];
        assert_eq!(eu.endpoint, "https://eu.example");
        assert_eq!(eu.signing_region, "eu-west-1");
        assert_eq!(eu.marketplaces.len(), 11);
        assert_eq!(config.regions.len(), 3);
    }

    #[test]
    fn regions_can_be_added() {
        let config = Config::from_toml(
            "[regions.br]\nendpoint = \"https://prime-apis.amazon.com.br\"\nsigning_region = \"us-east-1\"\nmarketplaces = [\"BR\"]\n",
        )
        .unwrap();
        assert_eq!(config.regions.len(), 4);
    }

    fn refused(toml: &str) -> String {
        Config::from_toml(toml).unwrap_err().to_string()
    }

    #[test]
    fn refusals_name_the_key() {
        let cases = [
            ("bogus = 1", "bogus"),
            ("[retry]\nmax_attemps = 2", "retry.max_attemps"),
            ("listen = \"not-an-address\"", "listen"),
            ("admin_listen = \"127.0.0.1:99999\"", "admin_listen"),
            (
                "[regions.na]\nendpoint = \"http://prime-apis.amazon.com\"",
                "regions.na.endpoint",
            ),
            (
                "[regions.na]\nendpoint = \"ftp://x\"",
                "regions.na.endpoint",
            ),
            (
                "[regions.na]\nendpoint = \"https://x.example/path\"",
                "regions.na.endpoint",
            ),
            (
                "[regions.fe]\nmarketplaces = [\"JP\", \"us\"]",
                "regions.fe.marketplaces",
            ),
            (
                "[regions.xx]\nendpoint = \"https://x.example\"",
                "regions.xx",
            ),
            ("[retry]\nmax_attempts = 0", "retry.max_attempts"),
            (
                "[retry]\nretry_on_status = [503, 403]",
                "retry.retry_on_status",
            ),
            (
                "[retry]\nbase_delay_ms = 10\nmax_delay_ms = 5",
                "retry.max_delay_ms",
            ),
            (
                "[upstream]\nattempt_timeout_ms = 0",
                "upstream.attempt_timeout_ms",
            ),
            (
                "[upstream]\nconnect_timeout_ms = \"fast\"",
                "upstream.connect_timeout_ms",
            ),
            ("[tls]\ncert_file = \"/x.pem\"", "tls.key_file"),
            (
                "[rate_limit]\nrequests_per_second = -1",
                "rate_limit.requests_per_second",
            ),
            (
                "[[rate_limit.routes]]\npath_prefix = \"v1\"\nrequests_per_second = 1",
                "rate_limit.routes[0].path_prefix",
            ),
            (
                "[credentials]\nrole_arn = \"prime-client\"",
                "credentials.role_arn",
            ),
            ("[signing]\nservice = \"\"", "signing.service"),
            (
                "[rate_limit.shared]\non_error = \"ignore\"",
                "rate_limit.shared.on_error",
            ),
            (
                "[rate_limit.shared]\nkey = \"a{b}\"",
                "rate_limit.shared.key",
            ),
            (
                "[rate_limit.shared]\ntimeout_ms = 0",
                "rate_limit.shared.timeout_ms",
            ),
            (
                "[rate_limit]\nrequests_per_second = 5\n[rate_limit.shared]\nurl = \"http://127.0.0.1:6379\"",
                "rate_limit.shared.url",
            ),
            (
                "[rate_limit]\nrequests_per_second = 5\n[rate_limit.shared]\nurl = \"redis://127.0.0.1:6379/notadb\"",
                "rate_limit.shared.url",
            ),
            (
                "[rate_limit.shared]\nurl = \"redis://127.0.0.1:6379\"",
                "rate_limit.shared.url",
            ),
            (
                "[rate_limit]\nrequests_per_second = 5\n[rate_limit.shared]\nurl = \"redis://:pw@127.0.0.1\"\npassword_file = \"/run/pw\"",
                "rate_limit.shared.password_file",
            ),
            (
                "[rate_limit]\nrequests_per_second = 5\n[rate_limit.shared]\nurl = \"redis://127.0.0.1\"\nca_file = \"/ca.pem\"",
                "rate_limit.shared.ca_file",
            ),
            ("max_body_bytes = 0", "max_body_bytes"),
            (
                "[upstream.headers]\n\"x-amz-date\" = \"1\"",
                "upstream.headers.x-amz-date",
            ),
            (
                "[upstream.headers]\nHost = \"evil.example\"",
                "upstream.headers.Host",
            ),
            (
                "[upstream.headers]\nauthorization = \"x\"",
                "upstream.headers.authorization",
            ),
            (
                "[upstream.headers]\n\"bad name\" = \"x\"",
                "upstream.headers.bad name",
            ),
            (
                "[upstream.headers]\n\"x-ok\" = \"caf\u{e9}\"",
                "upstream.headers.x-ok",
            ),
            (
                "[listener]\nmax_buffered_bytes = 1024",
                "listener.max_buffered_bytes",
            ),
            (
                "[upstream]\nbody_idle_timeout_ms = 0",
                "upstream.body_idle_timeout_ms",
            ),
            ("max_body_bytes = 200000000", "max_body_bytes"),
        ];
        for (toml, key) in cases {
            let message = refused(toml);
            assert!(
                message.contains(key),
                "{toml:?} → {message:?} does not name `{key}`"
            );
        }
    }

    #[test]
    fn printing_redacts_the_redis_password_and_refusals_never_quote_it() {
        let config = Config::from_toml(
            "[rate_limit]\nrequests_per_second = 5\n[rate_limit.shared]\nurl = \"rediss://app:s3cret-pw@redis.internal:6380/2\"\non_error = \"deny\"\n",
        )
        .unwrap();
        let printed = config.to_redacted_toml().unwrap();
        assert!(!printed.contains("s3cret-pw"), "{printed}");
        assert!(printed.contains("url = \"rediss://app:<redacted>@redis.internal:6380/2\""));
        assert!(printed.contains("on_error = \"deny\""));
        assert!(!format!("{config:?}").contains("s3cret-pw"));
        let message = refused(
            "[rate_limit]\nrequests_per_second = 5\n[rate_limit.shared]\nurl = \"redis://:s3cret-pw@host/x\"\n",
        );
        assert!(message.contains("rate_limit.shared.url"), "{message}");
        assert!(!message.contains("s3cret-pw"), "{message}");
        assert_eq!(
            redact_url_password("redis://s3cret@h:1/0"),
            "redis://<redacted>@h:1/0"
        );
        assert_eq!(redact_url_password("redis://h:1"), "redis://h:1");
        assert_eq!(redact_url_password(""), "");
    }

    #[test]
    fn plain_http_endpoints_need_the_explicit_switch() {
        let toml = "[regions.na]\nendpoint = \"http://127.0.0.1:9000\"\n";
        assert!(Config::from_toml(toml).is_err());
        let allowed = format!("[upstream]\nallow_plain_http = true\n{toml}");
        assert!(Config::from_toml(&allowed).is_ok());
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn environment_overrides_the_file_and_lists_use_toml_syntax() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "proxy.toml",
                "listen = \"127.0.0.1:7000\"\n[retry]\nmax_attempts = 2\n",
            )?;
            jail.set_env("PRIME_PROXY_LISTEN", "0.0.0.0:8081");
            jail.set_env("PRIME_PROXY_RETRY__BASE_DELAY_MS", "7");
            jail.set_env("PRIME_PROXY_REGIONS__NA__MARKETPLACES", "[\"US\",\"CA\"]");
            jail.set_env("PRIME_PROXY_LOG_FORMAT", "text");
            let config = Config::load(Some(Path::new("proxy.toml"))).unwrap();
            assert_eq!(config.listen.to_string(), "0.0.0.0:8081");
            assert_eq!(config.retry.max_attempts, 2);
            assert_eq!(config.retry.base_delay_ms, 7);
            assert_eq!(config.regions["na"].marketplaces, ["US", "CA"]);
            assert_eq!(config.regions["na"].signing_region, "us-east-1");
            Ok(())
        });
    }

    #[test]
    fn a_missing_config_file_is_an_error_not_an_empty_file() {
        let error = Config::load_from(
            Some(Path::new("/nonexistent/proxy.toml")),
            Env::raw().only(&[]),
        )
        .unwrap_err();
        assert!(error.to_string().contains("/nonexistent/proxy.toml"));
    }

    #[test]
    fn printing_redacts_the_external_id_and_round_trips() {
        let config = Config::from_toml(
            "[credentials]\nrole_arn = \"arn:aws:iam::1:role/r\"\nexternal_id = \"very-secret-id\"\n",
        )
        .unwrap();
        let printed = config.to_redacted_toml().unwrap();
        assert!(!printed.contains("very-secret-id"));
        assert!(printed.contains("external_id = \"<redacted>\""));
        let mut reparsed = Config::from_toml(&printed).unwrap();
        reparsed.credentials.external_id = "very-secret-id".into();
        assert_eq!(reparsed, config);
    }

    /// The variables a namespace with these Services injects into every pod (the chart's own
    /// Service for release `prime-proxy` is `prime-proxy-prime-sigv4-proxy`).
    fn namespace_service_links() -> Vec<(String, String)> {
        use super::service_links::tests::kubelet_variables;
        let mut vars = kubelet_variables("prime-proxy", "10.96.0.12", &[("http", 8080, "TCP")]);
        vars.extend(kubelet_variables(
            "prime-sigv4-proxy",
            "10.96.0.13",
            &[("http", 8080, "TCP"), ("admin", 9901, "TCP")],
        ));
        vars.extend(kubelet_variables(
            "prime-proxy-prime-sigv4-proxy",
            "fd00:10:96::e",
            &[("http", 8080, "TCP"), ("admin", 9901, "TCP")],
        ));
        vars
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn service_links_in_the_environment_are_not_configuration() {
        figment::Jail::expect_with(|jail| {
            let vars = namespace_service_links();
            assert!(vars.iter().any(|(name, _)| name == "PRIME_PROXY_PORT"));
            assert!(vars
                .iter()
                .any(|(name, _)| name == "PRIME_PROXY_PRIME_SIGV4_PROXY_SERVICE_PORT_HTTP"));
            for (name, value) in &vars {
                jail.set_env(name, value);
            }
            jail.set_env("PRIME_PROXY_RETRY__MAX_ATTEMPTS", "5");
            let config = Config::load(None).unwrap();
            assert_eq!(config.retry.max_attempts, 5);
            assert_eq!(config.listen, Config::default().listen);

            // A real mistake next to them is still refused, naming it.
            jail.set_env("PRIME_PROXY_RETRY__MAX_ATEMPTS", "5");
            let error = Config::load(None).unwrap_err().to_string();
            assert!(error.contains("retry.max_atempts"), "{error}");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn a_link_shaped_name_with_a_value_no_kubelet_writes_is_still_refused() {
        for (name, value, key) in [
            ("PRIME_PROXY_ADMIN_PORT", "9901", "admin_port"),
            ("PRIME_PROXY_PORT", "8080", "port"),
            ("PRIME_PROXY_SERVICE_HOST", "proxy.example", "service_host"),
        ] {
            figment::Jail::expect_with(|jail| {
                jail.set_env(name, value);
                let error = Config::load(None).unwrap_err().to_string();
                assert!(error.contains(key), "{name}={value}: {error}");
                Ok(())
            });
        }
    }

    /// Every key path of the configuration (tables and values), as `a.b.c`.
    fn key_paths(value: &toml::Value, prefix: &str, out: &mut Vec<String>) {
        if let toml::Value::Table(table) = value {
            for (key, value) in table {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                key_paths(value, &path, out);
                out.push(path);
            }
        }
    }

    #[test]
    fn no_configuration_key_looks_like_a_service_link() {
        let mut paths = Vec::new();
        key_paths(
            &toml::Value::try_from(Config::default()).unwrap(),
            "",
            &mut paths,
        );
        assert!(paths.len() > 40, "{paths:?}");
        let link_values = [
            "10.96.0.12",
            "fd00::12",
            "8080",
            "tcp://10.96.0.12:8080",
            "tcp",
        ];
        for path in paths {
            let name = format!("{ENV_PREFIX}{}", path.replace('.', "__").to_uppercase());
            for value in link_values {
                assert!(
                    !service_links::is_service_link(&name, value),
                    "{name}={value} would be ignored as a service link"
                );
            }
        }
    }

    #[test]
    fn out_of_range_numbers_are_refused_naming_the_key() {
        let cases = [
            ("listener.max_in_flight", "[listener]\nmax_in_flight = 4611686018427387904"),
            ("listener.max_in_flight", "[listener]\nmax_in_flight = 0"),
            ("rate_limit.max_waiting", "[rate_limit]\nmax_waiting = 9223372036854775807"),
            ("rate_limit.max_wait_ms", "[rate_limit]\nmax_wait_ms = 9223372036854775807"),
            ("shutdown_grace_ms", "shutdown_grace_ms = 3600001"),
            ("worker_threads", "worker_threads = 257"),
            ("max_body_bytes", "max_body_bytes = 1073741825"),
            ("listener.max_header_bytes", "[listener]\nmax_header_bytes = 8191"),
            ("listener.max_headers", "[listener]\nmax_headers = 1001"),
            ("upstream.total_timeout_ms", "[upstream]\ntotal_timeout_ms = 3600001"),
            ("upstream.pool_idle_timeout_ms", "[upstream]\npool_idle_timeout_ms = 86400001"),
            ("upstream.http2_max_connections", "[upstream]\nhttp2_max_connections = 0"),
            ("upstream.http2_max_connections", "[upstream]\nhttp2_max_connections = 1025"),
            ("retry.max_attempts", "[retry]\nmax_attempts = 101"),
            ("retry.budget_tokens", "[retry]\nbudget_tokens = 4294967295"),
            ("rate_limit.burst", "[rate_limit]\nburst = 1000001"),
            ("rate_limit.requests_per_second", "[rate_limit]\nrequests_per_second = 1e7"),
            ("rate_limit.requests_per_second", "[rate_limit]\nrequests_per_second = nan"),
            ("rate_limit.requests_per_second", "[rate_limit]\nrequests_per_second = 0.0001"),
            (
                "rate_limit.routes[0].burst",
                "[[rate_limit.routes]]\npath_prefix = \"/\"\nrequests_per_second = 1\nburst = 4000000",
            ),
            (
                "rate_limit.routes[0].requests_per_second",
                "[[rate_limit.routes]]\npath_prefix = \"/\"\nrequests_per_second = inf",
            ),
        ];
        for (key, toml) in cases {
            let message = refused(toml);
            assert!(
                message.contains(&format!("`{key}`")) && message.contains("out of range"),
                "{toml:?} → {message:?}"
            );
        }
        // The bounds themselves are accepted.
        Config::from_toml(
            "shutdown_grace_ms = 3600000\nworker_threads = 256\nmax_body_bytes = 1073741824\n\
             [listener]\nmax_in_flight = 100000\nmax_header_bytes = 1048576\nmax_headers = 1000\n\
             max_buffered_bytes = 1073741824\n\
             [rate_limit]\nrequests_per_second = 0.001\nburst = 1000000\nmax_waiting = 100000\n",
        )
        .unwrap();
    }

    #[test]
    fn every_number_has_a_range() {
        // Each integer or float value of the configuration (a route included) is either in
        // integer_keys() or one of the rates check_rate bounds.
        let mut config = Config::default();
        config.rate_limit.routes.push(RouteLimitConfig {
            path_prefix: "/".into(),
            method: String::new(),
            requests_per_second: 1.0,
            burst: 0,
        });
        fn numbers(value: &toml::Value, path: &str, out: &mut Vec<String>) {
            match value {
                toml::Value::Table(table) => {
                    for (key, value) in table {
                        let path = if path.is_empty() {
                            key.clone()
                        } else {
                            format!("{path}.{key}")
                        };
                        numbers(value, &path, out);
                    }
                }
                toml::Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if item.is_table() {
                            numbers(item, &format!("{path}[{i}]"), out);
                        }
                    }
                }
                toml::Value::Integer(_) | toml::Value::Float(_) => out.push(path.to_owned()),
                _ => {}
            }
        }
        let mut found = Vec::new();
        numbers(&toml::Value::try_from(&config).unwrap(), "", &mut found);
        let bounded: Vec<String> = config.integer_keys().into_iter().map(|b| b.key).collect();
        // Floats bounded by their own checks: the rates by check_rate, the sampler ratio by
        // TracingConfig::validate.
        let rates = [
            "rate_limit.requests_per_second",
            "rate_limit.routes[0].requests_per_second",
            "tracing.sampler_ratio",
        ];
        for key in &found {
            assert!(
                bounded.contains(key) || rates.contains(&key.as_str()),
                "`{key}` has no range in Config::integer_keys()"
            );
        }
        assert!(found.len() >= 27, "{found:?}");
    }

    #[test]
    fn the_example_file_states_every_range() {
        // `key = value  # … MIN to MAX …` under its [table].
        let mut lines = BTreeMap::new();
        let mut table = String::new();
        for line in EXAMPLE.lines() {
            let line = line.trim();
            if let Some(header) = line.strip_prefix('[') {
                table = header.split(']').next().unwrap().to_owned();
            } else if let Some((key, rest)) = line.split_once(" = ") {
                let key = if table.is_empty() {
                    key.trim().to_owned()
                } else {
                    format!("{table}.{}", key.trim())
                };
                lines.insert(key, rest.to_owned());
            }
        }
        for bounded in Config::default().integer_keys() {
            let line = &lines[&bounded.key];
            let range = format!("{} to {}", bounded.min, bounded.max);
            assert!(
                line.contains(&range),
                "config/example.toml: `{}` does not say {range:?}: {line:?}",
                bounded.key
            );
        }
        assert!(lines["rate_limit.requests_per_second"].contains("0.001 to 1000000"));
    }

    #[test]
    fn a_listener_others_can_reach_without_client_certificates_is_warned_about() {
        let warnings = |toml: &str| Config::from_toml(toml).unwrap().warnings();
        assert!(warnings("").is_empty(), "127.0.0.1 is the default");
        assert!(warnings("listen = \"[::1]:8080\"").is_empty());
        assert!(warnings("listen = \"[::ffff:127.0.0.1]:8080\"").is_empty());
        for exposed in ["0.0.0.0:8080", "10.1.2.3:8080", "[::]:8080"] {
            let found = warnings(&format!("listen = {exposed:?}"));
            assert_eq!(found.len(), 1, "{exposed}: {found:?}");
            assert!(found[0].contains(exposed) && found[0].contains("tls.client_ca_file"));
        }
        let mutual = "listen = \"0.0.0.0:8080\"\n[tls]\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\nclient_ca_file = \"/ca.pem\"\n";
        assert!(warnings(mutual).is_empty());
        let tls_only =
            "listen = \"0.0.0.0:8080\"\n[tls]\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\n";
        assert_eq!(warnings(tls_only).len(), 1);
    }
}

/// `[tracing]`: OpenTelemetry traces over OTLP/HTTP. The standard `OTEL_*` variables apply
/// on top (see [`crate::telemetry::Settings::resolve`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP base URL (`/v1/traces` is appended). Empty: tracing is off
    /// unless `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT` is set.
    pub otlp_endpoint: String,
    pub service_name: String,
    /// The share of new traces sampled (parent-based: a client's sampled flag is followed).
    pub sampler_ratio: f64,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            service_name: "prime-sigv4-proxy".to_owned(),
            sampler_ratio: 1.0,
        }
    }
}

impl TracingConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.otlp_endpoint.is_empty() {
            crate::telemetry::check_endpoint(&self.otlp_endpoint)
                .map_err(|reason| invalid("tracing.otlp_endpoint", reason))?;
        }
        if self.service_name.trim().is_empty() {
            return Err(invalid("tracing.service_name", "must not be empty"));
        }
        if !(0.0..=1.0).contains(&self.sampler_ratio) {
            return Err(invalid(
                "tracing.sampler_ratio",
                format!("{} is not a ratio from 0 to 1", self.sampler_ratio),
            ));
        }
        Ok(())
    }
}
