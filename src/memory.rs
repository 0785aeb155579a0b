//! The memory budget for buffered bodies: request bodies (read whole, to be hashed and
//! replayed on retries) and small response bodies (read whole inside the attempt) together
//! stay under `listener.max_buffered_bytes`.
//!
//! Memory is a property of the process, so this is the one piece of process-wide state on the
//! request path. A reservation is taken before bytes are buffered and released when the
//! buffer is dropped; nothing waits for room: a request that does not fit is answered 503
//! `overloaded`, a response that does not fit is streamed instead of buffered.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Reservations are counted in units of this many bytes, so that a budget of any size fits
/// the semaphore's permit count and one `u32` acquisition covers any body.
const UNIT: u64 = 1024;

/// What is left of the budget.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    units: Arc<Semaphore>,
    capacity: u64,
}

/// Bytes held against the budget until dropped.
#[derive(Debug)]
pub struct Reservation {
    _permit: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    /// A reservation of nothing (an empty body).
    pub fn none() -> Self {
        Self { _permit: None }
    }
}

/// The budget has no room for the bytes asked for.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the proxy's memory budget for buffered bodies is used up; retry shortly")]
pub struct OverBudget;

impl MemoryBudget {
    /// A budget of `bytes` (rounded down to whole KiB).
    pub fn new(bytes: u64) -> Self {
        let units = usize::try_from(bytes / UNIT)
            .unwrap_or(Semaphore::MAX_PERMITS)
            .min(Semaphore::MAX_PERMITS);
        Self {
            units: Arc::new(Semaphore::new(units)),
            capacity: bytes,
        }
    }

    /// Reserves room for `bytes` now, or fails at once.
    pub fn try_reserve(&self, bytes: u64) -> Result<Reservation, OverBudget> {
        if bytes == 0 {
            return Ok(Reservation::none());
        }
        let units = u32::try_from(bytes.div_ceil(UNIT)).map_err(|_| OverBudget)?;
        Arc::clone(&self.units)
            .try_acquire_many_owned(units)
            .map(|permit| Reservation {
                _permit: Some(permit),
            })
            .map_err(|_| OverBudget)
    }

    /// Grows `reservation` by `bytes` (a chunked body as its chunks arrive).
    pub fn try_grow(&self, reservation: &mut Reservation, bytes: u64) -> Result<(), OverBudget> {
        let more = self.try_reserve(bytes)?;
        match (&mut reservation._permit, more._permit) {
            (Some(held), Some(more)) => held.merge(more),
            (slot @ None, more) => *slot = more,
            (Some(_), None) => {}
        }
        Ok(())
    }

    /// Bytes currently reserved (for metrics and tests).
    pub fn reserved_bytes(&self) -> u64 {
        let free = self.units.available_permits() as u64 * UNIT;
        (self.capacity / UNIT * UNIT).saturating_sub(free)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn reservations_are_refused_past_the_budget_and_returned_when_dropped() {
        let budget = MemoryBudget::new(10 * 1024);
        let first = budget.try_reserve(6 * 1024).unwrap();
        assert!(budget.try_reserve(5 * 1024).is_err());
        let mut second = budget.try_reserve(1).unwrap(); // rounds up to one KiB
        assert_eq!(budget.reserved_bytes(), 7 * 1024);
        budget.try_grow(&mut second, 3 * 1024).unwrap();
        assert!(budget.try_grow(&mut second, 1).is_err());
        drop(first);
        assert_eq!(budget.reserved_bytes(), 4 * 1024);
        drop(second);
        assert_eq!(budget.reserved_bytes(), 0);
        assert!(budget.try_reserve(0).is_ok());
        assert!(budget.try_reserve(u64::MAX).is_err());
    }
}
