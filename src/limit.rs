//! Local rate limits, applied before anything goes upstream: one global token bucket and
//! optional per-route buckets (governor's GCRA), with a bounded wait for a permit.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use http::Method;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::config::{RateLimitConfig, RouteLimitConfig};

/// The local limit had no permit in time.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("the local rate limit has no permit available; retry after {}s", retry_after_secs(.retry_after))]
    RateLimited { retry_after: Duration },
}

/// Whole seconds for a `Retry-After` header: rounded up, at least 1.
pub fn retry_after_secs(wait: &Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

struct RouteLimit {
    path_prefix: String,
    method: Option<Method>,
    bucket: DefaultDirectRateLimiter,
}

/// Every configured bucket, shared by all requests.
pub struct RateLimiter {
    global: Option<DefaultDirectRateLimiter>,
    routes: Vec<RouteLimit>,
    max_wait: Duration,
    /// Bounds the requests parked waiting for a permit.
    waiting: Semaphore,
    clock: DefaultClock,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("global", &self.global.is_some())
            .field("routes", &self.routes.len())
            .field("max_wait", &self.max_wait)
            .finish()
    }
}

/// A quota of `rate` per second with `burst` (0 = the rate rounded up, at least 1).
fn quota(rate: f64, burst: u32) -> Option<Quota> {
    if rate <= 0.0 {
        return None;
    }
    let period = Duration::from_secs_f64(1.0 / rate);
    let default_burst = rate.ceil().clamp(1.0, f64::from(u32::MAX)) as u32;
    let burst = NonZeroU32::new(if burst == 0 { default_burst } else { burst })?;
    Some(Quota::with_period(period)?.allow_burst(burst))
}

impl RateLimiter {
    pub fn new(config: &RateLimitConfig) -> Self {
        let routes = config
            .routes
            .iter()
            .filter_map(|route: &RouteLimitConfig| {
                Some(RouteLimit {
                    path_prefix: route.path_prefix.clone(),
                    method: Method::from_bytes(route.method.to_ascii_uppercase().as_bytes()).ok(),
                    bucket: DefaultDirectRateLimiter::direct(quota(
                        route.requests_per_second,
                        route.burst,
                    )?),
                })
            })
            .collect();
        Self {
            global: quota(config.requests_per_second, config.burst)
                .map(DefaultDirectRateLimiter::direct),
            routes,
            max_wait: Duration::from_millis(config.max_wait_ms),
            waiting: Semaphore::new(config.max_waiting),
            clock: DefaultClock::default(),
        }
    }

    /// True when no limit is configured (the request path skips the limiter).
    pub fn is_off(&self) -> bool {
        self.global.is_none() && self.routes.is_empty()
    }

    /// The most specific route limit for the request: the longest matching path prefix.
    fn route_for(&self, method: &Method, path: &str) -> Option<&DefaultDirectRateLimiter> {
        self.routes
            .iter()
            .filter(|r| {
                path.starts_with(&r.path_prefix) && r.method.as_ref().is_none_or(|m| m == method)
            })
            .max_by_key(|r| r.path_prefix.len())
            .map(|r| &r.bucket)
    }

    /// Takes one permit from the route's bucket and the global one, waiting up to
    /// `max_wait` in all.
    pub async fn acquire(&self, method: &Method, path: &str) -> Result<(), LimitError> {
        if self.is_off() {
            return Ok(());
        }
        let deadline = Instant::now() + self.max_wait;
        if let Some(bucket) = self.route_for(method, path) {
            self.take(bucket, deadline).await?;
        }
        if let Some(bucket) = &self.global {
            self.take(bucket, deadline).await?;
        }
        Ok(())
    }

    async fn take(
        &self,
        bucket: &DefaultDirectRateLimiter,
        deadline: Instant,
    ) -> Result<(), LimitError> {
        let mut parked = None;
        loop {
            let wait = match bucket.check() {
                Ok(()) => return Ok(()),
                Err(not_until) => not_until.wait_time_from(self.clock.now()),
            };
            if Instant::now() + wait > deadline {
                return Err(LimitError::RateLimited { retry_after: wait });
            }
            if parked.is_none() {
                parked = Some(
                    self.waiting
                        .try_acquire()
                        .map_err(|_| LimitError::RateLimited { retry_after: wait })?,
                );
            }
            tokio::time::sleep(wait).await;
        }
    }
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
        let limiter = RateLimiter::new(&config(1.0, 3, 0));
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
        let limiter = RateLimiter::new(&config(20.0, 1, 200));
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
        let limiter = RateLimiter::new(&cfg);
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
        assert!(RateLimiter::new(&RateLimitConfig::default()).is_off());
    }
}
