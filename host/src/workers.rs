//! Work that holds its thread, off the serving workers' queues.
//!
//! The host serves on tokio's multi-threaded runtime: a handful of workers, one per core,
//! each with a queue of requests. Code that holds its thread for long (a guest filling
//! 64 MiB, a SQLite statement that writes and syncs, a wait for SQLite's write lock)
//! would leave every request queued behind it waiting. [`hand_over`] first gives the
//! worker's queue to another thread, then runs the work where it is: the OS time-slices
//! it against the workers, and nothing waits behind it.

/// Whether this task runs on a multi-threaded runtime's worker, where
/// [`tokio::task::block_in_place`] can hand the worker's queue to another thread (on a
/// current-thread runtime it would panic).
pub fn on_worker_pool() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|runtime| runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// Nanoseconds on one monotonic clock since its first reading: what work that may hold
/// its thread is timed by (a guest's stretches between yields, a SQLite statement's run),
/// as a number an atomic can hold.
pub fn now_ns() -> u64 {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(std::time::Instant::now);
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Runs `work` after handing this worker's queue to another thread when on the
/// multi-threaded runtime; anywhere else (a current-thread runtime, a plain thread, work
/// already handed over) it just runs.
pub fn hand_over<R>(work: impl FnOnce() -> R) -> R {
    if on_worker_pool() {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Work already handed over (a marked guest's call, run with `Handle::block_on` on its
    /// own thread) may hand over again (its SQLite write): it just runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn handed_over_work_may_hand_over_again() -> anyhow::Result<()> {
        let answer = tokio::spawn(async {
            hand_over(|| {
                tokio::runtime::Handle::current()
                    .block_on(async { hand_over(|| on_worker_pool().then_some(42)) })
            })
        })
        .await?;
        assert_eq!(answer, Some(42));
        Ok(())
    }

    #[tokio::test]
    async fn on_a_current_thread_runtime_work_just_runs() {
        assert!(!on_worker_pool());
        assert_eq!(hand_over(|| 7), 7);
    }
}
