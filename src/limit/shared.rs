//! The shared limit: every replica leases permits from one GCRA per quota kept in Redis,
//! in batches sized from its own traffic, so a request is served from permits already held
//! and never waits on Redis while its replica holds some.
//!
//! One background task per process talks to Redis: it tops pools up before they run out,
//! gives back permits unused after [`LEASE_TTL`], heartbeats into a sorted set of replicas
//! (whose size gives the share for `on_error = "local"`), and runs the circuit breaker.
//! Requests only touch atomics, except when their pool is empty.

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use super::local::LocalBuckets;
use super::{wait_for_next_permit, Background, LimitError, QuotaSpec};
use crate::config::{redact_url_password, OnRedisError, SharedLimitConfig};

/// A lease covers about this much of the replica's own traffic.
pub(crate) const LEASE_AHEAD: Duration = Duration::from_millis(200);
/// Leased permits unused this long are given back.
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(1);
/// How often the task re-estimates each quota's rate and expires old leases.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// A replica with no other Redis call heartbeats this often...
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);
/// ...and counts as a peer for this long after its last call.
const PEER_WINDOW: Duration = Duration::from_secs(3);
/// The rate estimate forgets with this time constant (it rises at once).
const RATE_MEMORY: Duration = Duration::from_secs(1);
/// Below this rate (permits per second) a replica leases only when a request needs a
/// permit: what it leased ahead would mostly expire unused.
const PROACTIVE_RATE: f64 = 1.0 / LEASE_TTL.as_secs_f64();
/// The circuit breaker waits this long before the first probe after a failure, doubling
/// per failed probe up to [`BREAKER_MAX`].
const BREAKER_MIN: Duration = Duration::from_millis(200);
const BREAKER_MAX: Duration = Duration::from_secs(2);
/// `Retry-After` for requests refused by `on_error = "deny"`.
const DENY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// GCRA for up to N permits of several quotas, and the replica heartbeat, in one atomic
/// step with Redis's own clock; its keys, arguments and answer are described in the file.
const GCRA_SCRIPT: &str = include_str!("gcra.lua");

// ---------------------------------------------------------------------------------------
// Metrics

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RedisErrorLabels {
    /// timeout, connection, auth, response, password_file, ca_file
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FallbackLabels {
    /// local, allow or deny
    pub on_error: &'static str,
    /// admitted or rejected
    pub outcome: &'static str,
}

/// The shared limit's series (`prime_proxy_rate_limit_shared_*`).
#[derive(Clone, Debug, Default)]
pub struct SharedLimitMetrics {
    pub up: Gauge,
    pub peers: Gauge,
    pub redis_errors: Family<RedisErrorLabels, Counter>,
    pub fallback_decisions: Family<FallbackLabels, Counter>,
    pub lease_waits: Counter,
}

impl SharedLimitMetrics {
    /// Registers every series in `registry` (which carries the `prime_proxy` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "rate_limit_shared_up",
            "1 while the shared rate limit is served from Redis; 0 while on_error applies (or the limit is not shared)",
            self.up.clone(),
        );
        registry.register(
            "rate_limit_shared_peers",
            "Replicas that used the shared rate limit in the last 3 s, this one included (last known)",
            self.peers.clone(),
        );
        registry.register(
            "rate_limit_shared_redis_errors",
            "Failed Redis calls of the shared rate limit, by kind (timeout, connection, auth, response, password_file, ca_file)",
            self.redis_errors.clone(),
        );
        registry.register(
            "rate_limit_shared_fallback_decisions",
            "Permits decided by on_error while Redis could not be used, by on_error and outcome (admitted, rejected)",
            self.fallback_decisions.clone(),
        );
        registry.register(
            "rate_limit_shared_lease_waits",
            "Requests that found no leased permit and waited for a Redis answer",
            self.lease_waits.clone(),
        );
    }
}

// ---------------------------------------------------------------------------------------
// Lease sizing and the circuit breaker (pure, unit-tested)

/// Permits to hold for a quota: about [`LEASE_AHEAD`] of this replica's rate, at least
/// one, and never more than `burst ÷ replicas` (so the fleet together holds at most about
/// one burst).
pub(crate) fn lease_size(rate_per_sec: f64, burst: u32, peers: u32) -> u32 {
    let cap = (burst / peers.max(1)).max(1);
    let ahead = (rate_per_sec.max(0.0) * LEASE_AHEAD.as_secs_f64()).ceil();
    let ahead = if ahead >= f64::from(cap) {
        cap
    } else {
        ahead as u32
    };
    ahead.clamp(1, cap)
}

/// Top up when the pool has this many permits left or fewer.
pub(crate) fn low_watermark(size: u32) -> u32 {
    size / 2
}

/// Closed (calls go to Redis) or open until a time, then one probe; every failed probe
/// doubles the wait up to [`BREAKER_MAX`]. Starts with a probe due (nothing known yet).
#[derive(Debug)]
pub(crate) struct Breaker {
    open_until: Option<Instant>,
    backoff: Duration,
    probing: bool,
}

impl Breaker {
    pub(crate) fn new() -> Self {
        Self {
            open_until: None,
            backoff: BREAKER_MIN,
            probing: true,
        }
    }

    /// May a Redis call be made now?
    pub(crate) fn may_call(&self, now: Instant) -> bool {
        self.open_until.is_none_or(|until| now >= until)
    }

    /// When calls are held back, until when.
    pub(crate) fn open_until(&self) -> Option<Instant> {
        self.open_until
    }

    /// True while the next call decides whether Redis is back.
    pub(crate) fn probing(&self) -> bool {
        self.probing
    }

    pub(crate) fn on_success(&mut self) {
        self.open_until = None;
        self.backoff = BREAKER_MIN;
        self.probing = false;
    }

    pub(crate) fn on_failure(&mut self, now: Instant) {
        self.open_until = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(BREAKER_MAX);
        self.probing = true;
    }
}

// ---------------------------------------------------------------------------------------
// The store: Redis in production, a scripted one in unit tests

/// Permits wanted from and given back to one quota in one call.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LeaseRequest {
    pub quota: usize,
    pub take: u32,
    pub give_back: u32,
}

/// What the store answered for one quota.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LeaseGrant {
    pub granted: u32,
    /// Until the next permit, when fewer than wanted were granted.
    pub wait: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct StoreReply {
    /// Replicas seen within the peer window, this one included.
    pub peers: u32,
    /// One per request, in order.
    pub grants: Vec<LeaseGrant>,
}

/// Why a store call failed. Messages never carry the URL or the password.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("cannot read rate_limit.shared.password_file: {0}")]
    PasswordFile(std::io::Error),
    #[error("cannot read rate_limit.shared.ca_file: {0}")]
    CaFile(std::io::Error),
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected answer: {0}")]
    Reply(String),
}

impl StoreError {
    /// The `kind` label of `prime_proxy_rate_limit_shared_redis_errors_total`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            StoreError::Timeout(_) => "timeout",
            StoreError::PasswordFile(_) => "password_file",
            StoreError::CaFile(_) => "ca_file",
            StoreError::Reply(_) => "response",
            StoreError::Redis(e) if e.is_timeout() => "timeout",
            StoreError::Redis(e)
                if e.kind() == redis::ErrorKind::AuthenticationFailed
                    || matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM")) =>
            {
                "auth"
            }
            StoreError::Redis(e) if e.is_io_error() || e.is_connection_dropped() => "connection",
            StoreError::Redis(_) => "response",
        }
    }
}

pub(crate) type StoreFuture<'a> =
    Pin<Box<dyn Future<Output = Result<StoreReply, StoreError>> + Send + 'a>>;

/// Where the GCRA state lives.
pub(crate) trait Store: Send + 'static {
    /// One atomic step: heartbeat, give back, lease.
    fn call<'a>(&'a mut self, requests: &'a [LeaseRequest]) -> StoreFuture<'a>;
    /// True once a call succeeded on the current connection (a new one needs longer).
    fn connected(&self) -> bool;
    /// Forget the connection (after a failure): the next call connects anew.
    fn reset(&mut self);
}

/// The store in Redis, through redis-rs's connection manager.
pub(crate) struct RedisStore {
    /// May carry a password: never logged.
    url: String,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    connect_timeout: Duration,
    replica_id: String,
    script: redis::Script,
    peers_key: String,
    keys: Vec<String>,
    periods_us: Vec<f64>,
    bursts: Vec<u32>,
    manager: Option<ConnectionManager>,
    established: bool,
}

/// A new connection (TCP, TLS, AUTH) may take this long, whatever `timeout_ms` says: no
/// request waits for it (the limit is in `on_error` until Redis has answered), and a cold
/// TLS handshake on a busy node can take a good part of a second.
fn connect_timeout(timeout: Duration) -> Duration {
    (timeout * 10).max(Duration::from_secs(1))
}

impl RedisStore {
    pub(crate) fn new(quotas: &[QuotaSpec], config: &SharedLimitConfig, replica_id: &str) -> Self {
        let non_empty = |path: &str| (!path.is_empty()).then(|| PathBuf::from(path));
        Self {
            url: config.url.clone(),
            password_file: non_empty(&config.password_file),
            ca_file: non_empty(&config.ca_file),
            connect_timeout: connect_timeout(config.timeout()),
            replica_id: replica_id.to_owned(),
            script: redis::Script::new(GCRA_SCRIPT),
            peers_key: format!("{{{}}}:peers", config.key),
            keys: quotas
                .iter()
                .map(|q| format!("{{{}}}:{}", config.key, q.name))
                .collect(),
            periods_us: quotas.iter().map(|q| 1e6 / q.rate).collect(),
            bursts: quotas.iter().map(|q| q.burst).collect(),
            manager: None,
            established: false,
        }
    }

    /// A connection manager for the configured URL; the password file and CA are read
    /// again each time, so a rotated Secret is picked up at the next reconnect.
    async fn manager(&mut self) -> Result<ConnectionManager, StoreError> {
        if let Some(manager) = &self.manager {
            return Ok(manager.clone());
        }
        let mut info = redis::IntoConnectionInfo::into_connection_info(self.url.as_str())?;
        if let Some(file) = &self.password_file {
            let password = read_file(file.clone())
                .await
                .and_then(|bytes| String::from_utf8(bytes).map_err(std::io::Error::other))
                .map_err(StoreError::PasswordFile)?;
            let password = password.trim_end_matches(['\r', '\n']);
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = match &self.ca_file {
            Some(file) => {
                let pem = read_file(file.clone()).await.map_err(StoreError::CaFile)?;
                redis::Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )?
            }
            None => redis::Client::open(info)?,
        };
        // One dial per call at most: the breaker, not the manager, decides when to retry.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.connect_timeout));
        let manager = ConnectionManager::new_lazy_with_config(client, config)?;
        self.manager = Some(manager.clone());
        Ok(manager)
    }

    async fn call_redis(&mut self, requests: &[LeaseRequest]) -> Result<StoreReply, StoreError> {
        let mut manager = self.manager().await?;
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(&self.peers_key)
            .arg(&self.replica_id)
            .arg(PEER_WINDOW.as_micros() as u64);
        for request in requests {
            let q = request.quota;
            invocation
                .key(&self.keys[q])
                .arg(self.periods_us[q])
                .arg(self.bursts[q])
                .arg(request.take)
                .arg(request.give_back);
        }
        let values: Vec<i64> = match invocation.invoke_async(&mut manager).await {
            // A connection Redis closed while idle: the manager reconnects; try once more.
            Err(e) if self.established && e.is_connection_dropped() => {
                invocation.invoke_async(&mut manager).await?
            }
            other => other?,
        };
        self.established = true;
        parse_reply(&values, requests.len())
    }
}

/// A small file, read off the async threads.
async fn read_file(path: PathBuf) -> std::io::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || std::fs::read(path))
        .await
        .map_err(std::io::Error::other)?
}

fn parse_reply(values: &[i64], quotas: usize) -> Result<StoreReply, StoreError> {
    if values.len() != 1 + 2 * quotas {
        return Err(StoreError::Reply(format!(
            "{} values for {quotas} quotas",
            values.len()
        )));
    }
    let count = |v: i64| u32::try_from(v.max(0)).unwrap_or(u32::MAX);
    Ok(StoreReply {
        peers: count(values[0]).max(1),
        grants: values[1..]
            .chunks_exact(2)
            .map(|pair| LeaseGrant {
                granted: count(pair[0]),
                wait: Duration::from_micros(pair[1].max(0).unsigned_abs()),
            })
            .collect(),
    })
}

impl Store for RedisStore {
    fn call<'a>(&'a mut self, requests: &'a [LeaseRequest]) -> StoreFuture<'a> {
        Box::pin(self.call_redis(requests))
    }

    fn connected(&self) -> bool {
        self.established
    }

    fn reset(&mut self) {
        self.manager = None;
        self.established = false;
    }
}

// ---------------------------------------------------------------------------------------
// State shared by requests and the task

/// Permits this replica holds for one quota, and what Redis said about the quota.
struct Pool {
    available: AtomicI64,
    /// The task is woken when a request leaves this many permits.
    low_watermark: AtomicI64,
    /// Nanoseconds after `Shared::epoch` before which Redis has no permit (0: none known).
    denied_until: AtomicU64,
    /// Requests that found the pool empty: demand the next lease must cover.
    missed: AtomicU64,
}

impl Pool {
    fn new() -> Self {
        Self {
            available: AtomicI64::new(0),
            low_watermark: AtomicI64::new(0),
            denied_until: AtomicU64::new(0),
            missed: AtomicU64::new(0),
        }
    }

    /// One permit, if held; returns how many are left.
    fn try_take(&self) -> Option<i64> {
        let mut current = self.available.load(Ordering::Acquire);
        loop {
            if current <= 0 {
                return None;
            }
            match self.available.compare_exchange_weak(
                current,
                current - 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(current - 1),
                Err(actual) => current = actual,
            }
        }
    }

    /// Takes back up to `n` permits (expired leases); returns how many.
    fn withdraw(&self, n: i64) -> i64 {
        let mut current = self.available.load(Ordering::Acquire);
        loop {
            let taken = current.min(n).max(0);
            if taken == 0 {
                return 0;
            }
            match self.available.compare_exchange_weak(
                current,
                current - taken,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return taken,
                Err(actual) => current = actual,
            }
        }
    }
}

/// Where a request's permit came from.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Took {
    /// From the replica's leased permits: can be put back.
    Lease,
    /// Decided by `on_error`.
    Fallback,
}

struct Shared {
    epoch: Instant,
    quotas: Vec<QuotaSpec>,
    pools: Vec<Pool>,
    /// True while the limit is served from Redis; false while `on_error` applies.
    up: AtomicBool,
    /// Wakes the task: a pool ran low or a request is waiting.
    wake: Notify,
    /// Wakes requests waiting for a lease, after each Redis call.
    answered: Notify,
    /// This replica's share of each quota, for `on_error = "local"`.
    local: ArcSwap<LocalBuckets>,
    on_error: OnRedisError,
    /// The longest a request waits for a lease (unless a Redis call is still running).
    lease_wait: Duration,
    /// Nanoseconds after `epoch` when the running Redis call times out (0: none running).
    call_deadline: AtomicU64,
    metrics: SharedLimitMetrics,
    fallback_admitted: Counter,
    fallback_rejected: Counter,
}

impl Shared {
    fn at(&self, nanos: u64) -> Instant {
        self.epoch + Duration::from_nanos(nanos)
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// When the Redis call in flight times out, if one is.
    fn call_deadline(&self) -> Option<Instant> {
        match self.call_deadline.load(Ordering::Acquire) {
            0 => None,
            at => Some(self.at(at)),
        }
    }

    /// How long Redis has no permit for quota `q` from `now`, if known.
    fn denied_for(&self, q: usize, now: Instant) -> Option<Duration> {
        match self.pools[q].denied_until.load(Ordering::Acquire) {
            0 => None,
            until => {
                let until = self.at(until);
                (until > now).then(|| until - now)
            }
        }
    }

    async fn fallback(
        &self,
        q: usize,
        deadline: Instant,
        waiting: &Semaphore,
    ) -> Result<(), LimitError> {
        let decision = match self.on_error {
            OnRedisError::Allow => Ok(()),
            OnRedisError::Deny => Err(LimitError::RateLimited {
                retry_after: DENY_RETRY_AFTER,
            }),
            OnRedisError::Local => {
                let local = self.local.load_full();
                local.take(q, deadline, waiting).await
            }
        };
        match decision {
            Ok(()) => self.fallback_admitted.inc(),
            Err(_) => self.fallback_rejected.inc(),
        };
        decision
    }
}

/// The request side of the shared limit.
pub(crate) struct SharedLimiter {
    shared: Arc<Shared>,
    task: Mutex<Option<Background>>,
}

impl SharedLimiter {
    pub(crate) fn new(
        quotas: Vec<QuotaSpec>,
        config: &SharedLimitConfig,
        metrics: &SharedLimitMetrics,
    ) -> Self {
        let replica_id = uuid::Uuid::new_v4().simple().to_string();
        let store = RedisStore::new(&quotas, config, &replica_id);
        tracing::info!(
            redis = %redact_url_password(&config.url),
            key = %config.key,
            on_error = config.on_error.as_str(),
            replica = %replica_id,
            "rate limits shared through Redis"
        );
        let (limiter, task) = Self::with_store(quotas, config, metrics, store);
        *limiter.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::pin(task.run()));
        limiter
    }

    /// The limiter and its task over any store (unit tests use a scripted one).
    pub(crate) fn with_store<S: Store>(
        quotas: Vec<QuotaSpec>,
        config: &SharedLimitConfig,
        metrics: &SharedLimitMetrics,
        store: S,
    ) -> (Self, LeaseTask<S>) {
        let on_error = config.on_error.as_str();
        let decision = |outcome| {
            metrics
                .fallback_decisions
                .get_or_create(&FallbackLabels { on_error, outcome })
                .clone()
        };
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            pools: quotas.iter().map(|_| Pool::new()).collect(),
            local: ArcSwap::from_pointee(LocalBuckets::new(&quotas, 1)),
            quotas,
            up: AtomicBool::new(false),
            wake: Notify::new(),
            answered: Notify::new(),
            on_error: config.on_error,
            lease_wait: config.timeout() * 2,
            call_deadline: AtomicU64::new(0),
            fallback_admitted: decision("admitted"),
            fallback_rejected: decision("rejected"),
            metrics: metrics.clone(),
        });
        metrics.up.set(0);
        metrics.peers.set(1);
        let task = LeaseTask::new(Arc::clone(&shared), store, config.timeout());
        (
            Self {
                shared,
                task: Mutex::new(None),
            },
            task,
        )
    }

    pub(crate) fn background(&self) -> Option<Background> {
        self.task.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// One permit of `first` and one of `second` (route, then global).
    pub(crate) async fn acquire(
        &self,
        first: Option<usize>,
        second: Option<usize>,
        deadline: Instant,
        waiting: &Semaphore,
    ) -> Result<(), LimitError> {
        let Some(first) = first else {
            return Ok(());
        };
        let took = self.take(first, deadline, waiting).await?;
        if let Some(second) = second {
            if let Err(e) = self.take(second, deadline, waiting).await {
                if took == Took::Lease {
                    self.shared.pools[first]
                        .available
                        .fetch_add(1, Ordering::AcqRel);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    async fn take(
        &self,
        q: usize,
        deadline: Instant,
        waiting: &Semaphore,
    ) -> Result<Took, LimitError> {
        let shared = &*self.shared;
        let pool = &shared.pools[q];
        let mut lease_deadline = None;
        let mut extended = false;
        let mut parked = None;
        loop {
            // The hot path: a permit this replica already holds.
            if let Some(left) = pool.try_take() {
                if left == pool.low_watermark.load(Ordering::Relaxed) {
                    shared.wake.notify_one();
                }
                return Ok(Took::Lease);
            }
            if !shared.up.load(Ordering::Acquire) {
                return shared
                    .fallback(q, deadline, waiting)
                    .await
                    .map(|()| Took::Fallback);
            }
            let now = Instant::now();
            if let Some(wait) = shared.denied_for(q, now) {
                // Redis said when the next permit comes: no need to ask before then.
                wait_for_next_permit(wait, deadline, waiting, &mut parked).await?;
                continue;
            }
            // Nothing held and Redis may have permits: ask the task and wait for its answer.
            let until = match lease_deadline {
                Some(until) => until,
                None => {
                    shared.metrics.lease_waits.inc();
                    pool.missed.fetch_add(1, Ordering::AcqRel);
                    *lease_deadline.insert(deadline.max(now + shared.lease_wait))
                }
            };
            let notified = shared.answered.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            shared.wake.notify_one();
            if pool.available.load(Ordering::Acquire) > 0 || !shared.up.load(Ordering::Acquire) {
                continue;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                let now = Instant::now();
                match shared.call_deadline() {
                    // A Redis call is still running: its own timeout ends the wait (and
                    // turns to `on_error` if Redis is slow). Extended once.
                    Some(call_deadline) if call_deadline > now && !extended => {
                        extended = true;
                        lease_deadline = Some(call_deadline + Duration::from_millis(5));
                    }
                    // Redis answered, but other requests got the permits: the limit is
                    // reached. (Permits decided by `on_error` here would come on top of
                    // the shared limit.)
                    _ if shared.up.load(Ordering::Acquire) => {
                        return Err(LimitError::RateLimited {
                            retry_after: shared.quotas[q].period(),
                        });
                    }
                    _ => {}
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The task

/// What the task knows about one quota's leases.
struct QuotaLeases {
    /// Leases still (partly) unused, oldest first: when granted, permits left.
    batches: VecDeque<(Instant, i64)>,
    /// Permits ever put in the pool, and taken back from it.
    credited: i64,
    withdrawn: i64,
    consumed_seen: i64,
    missed_sampled: u64,
    missed_planned: u64,
    /// Permits per second this replica used or wanted, estimated.
    rate: f64,
    /// When a sample last saw permits used or wanted.
    last_used: Instant,
    /// Expired permits taken from the pool, to give back to Redis.
    give_back: u32,
}

/// The background task: leases, gives back, heartbeats, keeps the breaker.
pub(crate) struct LeaseTask<S> {
    shared: Arc<Shared>,
    store: S,
    timeout: Duration,
    leases: Vec<QuotaLeases>,
    breaker: Breaker,
    peers: u32,
    last_sample: Instant,
    next_heartbeat: Instant,
    /// An outage has been logged (one warning per outage, not one per probe).
    outage_logged: bool,
}

impl<S: Store> LeaseTask<S> {
    fn new(shared: Arc<Shared>, store: S, timeout: Duration) -> Self {
        let now = Instant::now();
        let leases = shared
            .quotas
            .iter()
            .map(|_| QuotaLeases {
                batches: VecDeque::new(),
                credited: 0,
                withdrawn: 0,
                consumed_seen: 0,
                missed_sampled: 0,
                missed_planned: 0,
                rate: 0.0,
                last_used: now,
                give_back: 0,
            })
            .collect();
        Self {
            shared,
            store,
            timeout,
            leases,
            breaker: Breaker::new(),
            peers: 1,
            last_sample: now,
            next_heartbeat: now,
            outage_logged: false,
        }
    }

    /// Runs until dropped (the process aborts it at shutdown).
    pub(crate) async fn run(mut self) {
        loop {
            let until = self.next_wake();
            tokio::select! {
                _ = self.shared.wake.notified() => {}
                _ = tokio::time::sleep_until(until) => {}
            }
            self.step(Instant::now()).await;
        }
    }

    fn next_wake(&self) -> Instant {
        let mut until = self.last_sample + SAMPLE_EVERY;
        match self.breaker.open_until() {
            Some(open_until) => until = until.min(open_until),
            None => {
                until = until.min(self.next_heartbeat);
                // A busy quota Redis refused: ask again as soon as the next permit is due.
                let now = Instant::now();
                for (q, leases) in self.leases.iter().enumerate() {
                    if leases.rate >= PROACTIVE_RATE {
                        if let Some(wait) = self.shared.denied_for(q, now) {
                            until = until.min(now + wait);
                        }
                    }
                }
            }
        }
        until
    }

    async fn step(&mut self, now: Instant) {
        if now >= self.last_sample + SAMPLE_EVERY {
            self.sample(now);
        }
        if !self.breaker.may_call(now) {
            return;
        }
        let requests = self.plan(now);
        if requests.is_empty() && now < self.next_heartbeat && !self.breaker.probing() {
            return;
        }
        let budget = if self.store.connected() {
            self.timeout
        } else {
            connect_timeout(self.timeout)
        };
        self.shared
            .call_deadline
            .store(self.shared.nanos(now + budget), Ordering::Release);
        let result = match tokio::time::timeout(budget, self.store.call(&requests)).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(budget)),
        };
        self.shared.call_deadline.store(0, Ordering::Release);
        let now = Instant::now();
        match result {
            Ok(reply) if reply.grants.len() == requests.len() => {
                self.succeeded(&requests, reply, now)
            }
            Ok(reply) => self.failed(
                StoreError::Reply(format!(
                    "{} answers for {} quotas",
                    reply.grants.len(),
                    requests.len()
                )),
                now,
            ),
            Err(error) => self.failed(error, now),
        }
        self.shared.answered.notify_waiters();
    }

    /// Re-estimates each quota's rate; takes back permits leased longer than [`LEASE_TTL`]
    /// ago and still unused.
    fn sample(&mut self, now: Instant) {
        let elapsed = now
            .saturating_duration_since(self.last_sample)
            .as_secs_f64();
        self.last_sample = now;
        if elapsed <= 0.0 {
            return;
        }
        let decay = 1.0 - (-elapsed / RATE_MEMORY.as_secs_f64()).exp();
        for (q, leases) in self.leases.iter_mut().enumerate() {
            let pool = &self.shared.pools[q];
            let available = pool.available.load(Ordering::Acquire);
            let consumed_total = leases.credited - leases.withdrawn - available;
            let consumed = (consumed_total - leases.consumed_seen).max(0);
            leases.consumed_seen = consumed_total;
            let missed = pool.missed.load(Ordering::Acquire);
            let wanted = missed.saturating_sub(leases.missed_sampled);
            leases.missed_sampled = missed;
            if consumed > 0 || wanted > 0 {
                leases.last_used = now;
            }
            let rate = (consumed as f64 + wanted as f64) / elapsed;
            leases.rate = if rate > leases.rate {
                rate
            } else {
                leases.rate + (rate - leases.rate) * decay
            };
            // Used permits come out of the oldest leases first.
            let mut used = consumed;
            while used > 0 {
                let Some(front) = leases.batches.front_mut() else {
                    break;
                };
                let from_front = used.min(front.1);
                front.1 -= from_front;
                used -= from_front;
                if front.1 == 0 {
                    leases.batches.pop_front();
                }
            }
            while let Some(&(granted_at, left)) = leases.batches.front() {
                if granted_at + LEASE_TTL > now {
                    break;
                }
                leases.batches.pop_front();
                let withdrawn = pool.withdraw(left);
                leases.withdrawn += withdrawn;
                leases.give_back = leases
                    .give_back
                    .saturating_add(u32::try_from(withdrawn).unwrap_or(u32::MAX));
            }
        }
    }

    /// What to ask Redis for now: top-ups for pools at their low watermark, give-backs.
    fn plan(&mut self, now: Instant) -> Vec<LeaseRequest> {
        let mut requests = Vec::new();
        for (q, leases) in self.leases.iter_mut().enumerate() {
            let pool = &self.shared.pools[q];
            let quota = &self.shared.quotas[q];
            let missed = pool.missed.load(Ordering::Acquire);
            let waiting = missed.saturating_sub(leases.missed_planned);
            let size = lease_size(leases.rate, quota.burst, self.peers);
            let watermark = low_watermark(size);
            pool.low_watermark
                .store(i64::from(watermark), Ordering::Relaxed);
            let available = pool.available.load(Ordering::Acquire).max(0);
            // Ahead of need only while traffic flows: an idle replica holds nothing.
            let flowing = leases.rate >= PROACTIVE_RATE
                && now.saturating_duration_since(leases.last_used) <= SAMPLE_EVERY * 2;
            let wanted = waiting > 0 || flowing;
            let take = if wanted
                && available <= i64::from(watermark)
                && self.shared.denied_for(q, now).is_none()
            {
                // Never more than burst ÷ replicas held: that bounds the fleet's over-admission.
                let top_up = i64::from(size) - available;
                let room = i64::from((quota.burst / self.peers.max(1)).max(1)) - available;
                u32::try_from(
                    top_up
                        .max(i64::try_from(waiting).unwrap_or(i64::MAX))
                        .min(room),
                )
                .unwrap_or(0)
            } else {
                0
            };
            if take > 0 || leases.give_back > 0 {
                leases.missed_planned = missed;
                requests.push(LeaseRequest {
                    quota: q,
                    take,
                    give_back: leases.give_back,
                });
            }
        }
        requests
    }

    fn succeeded(&mut self, requests: &[LeaseRequest], reply: StoreReply, now: Instant) {
        for (request, grant) in requests.iter().zip(&reply.grants) {
            let q = request.quota;
            let pool = &self.shared.pools[q];
            let leases = &mut self.leases[q];
            leases.give_back = leases.give_back.saturating_sub(request.give_back);
            if grant.granted > 0 {
                let granted = i64::from(grant.granted.min(request.take));
                pool.available.fetch_add(granted, Ordering::AcqRel);
                leases.credited += granted;
                leases.batches.push_back((now, granted));
            }
            let denied = if request.take > 0 && grant.granted < request.take {
                // Every replica hears the same "next permit at T"; a random part of one
                // emission interval keeps the same replica from winning every race for it.
                let jitter = self.shared.quotas[q]
                    .period()
                    .mul_f64(rand::random::<f64>());
                self.shared
                    .nanos(now + grant.wait.max(Duration::from_micros(1)) + jitter)
            } else {
                0
            };
            if request.take > 0 {
                pool.denied_until.store(denied, Ordering::Release);
            }
        }
        if reply.peers != self.peers {
            self.peers = reply.peers;
            self.shared
                .local
                .store(Arc::new(LocalBuckets::new(&self.shared.quotas, self.peers)));
            self.shared.metrics.peers.set(i64::from(self.peers));
        }
        self.breaker.on_success();
        self.next_heartbeat = now + HEARTBEAT_EVERY;
        if !self.shared.up.swap(true, Ordering::AcqRel) {
            self.shared.metrics.up.set(1);
            if self.outage_logged {
                tracing::info!(
                    peers = self.peers,
                    "shared rate limit: Redis is back, the limit is shared again"
                );
            } else {
                tracing::info!(peers = self.peers, "shared rate limit: connected to Redis");
            }
            self.outage_logged = false;
        }
    }

    fn failed(&mut self, error: StoreError, now: Instant) {
        self.shared
            .metrics
            .redis_errors
            .get_or_create(&RedisErrorLabels { kind: error.kind() })
            .inc();
        // Permits being given back are lost with the call; Redis's TAT moves on anyway.
        for leases in &mut self.leases {
            leases.give_back = 0;
        }
        self.store.reset();
        self.breaker.on_failure(now);
        if self.shared.up.swap(false, Ordering::AcqRel) {
            self.shared.metrics.up.set(0);
        }
        if !self.outage_logged {
            self.outage_logged = true;
            tracing::warn!(
                error = %error,
                kind = error.kind(),
                on_error = self.shared.on_error.as_str(),
                peers = self.peers,
                "shared rate limit: Redis cannot be used; on_error applies until it answers again"
            );
        } else {
            tracing::debug!(error = %error, kind = error.kind(), "shared rate limit: Redis still unavailable");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_lease_covers_about_200_ms_of_traffic_within_one_burst_per_fleet() {
        // Idle or slow: one permit at a time.
        assert_eq!(lease_size(0.0, 20, 1), 1);
        assert_eq!(lease_size(2.0, 20, 1), 1);
        // 50 permits/s → 10 in 200 ms.
        assert_eq!(lease_size(50.0, 100, 1), 10);
        assert_eq!(lease_size(50.0, 100, 4), 10);
        // Capped by burst ÷ replicas...
        assert_eq!(lease_size(100.0, 20, 3), 6);
        assert_eq!(lease_size(1e9, 20, 1), 20);
        // ...but never below one permit.
        assert_eq!(lease_size(100.0, 2, 5), 1);
        assert_eq!(lease_size(100.0, 20, 0), 20);
        assert_eq!(low_watermark(1), 0);
        assert_eq!(low_watermark(6), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_opens_on_failure_backs_off_and_closes_on_success() {
        let mut breaker = Breaker::new();
        let start = Instant::now();
        assert!(breaker.may_call(start) && breaker.probing());
        breaker.on_success();
        assert!(breaker.may_call(start) && !breaker.probing());

        breaker.on_failure(start);
        assert!(!breaker.may_call(start));
        assert!(breaker.probing());
        tokio::time::advance(BREAKER_MIN).await;
        assert!(breaker.may_call(Instant::now()));
        // Each failed probe doubles the wait, up to the maximum.
        let mut waits = Vec::new();
        for _ in 0..6 {
            let now = Instant::now();
            breaker.on_failure(now);
            let until = breaker.open_until().unwrap();
            waits.push(until - now);
            tokio::time::advance(until - now).await;
        }
        assert_eq!(
            waits,
            [400, 800, 1600, 2000, 2000, 2000].map(Duration::from_millis)
        );
        breaker.on_success();
        breaker.on_failure(Instant::now());
        assert_eq!(breaker.open_until().unwrap() - Instant::now(), BREAKER_MIN);
    }

    #[test]
    fn replies_are_checked_and_store_errors_are_classified() {
        let reply = parse_reply(&[3, 5, 0, 0, 12_000], 2).unwrap();
        assert_eq!(reply.peers, 3);
        assert_eq!(
            reply.grants,
            [
                LeaseGrant {
                    granted: 5,
                    wait: Duration::ZERO
                },
                LeaseGrant {
                    granted: 0,
                    wait: Duration::from_millis(12)
                }
            ]
        );
        assert!(parse_reply(&[1, 2], 1).is_err());
        let refused: redis::RedisError =
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into();
        assert_eq!(StoreError::Redis(refused).kind(), "connection");
        assert_eq!(
            StoreError::Timeout(Duration::from_millis(50)).kind(),
            "timeout"
        );
    }

    // -----------------------------------------------------------------------------------
    // The state machine over a scripted store, with paused time.

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Behaviour {
        /// A GCRA of `rate`/s, burst as configured, in the store.
        Grant,
        /// Every call fails at once (connection refused).
        Fail,
        /// Every call hangs (a Redis that accepts and never answers).
        Hang,
    }

    #[derive(Clone)]
    struct Scripted {
        behaviour: Arc<Mutex<Behaviour>>,
        calls: Arc<Mutex<Vec<Vec<LeaseRequest>>>>,
        peers: u32,
        connected: bool,
        /// The GCRA's theoretical arrival time per quota.
        tat: Arc<Mutex<Vec<Instant>>>,
        /// Permits granted per quota, in all.
        granted: Arc<Mutex<Vec<u32>>>,
        quotas: Vec<QuotaSpec>,
    }

    impl Scripted {
        fn new(quotas: &[QuotaSpec], behaviour: Behaviour) -> Self {
            Self {
                behaviour: Arc::new(Mutex::new(behaviour)),
                calls: Arc::default(),
                peers: 1,
                connected: false,
                tat: Arc::new(Mutex::new(vec![Instant::now(); quotas.len()])),
                granted: Arc::new(Mutex::new(vec![0; quotas.len()])),
                quotas: quotas.to_vec(),
            }
        }
        fn set(&self, behaviour: Behaviour) {
            *self.behaviour.lock().unwrap() = behaviour;
        }
        fn calls(&self) -> Vec<Vec<LeaseRequest>> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl Store for Scripted {
        fn call<'a>(&'a mut self, requests: &'a [LeaseRequest]) -> StoreFuture<'a> {
            self.calls.lock().unwrap().push(requests.to_vec());
            let behaviour = *self.behaviour.lock().unwrap();
            let reply = match behaviour {
                Behaviour::Fail => Err(StoreError::Redis(
                    std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into(),
                )),
                Behaviour::Hang => return Box::pin(std::future::pending()),
                Behaviour::Grant => {
                    let now = Instant::now();
                    let mut tats = self.tat.lock().unwrap();
                    let grants = requests
                        .iter()
                        .map(|r| {
                            let quota = &self.quotas[r.quota];
                            let period = quota.period();
                            let tau = period * quota.burst;
                            let mut tat = tats[r.quota].max(now);
                            tat = (tat - period * r.give_back).max(now);
                            let free = ((now + tau - tat).as_secs_f64() / period.as_secs_f64()
                                + 1e-9)
                                .floor() as u32;
                            let granted = free.min(r.take);
                            tat += period * granted;
                            tats[r.quota] = tat;
                            self.granted.lock().unwrap()[r.quota] += granted;
                            let wait = if granted < r.take {
                                (tat + period).saturating_duration_since(now + tau)
                            } else {
                                Duration::ZERO
                            };
                            LeaseGrant { granted, wait }
                        })
                        .collect();
                    self.connected = true;
                    Ok(StoreReply {
                        peers: self.peers,
                        grants,
                    })
                }
            };
            Box::pin(async move {
                // A round trip takes a millisecond.
                tokio::time::sleep(Duration::from_millis(1)).await;
                reply
            })
        }
        fn connected(&self) -> bool {
            self.connected
        }
        fn reset(&mut self) {
            self.connected = false;
        }
    }

    struct Harness {
        limiter: SharedLimiter,
        store: Scripted,
        metrics: SharedLimitMetrics,
        waiting: Semaphore,
        _task: tokio::task::JoinHandle<()>,
    }

    fn harness(rate: f64, burst: u32, on_error: OnRedisError, behaviour: Behaviour) -> Harness {
        harness_with_peers(rate, burst, on_error, behaviour, 1)
    }

    fn harness_with_peers(
        rate: f64,
        burst: u32,
        on_error: OnRedisError,
        behaviour: Behaviour,
        peers: u32,
    ) -> Harness {
        let quotas = vec![QuotaSpec::new("global".into(), rate, burst).unwrap()];
        let mut store = Scripted::new(&quotas, behaviour);
        store.peers = peers;
        let config = SharedLimitConfig {
            url: "redis://127.0.0.1:1".into(),
            on_error,
            ..SharedLimitConfig::default()
        };
        let metrics = SharedLimitMetrics::default();
        let (limiter, task) = SharedLimiter::with_store(quotas, &config, &metrics, store.clone());
        Harness {
            limiter,
            store,
            metrics,
            waiting: Semaphore::new(100),
            _task: tokio::spawn(task.run()),
        }
    }

    impl Harness {
        async fn acquire(&self) -> Result<(), LimitError> {
            self.limiter
                .acquire(Some(0), None, Instant::now(), &self.waiting)
                .await
        }
        fn up(&self) -> bool {
            self.metrics.up.get() == 1
        }
        fn decisions(&self, on_error: &'static str, outcome: &'static str) -> u64 {
            self.metrics
                .fallback_decisions
                .get_or_create(&FallbackLabels { on_error, outcome })
                .get()
        }
        /// Sends `count` requests `every` apart; returns how many were admitted and the
        /// longest any of them took.
        async fn drive(&self, count: usize, every: Duration) -> (usize, Duration) {
            let mut admitted = 0;
            let mut slowest = Duration::ZERO;
            for _ in 0..count {
                let started = Instant::now();
                if self.acquire().await.is_ok() {
                    admitted += 1;
                }
                slowest = slowest.max(started.elapsed());
                tokio::time::sleep(every).await;
            }
            (admitted, slowest)
        }
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn below_the_limit_requests_are_served_from_leases_without_waiting() {
        let h = harness(100.0, 20, OnRedisError::Deny, Behaviour::Grant);
        settle().await;
        assert!(h.up());
        // Warm up at 50/s, then 3 s more at 50/s: after the first leases, no request
        // waits for Redis: top-ups arrive before the pool runs dry.
        let (admitted, _) = h.drive(50, Duration::from_millis(20)).await;
        assert_eq!(admitted, 50);
        let waits_after_warm_up = h.metrics.lease_waits.get();
        assert!(waits_after_warm_up <= 6, "{waits_after_warm_up}");
        let (admitted, slowest) = h.drive(150, Duration::from_millis(20)).await;
        assert_eq!(admitted, 150);
        assert_eq!(h.metrics.lease_waits.get(), waits_after_warm_up);
        assert_eq!(slowest, Duration::ZERO, "a request waited");
        // Batches of about 200 ms of traffic (10 permits), never above the burst.
        let calls = h.store.calls();
        let takes: Vec<u32> = calls.iter().flatten().map(|r| r.take).collect();
        assert!(takes.iter().all(|&t| t <= 20), "{takes:?}");
        assert!(
            takes.iter().filter(|&&t| t >= 5).count() >= 10,
            "leases stayed small: {takes:?}"
        );
        assert!(calls.len() < 80, "{} calls for 200 requests", calls.len());
    }

    #[tokio::test(start_paused = true)]
    async fn over_the_limit_the_store_is_asked_once_per_refusal_not_per_request() {
        let h = harness(10.0, 5, OnRedisError::Allow, Behaviour::Grant);
        settle().await;
        // 1000/s for 2 s against 10/s with a burst of 5: about 5 + 20 admitted.
        let (admitted, _) = h.drive(2000, Duration::from_millis(1)).await;
        assert!((22..=28).contains(&admitted), "{admitted}");
        let calls = h.store.calls().len();
        assert!(calls < 120, "{calls} store calls for 2000 requests");
        // Rejections say when the next permit comes (within one emission interval, plus
        // up to one of jitter). The jitter is random, so a lease may just have come in;
        // it holds a permit or two, and the request after them must be refused.
        let mut refusal = None;
        for _ in 0..3 {
            if let Err(error) = h.acquire().await {
                refusal = Some(error);
                break;
            }
        }
        let Some(LimitError::RateLimited { retry_after }) = refusal else {
            panic!("over the limit, three requests at once were admitted: {refusal:?}");
        };
        assert!(retry_after <= Duration::from_millis(200), "{retry_after:?}");
        assert_eq!(h.decisions("allow", "admitted"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn unused_leases_are_given_back_after_about_a_second() {
        let h = harness(100.0, 20, OnRedisError::Deny, Behaviour::Grant);
        settle().await;
        h.drive(100, Duration::from_millis(10)).await; // 1 s at 100/s: leases of ~10
        tokio::time::sleep(LEASE_TTL + SAMPLE_EVERY * 3).await;
        let given_back: u32 = h.store.calls().iter().flatten().map(|r| r.give_back).sum();
        assert!(given_back >= 1, "nothing given back");
        assert_eq!(
            h.limiter.shared.pools[0].available.load(Ordering::Acquire),
            0
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_store_means_fallback_within_the_timeout_and_no_slow_requests() {
        let h = harness(100.0, 20, OnRedisError::Local, Behaviour::Grant);
        settle().await;
        assert!(h.up());
        h.store.set(Behaviour::Hang);
        // The first requests may wait up to two Redis timeouts; after that, nothing waits.
        let started = Instant::now();
        let (admitted, slowest) = h.drive(30, Duration::from_millis(10)).await;
        assert_eq!(admitted, 30);
        assert!(slowest <= Duration::from_millis(100), "{slowest:?}");
        assert!(
            !h.up(),
            "still shared {:?} after Redis hung",
            started.elapsed()
        );
        let (admitted, slowest) = h.drive(100, Duration::from_millis(10)).await;
        assert_eq!(admitted, 100);
        assert_eq!(slowest, Duration::ZERO);
        assert!(h.decisions("local", "admitted") >= 100);
        let timeouts = h
            .metrics
            .redis_errors
            .get_or_create(&RedisErrorLabels { kind: "timeout" })
            .get();
        assert!(timeouts >= 1, "{timeouts}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_store_falls_back_then_the_limit_is_shared_again() {
        let h = harness_with_peers(40.0, 8, OnRedisError::Local, Behaviour::Grant, 4);
        settle().await;
        assert!(h.up());
        h.store.set(Behaviour::Fail);
        // An idle replica notices at its next heartbeat, within a second.
        tokio::time::sleep(HEARTBEAT_EVERY + Duration::from_millis(10)).await;
        assert!(!h.up());
        // While down: this replica's share, 40 ÷ 4 = 10/s (burst 2), for the last known
        // 4 replicas.
        let before = h.store.calls().len();
        let (admitted, _) = h.drive(200, Duration::from_millis(10)).await;
        assert!((18..=26).contains(&admitted), "{admitted}");
        // The breaker keeps Redis from being dialled for each request: a few probes only.
        let probes = h.store.calls().len() - before;
        assert!((1..=4).contains(&probes), "{probes} probes in 2 s");
        h.store.set(Behaviour::Grant);
        tokio::time::sleep(BREAKER_MAX + Duration::from_millis(50)).await;
        assert!(h.up());
        assert_eq!(h.metrics.peers.get(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn allow_and_deny_decide_while_redis_is_down() {
        for (on_error, expect_ok) in [(OnRedisError::Allow, true), (OnRedisError::Deny, false)] {
            let h = harness(1.0, 1, on_error, Behaviour::Fail);
            settle().await;
            assert!(!h.up());
            for _ in 0..5 {
                let result = h.acquire().await;
                assert_eq!(result.is_ok(), expect_ok, "{on_error:?}");
                if let Err(LimitError::RateLimited { retry_after }) = result {
                    assert_eq!(retry_after, DENY_RETRY_AFTER);
                }
            }
            let (admitted, rejected) = (
                h.decisions(on_error.as_str(), "admitted"),
                h.decisions(on_error.as_str(), "rejected"),
            );
            assert_eq!(
                (admitted, rejected),
                if expect_ok { (5, 0) } else { (0, 5) }
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_route_permit_is_put_back_when_the_global_quota_refuses() {
        let quotas = vec![
            QuotaSpec::new("global".into(), 1.0, 1).unwrap(),
            QuotaSpec::new("route:*:/v1".into(), 100.0, 10).unwrap(),
        ];
        let store = Scripted::new(&quotas, Behaviour::Grant);
        let granted = Arc::clone(&store.granted);
        let config = SharedLimitConfig {
            url: "redis://127.0.0.1:1".into(),
            on_error: OnRedisError::Deny,
            ..SharedLimitConfig::default()
        };
        let metrics = SharedLimitMetrics::default();
        let (limiter, task) = SharedLimiter::with_store(quotas, &config, &metrics, store);
        let _task = tokio::spawn(task.run());
        settle().await;
        let waiting = Semaphore::new(10);
        let acquire = || limiter.acquire(Some(1), Some(0), Instant::now(), &waiting);
        acquire().await.unwrap();
        for _ in 0..20 {
            assert!(acquire().await.is_err());
        }
        // Of every route permit leased, only the one of the admitted request is used.
        let held = limiter.shared.pools[1].available.load(Ordering::Acquire);
        assert_eq!(i64::from(granted.lock().unwrap()[1]) - held, 1);
    }
}
