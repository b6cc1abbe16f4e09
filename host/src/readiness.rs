//! `/ready`: whether the backends answer, checked at most about once a second.

use std::time::{Duration, Instant};

use crate::capabilities::Capabilities;
use crate::error::ApiError;

/// How long a readiness answer is reused.
const READINESS_TTL: Duration = Duration::from_secs(1);

/// `/ready` is public and never limited: its answer is reused for [`READINESS_TTL`], and
/// callers arriving while a check runs wait for that check, so a flood of probes costs
/// about one database ping a second instead of draining the pool.
#[derive(Debug, Default)]
pub struct ReadinessCache {
    last: tokio::sync::Mutex<Option<(Instant, Result<&'static str, ApiError>)>>,
}

impl ReadinessCache {
    /// Ready (with the kind of key-value store) or the backend that is not.
    pub async fn answer(&self, capabilities: &Capabilities) -> Result<&'static str, ApiError> {
        let mut last = self.last.lock().await;
        if let Some((checked_at, answer)) = last.as_ref()
            && checked_at.elapsed() < READINESS_TTL
        {
            return answer.clone();
        }
        let answer = readiness(capabilities).await;
        tracing::debug!(ready = answer.is_ok(), "readiness checked");
        *last = Some((Instant::now(), answer.clone()));
        answer
    }
}

/// Ready when the database (and Redis, when configured) answer.
async fn readiness(capabilities: &Capabilities) -> Result<&'static str, ApiError> {
    if let Err(cause) = capabilities.sql.ping().await {
        tracing::warn!(%cause, "not ready: database");
        return Err(ApiError::NotReady("database".into()));
    }
    if let Err(cause) = capabilities.kv.ping().await {
        tracing::warn!(%cause, "not ready: redis");
        return Err(ApiError::NotReady("redis".into()));
    }
    Ok(if capabilities.kv.is_redis() {
        "redis"
    } else {
        "in-process"
    })
}
