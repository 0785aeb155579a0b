//! Rate limits, applied before every upstream attempt: one global quota and optional
//! per-route quotas. Without `[rate_limit.shared]` they are token buckets in this process
//! ([`local`]); with it, permits leased in batches from Redis for the whole fleet
//! ([`shared`]), so the limit holds however many replicas run.

mod local;
mod shared;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use http::Method;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use crate::config::{RateLimitConfig, RouteLimitConfig};
use crate::metrics::Metrics;

use local::LocalBuckets;
pub use shared::{FallbackLabels, RedisErrorLabels, SharedLimitMetrics};

/// The limit had no permit in time.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("the rate limit has no permit available; retry after {}s", retry_after_secs(.retry_after))]
    RateLimited { retry_after: Duration },
}

/// Whole seconds for a `Retry-After` header: rounded up, at least 1.
pub fn retry_after_secs(wait: &Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// One quota: the global one or a route's. With the shared limit, the totals for the fleet.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct QuotaSpec {
    /// Names the quota's Redis key: `global` or `route:<METHOD|*>:<path prefix>`.
    pub name: String,
    /// Permits per second.
    pub rate: f64,
    /// Permits that may be taken at once.
    pub burst: u32,
}

impl QuotaSpec {
    /// `burst` 0 means the rate rounded up (at least 1); a rate of 0 is no quota.
    fn new(name: String, rate: f64, burst: u32) -> Option<Self> {
        if rate <= 0.0 || !rate.is_finite() {
            return None;
        }
        let default_burst = rate.ceil().clamp(1.0, f64::from(u32::MAX)) as u32;
        Some(Self {
            name,
            rate,
            burst: if burst == 0 { default_burst } else { burst },
        })
    }

    /// Time between two permits.
    pub(crate) fn period(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.rate)
    }
}

struct RouteMatch {
    path_prefix: String,
    method: Option<Method>,
    quota: usize,
}

/// Who hands out permits.
enum Enforcer {
    Local(LocalBuckets),
    Shared(shared::SharedLimiter),
}

/// Every configured quota, shared by all requests.
pub struct RateLimiter {
    global: Option<usize>,
    routes: Vec<RouteMatch>,
    max_wait: Duration,
    /// Bounds the requests parked waiting for a permit.
    waiting: Semaphore,
    enforcer: Enforcer,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("global", &self.global.is_some())
            .field("routes", &self.routes.len())
            .field("max_wait", &self.max_wait)
            .field("shared", &matches!(self.enforcer, Enforcer::Shared(_)))
            .finish()
    }
}

/// The leasing task of the shared limit, for the caller to spawn.
pub type Background = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

impl RateLimiter {
    /// The quotas of `config`; shared through Redis when `config.shared.url` is set (call
    /// [`RateLimiter::background`] and spawn what it returns).
    pub fn new(config: &RateLimitConfig, metrics: &Metrics) -> Self {
        let mut quotas = Vec::new();
        let global = QuotaSpec::new(
            "global".to_owned(),
            config.requests_per_second,
            config.burst,
        )
        .map(|quota| {
            quotas.push(quota);
            quotas.len() - 1
        });
        let mut routes = Vec::new();
        for route in &config.routes {
            let RouteLimitConfig {
                path_prefix,
                method,
                requests_per_second,
                burst,
            } = route;
            let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).ok();
            let name = format!(
                "route:{}:{path_prefix}",
                method.as_ref().map_or("*", Method::as_str)
            );
            if let Some(quota) = QuotaSpec::new(name, *requests_per_second, *burst) {
                quotas.push(quota);
                routes.push(RouteMatch {
                    path_prefix: path_prefix.clone(),
                    method,
                    quota: quotas.len() - 1,
                });
            }
        }
        let enforcer = if config.shared.enabled() && !quotas.is_empty() {
            Enforcer::Shared(shared::SharedLimiter::new(
                quotas,
                &config.shared,
                &metrics.shared_limit,
            ))
        } else {
            Enforcer::Local(LocalBuckets::new(&quotas, 1))
        };
        Self {
            global,
            routes,
            max_wait: Duration::from_millis(config.max_wait_ms),
            waiting: Semaphore::new(config.max_waiting),
            enforcer,
        }
    }

    /// True when no limit is configured (the request path skips the limiter).
    pub fn is_off(&self) -> bool {
        self.global.is_none() && self.routes.is_empty()
    }

    /// The shared limit's background task (leases, heartbeats, the Redis connection), once;
    /// `None` for a local limit or on a second call. Spawn it at start.
    pub fn background(&self) -> Option<Background> {
        match &self.enforcer {
            Enforcer::Shared(shared) => shared.background(),
            Enforcer::Local(_) => None,
        }
    }

    /// The most specific route quota for the request: the longest matching path prefix.
    fn route_for(&self, method: &Method, path: &str) -> Option<usize> {
        self.routes
            .iter()
            .filter(|r| {
                path.starts_with(&r.path_prefix) && r.method.as_ref().is_none_or(|m| m == method)
            })
            .max_by_key(|r| r.path_prefix.len())
            .map(|r| r.quota)
    }

    /// Takes one permit from the route's quota and the global one, waiting up to
    /// `max_wait` in all. Called before every upstream attempt.
    pub async fn acquire(&self, method: &Method, path: &str) -> Result<(), LimitError> {
        if self.is_off() {
            return Ok(());
        }
        let deadline = Instant::now() + self.max_wait;
        let (first, second) = match self.route_for(method, path) {
            Some(route) => (Some(route), self.global),
            None => (self.global, None),
        };
        match &self.enforcer {
            Enforcer::Local(buckets) => {
                for quota in [first, second].into_iter().flatten() {
                    buckets.take(quota, deadline, &self.waiting).await?;
                }
                Ok(())
            }
            Enforcer::Shared(shared) => {
                shared.acquire(first, second, deadline, &self.waiting).await
            }
        }
    }
}

/// One wait for a permit that comes in `wait`: refused when that is past `deadline`, or when
/// `rate_limit.max_waiting` requests already wait (`parked` keeps this request's place in
/// `waiting` from its first wait on).
async fn wait_for_next_permit<'a>(
    wait: Duration,
    deadline: Instant,
    waiting: &'a Semaphore,
    parked: &mut Option<SemaphorePermit<'a>>,
) -> Result<(), LimitError> {
    if Instant::now() + wait > deadline {
        return Err(LimitError::RateLimited { retry_after: wait });
    }
    if parked.is_none() {
        *parked = Some(
            waiting
                .try_acquire()
                .map_err(|_| LimitError::RateLimited { retry_after: wait })?,
        );
    }
    tokio::time::sleep(wait).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn config(rps: f64, burst: u32, max_wait_ms: u64) -> RateLimitConfig {
        RateLimitConfig {
            requests_per_second: rps,
            burst,
            max_wait_ms,
            ..RateLimitConfig::default()
        }
    }

    #[tokio::test]
    async fn burst_is_served_then_requests_are_rejected_with_a_retry_after() {
        let limiter = RateLimiter::new(&config(1.0, 3, 0), &Metrics::new());
        for _ in 0..3 {
            limiter.acquire(&Method::GET, "/").await.unwrap();
        }
        let Err(LimitError::RateLimited { retry_after }) = limiter.acquire(&Method::GET, "/").await
        else {
            panic!("fourth request within the burst window must be limited");
        };
        assert!(
            retry_after <= Duration::from_secs(1) && retry_after > Duration::from_millis(500),
            "{retry_after:?}"
        );
        assert_eq!(retry_after_secs(&retry_after), 1);
    }

    #[tokio::test]
    async fn a_request_waits_for_a_permit_within_max_wait() {
        let limiter = RateLimiter::new(&config(20.0, 1, 200), &Metrics::new());
        limiter.acquire(&Method::GET, "/").await.unwrap();
        let started = std::time::Instant::now();
        limiter.acquire(&Method::GET, "/").await.unwrap();
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(30), "{waited:?}");
    }

    #[tokio::test]
    async fn route_limits_apply_to_their_prefix_and_method_only() {
        let mut cfg = config(0.0, 0, 0);
        cfg.routes.push(RouteLimitConfig {
            path_prefix: "/v1/link".into(),
            method: "POST".into(),
            requests_per_second: 1.0,
            burst: 1,
        });
        let limiter = RateLimiter::new(&cfg, &Metrics::new());
        limiter
            .acquire(&Method::POST, "/v1/link/accounts")
            .await
            .unwrap();
        assert!(limiter
            .acquire(&Method::POST, "/v1/link/accounts")
            .await
            .is_err());
        // Another method or another path is not limited.
        for _ in 0..10 {
            limiter
                .acquire(&Method::GET, "/v1/link/accounts")
                .await
                .unwrap();
            limiter
                .acquire(&Method::POST, "/v1/benefits")
                .await
                .unwrap();
        }
    }

    #[test]
    fn off_by_default() {
        assert!(RateLimiter::new(&RateLimitConfig::default(), &Metrics::new()).is_off());
    }
}
