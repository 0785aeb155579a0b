//! Token buckets in this process (governor's GCRA): the whole limit when it is not shared,
//! and the shared limit's `on_error = "local"` fallback at this replica's share.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::Quota;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{wait_for_next_permit, LimitError, QuotaSpec};

/// Tokio's clock for governor: the same monotonic time as `tokio::time` (so the buckets
/// follow paused time in tests), as nanoseconds since the buckets were made.
#[derive(Clone, Debug)]
struct TokioClock {
    epoch: Instant,
}

impl Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.epoch.elapsed())
    }
}

type Bucket = governor::RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Nanos>>;

/// One bucket per quota, indexed like the limiter's quotas.
pub(crate) struct LocalBuckets {
    /// `None`: a quota governor cannot express (treated as unlimited, as before).
    buckets: Vec<Option<Bucket>>,
    clock: TokioClock,
}

/// A quota of `rate` per second with `burst` permits.
fn quota(rate: f64, burst: u32) -> Option<Quota> {
    if rate <= 0.0 || !rate.is_finite() {
        return None;
    }
    let period = Duration::from_secs_f64(1.0 / rate);
    Some(Quota::with_period(period)?.allow_burst(NonZeroU32::new(burst.max(1))?))
}

impl LocalBuckets {
    /// Buckets for `1 / share` of each quota: the rate divided by `share`, the burst too
    /// (at least one permit).
    pub(crate) fn new(quotas: &[QuotaSpec], share: u32) -> Self {
        let share = share.max(1);
        let clock = TokioClock {
            epoch: Instant::now(),
        };
        let buckets = quotas
            .iter()
            .map(|q| {
                quota(q.rate / f64::from(share), (q.burst / share).max(1))
                    .map(|quota| Bucket::direct_with_clock(quota, clock.clone()))
            })
            .collect();
        Self { buckets, clock }
    }

    /// Takes one permit of quota `index`, waiting for it until `deadline` at most.
    /// `waiting` bounds the requests parked at once.
    pub(crate) async fn take(
        &self,
        index: usize,
        deadline: Instant,
        waiting: &Semaphore,
    ) -> Result<(), LimitError> {
        let Some(Some(bucket)) = self.buckets.get(index) else {
            return Ok(());
        };
        let mut parked = None;
        loop {
            let wait = match bucket.check() {
                Ok(()) => return Ok(()),
                Err(not_until) => not_until.wait_time_from(self.clock.now()),
            };
            wait_for_next_permit(wait, deadline, waiting, &mut parked).await?;
        }
    }
}
