//! The signing clock: local time plus an offset learnt from Prime when it rejects a
//! signature as outside its time window (as the AWS SDKs do for clock skew).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

/// Offsets smaller than this are noise (latency, rounding of `Date` to seconds).
const SIGNIFICANT_SKEW: Duration = Duration::from_secs(60);

/// The clock requests are signed with.
#[derive(Debug, Default)]
pub struct SigningClock {
    /// Milliseconds to add to the local clock (Prime's time minus ours).
    offset_ms: AtomicI64,
}

impl SigningClock {
    /// The time to sign with.
    pub fn now(&self) -> SystemTime {
        apply(SystemTime::now(), self.offset_ms.load(Ordering::Relaxed))
    }

    /// The current offset, in seconds.
    pub fn offset_secs(&self) -> f64 {
        self.offset_ms.load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// Learns from a 403's `Date` header, observed at local time `received`. Returns the new
    /// offset in seconds when it changed (for a log line).
    pub fn learn(&self, date_header: &str, received: SystemTime) -> Option<f64> {
        let server = httpdate::parse_http_date(date_header).ok()?;
        let offset_ms = match server.duration_since(received) {
            Ok(ahead) if ahead >= SIGNIFICANT_SKEW => millis(ahead),
            Ok(_) => 0,
            Err(behind) if behind.duration() >= SIGNIFICANT_SKEW => -millis(behind.duration()),
            Err(_) => 0,
        };
        let previous = self.offset_ms.swap(offset_ms, Ordering::Relaxed);
        (previous != offset_ms).then(|| offset_ms as f64 / 1000.0)
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn apply(now: SystemTime, offset_ms: i64) -> SystemTime {
    let magnitude = Duration::from_millis(offset_ms.unsigned_abs());
    if offset_ms >= 0 {
        now.checked_add(magnitude).unwrap_or(now)
    } else {
        now.checked_sub(magnitude).unwrap_or(now)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_skewed_date_moves_the_signing_clock_and_a_correct_one_resets_it() {
        let clock = SigningClock::default();
        let local = SystemTime::now();
        let prime = local + Duration::from_secs(15 * 60);
        let learnt = clock.learn(&httpdate::fmt_http_date(prime), local).unwrap();
        assert!((learnt - 900.0).abs() < 1.0, "{learnt}");
        let signed = clock.now().duration_since(SystemTime::now()).unwrap();
        assert!(signed > Duration::from_secs(898) && signed < Duration::from_secs(902));
        // Same offset again: nothing new to log.
        assert!(clock
            .learn(&httpdate::fmt_http_date(prime), local)
            .is_none());
        // Prime behind us.
        let learnt = clock
            .learn(
                &httpdate::fmt_http_date(local - Duration::from_secs(600)),
                local,
            )
            .unwrap();
        assert!((learnt + 600.0).abs() < 1.0);
        // A 403 whose Date agrees with us: the offset goes back to zero.
        assert_eq!(
            clock.learn(&httpdate::fmt_http_date(local), local),
            Some(0.0)
        );
        assert_eq!(clock.offset_secs(), 0.0);
    }

    #[test]
    fn small_differences_and_garbage_are_ignored() {
        let clock = SigningClock::default();
        let local = SystemTime::now();
        assert!(clock
            .learn(
                &httpdate::fmt_http_date(local + Duration::from_secs(5)),
                local
            )
            .is_none());
        assert!(clock.learn("yesterday", local).is_none());
        assert_eq!(clock.offset_secs(), 0.0);
    }
}
