//! The Redis store: shared buckets and quota counters for a fleet of gateways.
//! (Placeholder: every call reports the store unavailable until implemented.)

use std::sync::Arc;

use time::{Date, OffsetDateTime};

use super::{BucketSpec, BucketState, DayUsage, LimitError, QuotaSpec, QuotaState};
use crate::config::schema::OnError;
use crate::metrics::Metrics;

/// Throttle and quota state in Redis, shared by gateway replicas.
pub struct RedisStore {
    _url: String,
    _prefix: String,
    _on_error: OnError,
    _metrics: Arc<Metrics>,
}

impl RedisStore {
    /// A store for `url` (`redis://host:port/db`). Never fails because Redis is down: it
    /// connects in the background and follows `on_error` meanwhile. Refuses a malformed URL.
    pub fn new(
        url: &str,
        prefix: String,
        on_error: OnError,
        metrics: Arc<Metrics>,
    ) -> Result<RedisStore, String> {
        Ok(RedisStore {
            _url: url.to_string(),
            _prefix: prefix,
            _on_error: on_error,
            _metrics: metrics,
        })
    }

    /// Takes a token from `bucket` (per `key` when given).
    pub async fn take(
        &self,
        _bucket: &str,
        _key: Option<&str>,
        _spec: BucketSpec,
    ) -> Result<BucketState, LimitError> {
        Err(LimitError::Unavailable)
    }

    /// Counts one request against a quota.
    pub async fn count(
        &self,
        _plan: &str,
        _key_id: &str,
        _spec: QuotaSpec,
        _now: OffsetDateTime,
    ) -> Result<QuotaState, LimitError> {
        Err(LimitError::Unavailable)
    }

    /// Per-day usage.
    pub async fn usage(
        &self,
        _plan: &str,
        _key_id: &str,
        _from: Date,
        _to: Date,
    ) -> Result<Vec<DayUsage>, String> {
        Err("not implemented".into())
    }
}
