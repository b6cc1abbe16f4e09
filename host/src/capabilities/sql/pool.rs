//! The serving connections of one data set.
//!
//! Not sqlx's `Pool`, for one reason: its `PoolConnection` pings every connection on
//! the way back to the pool, whatever happened to it — a second round trip per statement
//! on PostgreSQL and a second hop to the connection's worker thread on SQLite (issue 14:
//! `users/me` gained 11% on both backends without it). That ping guards against a
//! connection left mid-statement by a cancelled future; this pool knows instead: a
//! connection goes back only after its caller [settled](PooledConnection::settle) it with
//! a statement that completed (successfully or with an error from the database itself).
//! One dropped mid-statement — the request timed out, the client went away — or that
//! failed below SQL (I/O, protocol) is closed. A connection idle for longer than
//! [`TRUST_IDLE_FOR`] is pinged before it is handed out, as HikariCP does.
//!
//! Connections are opened on demand up to the pool's size; callers beyond it wait in
//! arrival order, at most [`ACQUIRE_TIMEOUT`] (then [`Pooled::timed_out`], answered
//! `unavailable`). It pools sqlx's PostgreSQL connections and the host's own SQLite ones
//! alike ([`Pooled`]); PostgreSQL's administrative and migration connections stay on sqlx.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::BoxFuture;
use crate::telemetry::metrics::Metrics;

/// How long a statement waits for a connection (queueing and connecting) before it is
/// answered `unavailable`.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// A connection idle for longer than this is pinged before it is handed out; one used
/// more recently is trusted. Pinging every checkout cost PostgreSQL a round trip per
/// statement (issue 14: +15–25% on `users/me` without it).
pub const TRUST_IDLE_FOR: Duration = Duration::from_secs(1);

/// Opens one connection, ready to serve (session settings, authorizer and clock
/// installed).
pub type Connector<C> =
    Arc<dyn Fn() -> BoxFuture<'static, Result<C, <C as Pooled>::Error>> + Send + Sync>;

/// What the pool needs of a connection type.
pub trait Pooled: Send + Sized + 'static {
    type Error: Send;

    /// Whether the connection still answers (asked of one idle past [`TRUST_IDLE_FOR`]).
    fn ping(&mut self) -> BoxFuture<'_, Result<(), Self::Error>>;

    /// Whether, after this error, the connection finished its statement and is ready for
    /// the next (a constraint, a syntax error, a timeout the server enforced); after any
    /// other failure its state is unknown and it is closed.
    fn ready_after(err: &Self::Error) -> bool;

    /// The error of a caller that waited [`ACQUIRE_TIMEOUT`].
    fn timed_out() -> Self::Error;

    /// The error of a caller whose pool was closed.
    fn closed() -> Self::Error;
}

impl Pooled for sqlx::PgConnection {
    type Error = sqlx::Error;

    fn ping(&mut self) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        sqlx::Connection::ping(self)
    }

    fn ready_after(err: &sqlx::Error) -> bool {
        matches!(
            err,
            sqlx::Error::Database(_)
                | sqlx::Error::RowNotFound
                | sqlx::Error::ColumnNotFound(_)
                | sqlx::Error::ColumnIndexOutOfBounds { .. }
                | sqlx::Error::ColumnDecode { .. }
                | sqlx::Error::TypeNotFound { .. }
                | sqlx::Error::Encode(_)
        )
    }

    fn timed_out() -> sqlx::Error {
        sqlx::Error::PoolTimedOut
    }

    fn closed() -> sqlx::Error {
        sqlx::Error::PoolClosed
    }
}

/// When connections are replaced (PostgreSQL: server-side state and memory do not grow
/// without bound; a replica fail-over is picked up). `None`: kept for the pool's life.
#[derive(Debug, Clone, Copy)]
pub struct Recycle {
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
}

impl Recycle {
    /// sqlx's own defaults.
    pub const DEFAULT: Self = Self {
        idle_timeout: Duration::from_secs(10 * 60),
        max_lifetime: Duration::from_secs(30 * 60),
    };
}

pub struct Pool<C: Pooled> {
    shared: Arc<Shared<C>>,
}

impl<C: Pooled> Clone for Pool<C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<C: Pooled> std::fmt::Debug for Pool<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("max_connections", &self.shared.max_connections)
            .field("idle", &self.shared.idle().len())
            .field("recycle", &self.shared.recycle)
            .finish_non_exhaustive()
    }
}

/// A pool's series in `plinth_db_pool_connections` and `plinth_db_pool_waits_total`.
#[derive(Debug, Clone)]
pub struct PoolStats {
    pub open: IntGauge,
    pub idle: IntGauge,
    pub waits: IntCounter,
}

/// The metric families pools report to.
#[derive(Debug, Clone)]
pub struct PoolStatsFamilies {
    connections: IntGaugeVec,
    waits: IntCounterVec,
}

impl PoolStatsFamilies {
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            connections: metrics.db_pool_connections.clone(),
            waits: metrics.db_pool_waits.clone(),
        }
    }

    /// The series of pool `pool` (`serving`, `transactions`, `primary`, `read`) of
    /// `data_set`.
    pub fn of(&self, data_set: &str, pool: &str) -> PoolStats {
        let connections = |state| self.connections.with_label_values(&[data_set, pool, state]);
        PoolStats {
            open: connections("open"),
            idle: connections("idle"),
            waits: self.waits.with_label_values(&[data_set, pool]),
        }
    }
}

struct Shared<C: Pooled> {
    /// Most recently returned last: handed out first, so the rest can age out.
    idle: Mutex<Vec<Idle<C>>>,
    /// One permit per connection that may exist.
    permits: Arc<Semaphore>,
    max_connections: usize,
    connect: Connector<C>,
    recycle: Option<Recycle>,
    stats: Option<PoolStats>,
}

impl<C: Pooled> Shared<C> {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle<C>>> {
        // Nothing panics while holding it; a poisoned list is still a valid list.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn count(&self, what: impl Fn(&PoolStats)) {
        if let Some(stats) = &self.stats {
            what(stats);
        }
    }

    fn expired(&self, opened: Instant, idle_since: Instant) -> bool {
        self.recycle.is_some_and(|recycle| {
            opened.elapsed() > recycle.max_lifetime || idle_since.elapsed() > recycle.idle_timeout
        })
    }
}

struct Idle<C> {
    conn: C,
    opened: Instant,
    since: Instant,
}

impl<C: Pooled> Pool<C> {
    pub fn new(
        max_connections: u32,
        recycle: Option<Recycle>,
        connect: Connector<C>,
        stats: Option<PoolStats>,
    ) -> Self {
        let max_connections = max_connections.max(1) as usize;
        Self {
            shared: Arc::new(Shared {
                idle: Mutex::new(Vec::with_capacity(max_connections)),
                permits: Arc::new(Semaphore::new(max_connections)),
                max_connections,
                connect,
                recycle,
                stats,
            }),
        }
    }

    /// A connection: an idle one if there is one (pinged first if it idled for long), a
    /// new one if the pool is not full, else the next one returned.
    pub async fn acquire(&self) -> Result<PooledConnection<C>, C::Error> {
        tokio::time::timeout(ACQUIRE_TIMEOUT, self.acquire_unbounded())
            .await
            .map_err(|_| C::timed_out())?
    }

    async fn acquire_unbounded(&self) -> Result<PooledConnection<C>, C::Error> {
        let permit = match self.shared.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                self.shared.count(|stats| stats.waits.inc());
                self.shared
                    .permits
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| C::closed())?
            }
        };
        loop {
            let Some(idle) = self.shared.idle().pop() else {
                break;
            };
            self.shared.count(|stats| stats.idle.dec());
            let (opened, since) = (idle.opened, idle.since);
            // Counted as open until leased: dropped here (expired, failed its ping, or the
            // acquire timed out during the ping), it is closed and uncounted.
            let mut conn = Counted {
                conn: Some(idle.conn),
                shared: &self.shared,
            };
            if self.shared.expired(opened, since) {
                continue;
            }
            if since.elapsed() > TRUST_IDLE_FOR && conn.get().ping().await.is_err() {
                continue;
            }
            return Ok(self.lease(conn.into_inner(), opened, permit));
        }
        let conn = (self.shared.connect)().await?;
        self.shared.count(|stats| stats.open.inc());
        Ok(self.lease(conn, Instant::now(), permit))
    }

    fn lease(&self, conn: C, opened: Instant, permit: OwnedSemaphorePermit) -> PooledConnection<C> {
        PooledConnection {
            conn: Some(conn),
            opened,
            settled: false,
            shared: self.shared.clone(),
            _permit: permit,
        }
    }
}

/// A pooled connection between the idle list and a lease.
struct Counted<'a, C: Pooled> {
    conn: Option<C>,
    shared: &'a Shared<C>,
}

impl<C: Pooled> Counted<'_, C> {
    fn get(&mut self) -> &mut C {
        self.conn.as_mut().expect("present until taken")
    }

    fn into_inner(mut self) -> C {
        self.conn.take().expect("present until taken")
    }
}

impl<C: Pooled> Drop for Counted<'_, C> {
    fn drop(&mut self) {
        if self.conn.take().is_some() {
            self.shared.count(|stats| stats.open.dec());
        }
    }
}

/// A connection out of its pool. Dropped, it goes back only if [`settle`](Self::settle)
/// said its last statement completed; otherwise it is closed.
pub struct PooledConnection<C: Pooled> {
    conn: Option<C>,
    opened: Instant,
    settled: bool,
    shared: Arc<Shared<C>>,
    _permit: OwnedSemaphorePermit,
}

impl<C: Pooled> std::fmt::Debug for PooledConnection<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledConnection")
            .field("settled", &self.settled)
            .finish_non_exhaustive()
    }
}

impl<C: Pooled> PooledConnection<C> {
    /// Records how the statement just run on this connection ended, and passes the result
    /// on: the connection stays reusable after a statement that completed, or failed in the
    /// database (a constraint, a syntax error, a timeout the server enforced); any other
    /// failure leaves its state unknown.
    pub fn settle<T>(&mut self, result: Result<T, C::Error>) -> Result<T, C::Error> {
        self.settled = match &result {
            Ok(_) => true,
            Err(err) => C::ready_after(err),
        };
        result
    }

    /// Returns a connection on which nothing ran since it was handed out.
    pub fn release_unused(mut self) {
        self.settled = true;
    }
}

impl<C: Pooled> std::ops::Deref for PooledConnection<C> {
    type Target = C;

    fn deref(&self) -> &C {
        self.conn.as_ref().expect("present until dropped")
    }
}

impl<C: Pooled> std::ops::DerefMut for PooledConnection<C> {
    fn deref_mut(&mut self) -> &mut C {
        self.conn.as_mut().expect("present until dropped")
    }
}

impl<C: Pooled> Drop for PooledConnection<C> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if !self.settled {
            // Dropped, a connection closes (its socket, or its SQLite handle).
            self.shared.count(|stats| stats.open.dec());
            return;
        }
        let mut idle = self.shared.idle();
        idle.push(Idle {
            conn,
            opened: self.opened,
            since: Instant::now(),
        });
        self.shared.count(|stats| stats.idle.inc());
        // The least recently used connection ages out here rather than by a timer task.
        if idle
            .first()
            .is_some_and(|oldest| self.shared.expired(oldest.opened, oldest.since))
        {
            let oldest = idle.remove(0);
            drop(idle);
            drop(oldest);
            self.shared.count(|stats| {
                stats.idle.dec();
                stats.open.dec();
            });
        }
        // The permit is released after the connection is back (field order).
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use std::path::Path;

    use crate::capabilities::sql::sqlite::{SERVING, SqliteConn, SqliteError};
    use crate::telemetry::metrics::Metrics;

    use super::*;

    /// A pool of in-memory SQLite connections that counts how many it opened.
    fn counting_pool(max: u32) -> (Pool<SqliteConn>, Arc<AtomicUsize>) {
        in_memory_pool(max, None, None)
    }

    /// Like [`counting_pool`], with recycling and metrics as given.
    fn in_memory_pool(
        max: u32,
        recycle: Option<Recycle>,
        stats: Option<PoolStats>,
    ) -> (Pool<SqliteConn>, Arc<AtomicUsize>) {
        let opened = Arc::new(AtomicUsize::new(0));
        let counter = opened.clone();
        let pool = Pool::new(
            max,
            recycle,
            Arc::new(move || {
                let counter = counter.clone();
                Box::pin(async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    SqliteConn::open(Path::new(":memory:"), &SERVING, Duration::from_secs(1))
                })
            }),
            stats,
        );
        (pool, opened)
    }

    async fn select_one(conn: &mut PooledConnection<SqliteConn>) -> Result<(), SqliteError> {
        let done = conn.query("SELECT 1", &[]).map(drop);
        conn.settle(done)
    }

    #[tokio::test]
    async fn a_settled_connection_is_reused_without_a_ping() -> anyhow::Result<()> {
        let (pool, opened) = counting_pool(4);
        for _ in 0..5 {
            let mut conn = pool.acquire().await?;
            select_one(&mut conn).await?;
        }
        assert_eq!(opened.load(Ordering::SeqCst), 1);
        Ok(())
    }

    #[tokio::test]
    async fn a_database_error_keeps_the_connection() -> anyhow::Result<()> {
        let (pool, opened) = counting_pool(4);
        let mut conn = pool.acquire().await?;
        let failed = conn.query("SELECT * FROM missing", &[]);
        assert!(matches!(conn.settle(failed), Err(SqliteError::Sqlite(_))));
        drop(conn);
        select_one(&mut pool.acquire().await?).await?;
        assert_eq!(opened.load(Ordering::SeqCst), 1);
        Ok(())
    }

    #[tokio::test]
    async fn a_connection_never_settled_is_closed() -> anyhow::Result<()> {
        let (pool, opened) = counting_pool(4);
        // Handed out, then dropped before its statement settled (a cancelled request, a
        // transaction whose holder vanished).
        let mut conn = pool.acquire().await?;
        conn.query("SELECT 1", &[])?;
        drop(conn);
        select_one(&mut pool.acquire().await?).await?;
        assert_eq!(opened.load(Ordering::SeqCst), 2);
        Ok(())
    }

    #[tokio::test]
    async fn a_full_pool_hands_the_next_returned_connection_to_the_waiter() -> anyhow::Result<()> {
        let (pool, opened) = counting_pool(1);
        let mut held = pool.acquire().await?;
        let waiter = tokio::spawn({
            let pool = pool.clone();
            async move {
                let mut conn = pool.acquire().await?;
                select_one(&mut conn).await
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "the pool holds one connection");
        select_one(&mut held).await?;
        drop(held);
        waiter.await??;
        assert_eq!(opened.load(Ordering::SeqCst), 1);
        Ok(())
    }

    #[tokio::test]
    async fn waiting_past_the_acquire_timeout_is_pool_timed_out() -> anyhow::Result<()> {
        let (pool, _) = counting_pool(1);
        let _held = pool.acquire().await?;
        let started = Instant::now();
        let waited = pool.acquire().await;
        assert!(
            matches!(waited, Err(SqliteError::PoolTimedOut)),
            "{waited:?}"
        );
        assert!(started.elapsed() >= ACQUIRE_TIMEOUT);
        Ok(())
    }

    #[tokio::test]
    async fn the_pool_reports_open_and_idle_connections_and_waits() -> anyhow::Result<()> {
        let metrics = Metrics::new(false)?;
        let stats = PoolStatsFamilies::new(&metrics).of("d", "serving");
        let (pool, opened) = in_memory_pool(1, None, Some(stats.clone()));
        let mut conn = pool.acquire().await?;
        assert_eq!((stats.open.get(), stats.idle.get()), (1, 0));
        select_one(&mut conn).await?;
        let waiter = tokio::spawn({
            let pool = pool.clone();
            async move { pool.acquire().await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(stats.waits.get(), 1);
        drop(conn);
        waiter.await??;
        // The waiter took the connection and dropped it unsettled: closed.
        assert_eq!((stats.open.get(), stats.idle.get()), (0, 0));
        select_one(&mut pool.acquire().await?).await?;
        assert_eq!((stats.open.get(), stats.idle.get()), (1, 1));
        assert_eq!(
            opened.load(Ordering::SeqCst),
            2,
            "the closed one was replaced"
        );
        Ok(())
    }

    #[tokio::test]
    async fn expired_connections_are_replaced() -> anyhow::Result<()> {
        let recycle = Recycle {
            idle_timeout: Duration::from_millis(30),
            max_lifetime: Duration::from_secs(60),
        };
        let (pool, opened) = in_memory_pool(2, Some(recycle), None);
        select_one(&mut pool.acquire().await?).await?;
        select_one(&mut pool.acquire().await?).await?;
        assert_eq!(opened.load(Ordering::SeqCst), 1);
        std::thread::sleep(Duration::from_millis(60));
        select_one(&mut pool.acquire().await?).await?;
        assert_eq!(opened.load(Ordering::SeqCst), 2);
        Ok(())
    }
}
