//! The retry policy: which outcomes are retried, how long to wait (exponential backoff with
//! full jitter, or the upstream's `Retry-After`), and the shared retry budget that keeps an
//! outage from multiplying the load on Prime.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use http::StatusCode;
use tokio::time::Instant;

use crate::config::RetryConfig;

/// What one upstream attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response that is passed through.
    Response,
    /// A response whose status is in `retry_on_status`.
    RetryableStatus,
    /// TCP connect or TLS handshake failed.
    ConnectError,
    /// The connection closed or reset before a full response.
    ConnectionClosed,
    /// The attempt timeout ran out.
    Timeout,
}

impl Outcome {
    /// The `outcome` label of `prime_proxy_upstream_attempts_total`.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Response => "response",
            Outcome::RetryableStatus => "retryable_status",
            Outcome::ConnectError => "connect_error",
            Outcome::ConnectionClosed => "connection_closed",
            Outcome::Timeout => "timeout",
        }
    }
}

/// The configured policy.
#[derive(Debug)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    base_delay: Duration,
    max_delay: Duration,
    /// Indexed by status code; 400 and 403 are never set (config refuses them).
    retry_on: Box<[bool; 600]>,
}

impl RetryPolicy {
    pub fn new(config: &RetryConfig) -> Self {
        let mut retry_on = Box::new([false; 600]);
        for &status in &config.retry_on_status {
            if let Some(slot) = retry_on.get_mut(usize::from(status)) {
                *slot = !matches!(status, 400 | 403);
            }
        }
        Self {
            max_attempts: config.max_attempts,
            base_delay: Duration::from_millis(config.base_delay_ms),
            max_delay: Duration::from_millis(config.max_delay_ms),
            retry_on,
        }
    }

    pub fn retries_status(&self, status: StatusCode) -> bool {
        self.retry_on
            .get(usize::from(status.as_u16()))
            .copied()
            .unwrap_or(false)
    }

    /// The wait before retry number `retry` (1 = the first retry): the upstream's
    /// `Retry-After` when it sent one, else full jitter over an exponential ceiling;
    /// capped by `max_delay_ms` either way.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(wait) = retry_after {
            return wait.min(self.max_delay);
        }
        let ceiling = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(retry.saturating_sub(1).min(30)))
            .min(self.max_delay);
        ceiling.mul_f64(rand::random::<f64>())
    }
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Answer the client with what we have.
    Finish,
    /// Wait this long, then try again.
    RetryAfter(Duration),
}

impl RetryPolicy {
    /// Decides after attempt number `attempts` (1 = the first) came to `outcome`.
    /// `retry_after` is the upstream's `Retry-After`, when it sent one; a retry whose wait
    /// would outlast `deadline` is not made.
    pub fn decide(
        &self,
        attempts: u32,
        outcome: Outcome,
        retry_after: Option<Duration>,
        now: Instant,
        deadline: Instant,
    ) -> Decision {
        if outcome == Outcome::Response || attempts >= self.max_attempts {
            return Decision::Finish;
        }
        let delay = self.delay(attempts, retry_after);
        if now + delay >= deadline {
            return Decision::Finish;
        }
        Decision::RetryAfter(delay)
    }
}

/// A `Retry-After` value: delay-seconds or an HTTP-date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

/// A shared token bucket in the spirit of the AWS SDKs' "standard" retry mode: each retry
/// spends tokens, successes put some back; when it is empty, requests fail fast instead of
/// retrying.
#[derive(Debug)]
pub struct RetryBudget {
    capacity: u32,
    tokens: AtomicU32,
    retry_cost: u32,
    success_refill: u32,
}

impl RetryBudget {
    pub fn new(config: &RetryConfig) -> Self {
        Self {
            capacity: config.budget_tokens,
            tokens: AtomicU32::new(config.budget_tokens),
            retry_cost: config.budget_retry_cost,
            success_refill: config.budget_success_refill,
        }
    }

    /// True when the budget is disabled (`budget_tokens = 0`).
    pub fn unlimited(&self) -> bool {
        self.capacity == 0
    }

    /// Spends the cost of one retry (twice that after a timeout). Returns the tokens spent,
    /// or `None` when the budget cannot pay for it.
    pub fn try_spend(&self, after_timeout: bool) -> Option<u32> {
        if self.unlimited() {
            return Some(0);
        }
        let cost = if after_timeout {
            self.retry_cost.saturating_mul(2)
        } else {
            self.retry_cost
        };
        self.tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(cost)
            })
            .ok()
            .map(|_| cost)
    }

    /// A request succeeded: gives back what its retries spent, or the small refill for a
    /// first-attempt success.
    pub fn on_success(&self, spent: u32) {
        if self.unlimited() {
            return;
        }
        let refill = if spent > 0 {
            spent
        } else {
            self.success_refill
        };
        let _ = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                Some(left.saturating_add(refill).min(self.capacity))
            });
    }

    pub fn tokens(&self) -> u32 {
        self.tokens.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn config() -> RetryConfig {
        RetryConfig::default()
    }

    #[tokio::test(start_paused = true)]
    async fn decisions_follow_attempts_outcomes_and_the_deadline() {
        let policy = RetryPolicy::new(&config()); // 3 attempts, base 100 ms, max 5 s
        let now = Instant::now();
        let far = now + Duration::from_secs(30);
        assert_eq!(
            policy.decide(1, Outcome::Response, None, now, far),
            Decision::Finish
        );
        for outcome in [
            Outcome::RetryableStatus,
            Outcome::ConnectError,
            Outcome::ConnectionClosed,
            Outcome::Timeout,
        ] {
            assert!(matches!(
                policy.decide(1, outcome, None, now, far),
                Decision::RetryAfter(d) if d <= Duration::from_millis(100)
            ));
            assert_eq!(policy.decide(3, outcome, None, now, far), Decision::Finish);
        }
        // Retry-After is honoured (capped), unless it outlasts the total timeout.
        assert_eq!(
            policy.decide(
                1,
                Outcome::RetryableStatus,
                Some(Duration::from_secs(2)),
                now,
                far
            ),
            Decision::RetryAfter(Duration::from_secs(2))
        );
        assert_eq!(
            policy.decide(
                1,
                Outcome::RetryableStatus,
                Some(Duration::from_secs(60)),
                now,
                far
            ),
            Decision::RetryAfter(Duration::from_secs(5))
        );
        assert_eq!(
            policy.decide(
                1,
                Outcome::RetryableStatus,
                Some(Duration::from_secs(2)),
                now,
                now + Duration::from_secs(1)
            ),
            Decision::Finish
        );
    }

    #[test]
    fn only_configured_statuses_are_retried_and_never_400_or_403() {
        let mut cfg = config();
        cfg.retry_on_status = vec![429, 503, 400, 403];
        let policy = RetryPolicy::new(&cfg);
        assert!(policy.retries_status(StatusCode::TOO_MANY_REQUESTS));
        assert!(policy.retries_status(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!policy.retries_status(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(!policy.retries_status(StatusCode::BAD_REQUEST));
        assert!(!policy.retries_status(StatusCode::FORBIDDEN));
        assert!(!policy.retries_status(StatusCode::OK));
    }

    #[test]
    fn backoff_is_full_jitter_under_an_exponential_ceiling() {
        let policy = RetryPolicy::new(&config()); // base 100 ms, max 5 s
        for (retry, ceiling_ms) in [(1, 100), (2, 200), (3, 400), (7, 5000), (40, 5000)] {
            let delays: Vec<Duration> = (0..200).map(|_| policy.delay(retry, None)).collect();
            let max = delays.iter().max().unwrap();
            let min = delays.iter().min().unwrap();
            assert!(
                *max <= Duration::from_millis(ceiling_ms),
                "retry {retry}: {max:?}"
            );
            // Full jitter spreads over the whole range, not just near the ceiling.
            assert!(
                *min < Duration::from_millis(ceiling_ms / 4),
                "retry {retry}: {min:?}"
            );
            assert!(
                *max > Duration::from_millis(ceiling_ms / 2),
                "retry {retry}: {max:?}"
            );
        }
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let policy = RetryPolicy::new(&config());
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(60))),
            Duration::from_secs(5)
        );
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after(" 3 ", now), Some(Duration::from_secs(3)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(7)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(7));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn the_budget_runs_dry_and_successes_refill_it() {
        let mut cfg = config();
        cfg.budget_tokens = 12;
        cfg.budget_retry_cost = 5;
        let budget = RetryBudget::new(&cfg);
        assert_eq!(budget.try_spend(false), Some(5));
        assert_eq!(budget.try_spend(false), Some(5));
        assert_eq!(budget.try_spend(false), None, "2 tokens left cannot pay 5");
        budget.on_success(5);
        assert_eq!(budget.tokens(), 7);
        assert_eq!(
            budget.try_spend(true),
            None,
            "a retry after a timeout costs 10"
        );
        budget.on_success(0);
        budget.on_success(0);
        budget.on_success(0);
        assert_eq!(budget.tokens(), 10);
        assert_eq!(budget.try_spend(true), Some(10));
        budget.on_success(100);
        assert_eq!(budget.tokens(), 12, "never above capacity");
    }

    #[test]
    fn a_zero_budget_means_unlimited() {
        let mut cfg = config();
        cfg.budget_tokens = 0;
        let budget = RetryBudget::new(&cfg);
        for _ in 0..1000 {
            assert_eq!(budget.try_spend(true), Some(0));
        }
    }
}
