//! A semaphore with a bounded line: at most `permits` holders at once, at most
//! `max_waiting` callers waiting for a permit, and the rest refused at once.
//!
//! Used wherever the host would rather answer 503 quickly than let work pile up: a
//! plugin's concurrency cap (`plugins::runtime::Admission`) and the password-hashing pool.
//! A waiter's place in line is given back however its wait ends, including when its
//! future is dropped because the client went away.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why no permit was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_waiting` callers were already waiting.
    LineFull,
    /// No permit freed within the caller's wait limit.
    TimedOut(Duration),
}

#[derive(Debug)]
pub struct BoundedSemaphore {
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
    /// A metric that mirrors `waiting`, if any.
    waiting_gauge: Option<IntGauge>,
}

impl BoundedSemaphore {
    pub fn new(permits: usize, max_waiting: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(permits)),
            waiting: AtomicUsize::new(0),
            max_waiting,
            waiting_gauge: None,
        }
    }

    /// Keeps `gauge` equal to the number of callers waiting.
    pub fn mirror_waiting(mut self, gauge: IntGauge) -> Self {
        self.waiting_gauge = Some(gauge);
        self
    }

    /// A permit, at once if one is free, else after waiting in line (at most `wait_limit`
    /// when given).
    pub async fn acquire(
        &self,
        wait_limit: Option<Duration>,
    ) -> Result<OwnedSemaphorePermit, Refusal> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let _place =
            PlaceInLine::take(&self.waiting, self.max_waiting, self.waiting_gauge.as_ref())
                .ok_or(Refusal::LineFull)?;
        let acquire = self.permits.clone().acquire_owned();
        let permit = match wait_limit {
            Some(limit) => tokio::time::timeout(limit, acquire)
                .await
                .map_err(|_| Refusal::TimedOut(limit))?,
            None => acquire.await,
        };
        // The semaphore is never closed.
        permit.map_err(|_| Refusal::LineFull)
    }

    /// Callers waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

/// A place in line, given back when dropped.
struct PlaceInLine<'a>(&'a AtomicUsize, Option<&'a IntGauge>);

impl<'a> PlaceInLine<'a> {
    fn take(
        waiting: &'a AtomicUsize,
        max_waiting: usize,
        gauge: Option<&'a IntGauge>,
    ) -> Option<Self> {
        waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max_waiting).then_some(n + 1)
            })
            .ok()?;
        if let Some(gauge) = gauge {
            gauge.inc();
        }
        Some(Self(waiting, gauge))
    }
}

impl Drop for PlaceInLine<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        if let Some(gauge) = self.1 {
            gauge.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cancelled_wait_gives_its_place_back() {
        let line = BoundedSemaphore::new(1, 1);
        let holder = line.acquire(None).await.expect("the one permit");
        // A waiter whose client goes away: its future is dropped mid-wait.
        let gave_up = tokio::time::timeout(Duration::from_millis(20), line.acquire(None)).await;
        assert!(gave_up.is_err(), "it was still waiting");
        assert_eq!(line.waiting(), 0);
        // The line still has room, and the next waiter gets the permit once it frees.
        let (next, ()) = tokio::join!(line.acquire(None), async { drop(holder) });
        assert!(next.is_ok());
    }

    #[tokio::test]
    async fn a_full_line_refuses_at_once_and_a_slow_one_times_out() {
        let line = BoundedSemaphore::new(1, 1);
        let _holder = line.acquire(None).await.expect("the one permit");
        let limit = Duration::from_millis(50);
        let (waited, refused) = tokio::join!(line.acquire(Some(limit)), async {
            tokio::task::yield_now().await;
            line.acquire(Some(limit)).await
        });
        assert_eq!(waited.err(), Some(Refusal::TimedOut(limit)));
        assert_eq!(refused.err(), Some(Refusal::LineFull));
        assert_eq!(line.waiting(), 0);
    }
}
