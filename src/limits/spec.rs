//! The values usage plans are made of, shared by the stores: bucket and quota settings, their
//! state after a request, and why a request was refused.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::middleware::StateInformationMiddleware;
use governor::{Quota, RateLimiter};

use super::period::Period;

/// A governor keyed limiter that reports remaining capacity.
pub type KeyedLimiter = RateLimiter<
    Arc<str>,
    governor::state::keyed::DefaultKeyedStateStore<Arc<str>>,
    governor::clock::DefaultClock,
    StateInformationMiddleware,
>;

/// Settings of a token bucket: `rate` tokens per second, at most `burst` held.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketSpec {
    /// Tokens added per second.
    pub rate: f64,
    /// Bucket size.
    pub burst: u32,
}

impl BucketSpec {
    /// Validates and builds a spec. Refuses a rate that is not positive and finite, a rate
    /// above one million per second, and a burst of 0.
    pub fn new(rate: f64, burst: u32) -> Result<BucketSpec, String> {
        if !(rate.is_finite() && rate > 0.0 && rate <= 1_000_000.0) {
            return Err(format!(
                "rate must be above 0 and at most 1000000 per second, not {rate}"
            ));
        }
        if burst == 0 {
            return Err("burst must be at least 1".into());
        }
        Ok(BucketSpec { rate, burst })
    }

    /// Time to earn one token.
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.rate)
    }

    /// The governor quota for this spec (GCRA: one cell per interval, `burst` at once).
    pub fn quota(&self) -> Quota {
        let burst = NonZeroU32::new(self.burst).unwrap_or(NonZeroU32::MIN);
        Quota::with_period(self.interval())
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(burst)
    }

    /// The bucket's name part for these settings; a change of settings is a new bucket.
    pub fn tag(&self) -> String {
        format!("{}r{}b", self.rate, self.burst)
    }
}

/// What a bucket looks like after a request took a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketState {
    /// Bucket size.
    pub limit: u64,
    /// Tokens left.
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub reset: u64,
}

/// A quota's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaSpec {
    /// Requests per period.
    pub limit: u64,
    /// The period.
    pub period: Period,
}

/// A quota counter after a request was counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaState {
    /// Requests per period.
    pub limit: u64,
    /// Requests left in this period.
    pub remaining: u64,
    /// Seconds until the period ends.
    pub reset: u64,
}

/// Why a limit refused, or could not be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitError {
    /// The bucket is empty; a token comes in `retry_after` seconds.
    Throttled {
        /// Seconds until a token is available (at least 1).
        retry_after: u64,
    },
    /// The quota is used up until the period ends in `retry_after` seconds.
    QuotaExceeded {
        /// Seconds until the next period.
        retry_after: u64,
    },
    /// The shared store is unreachable and `on_error` is `deny`.
    Unavailable,
}

/// One day's usage of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayUsage {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// Requests counted that day.
    pub used: u64,
}
