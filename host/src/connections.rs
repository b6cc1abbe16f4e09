//! Limits on client connections, so slow or idle clients cannot hold sockets forever:
//! a header-read timeout (hyper's), a body-read deadline (`pipeline::read_body`, 408), an
//! idle timeout, and a cap on open connections beyond which clients get a clear 503.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::pipeline::{self, AppState};

/// The connection limits, from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Time allowed for a request's headers (`HEADER_READ_TIMEOUT_SECONDS`). For HTTP/1.1
    /// hyper starts it as soon as a connection waits for a request, kept-alive ones included.
    pub header_read_timeout: Duration,
    /// Time allowed for a request's whole body once its headers arrived
    /// (`BODY_READ_TIMEOUT_SECONDS`): 408 beyond it.
    pub body_read_timeout: Duration,
    /// A connection with no request in flight and nothing written for this long is closed
    /// (`IDLE_TIMEOUT_SECONDS`); covers HTTP/2 and clients that never send a byte.
    pub idle_timeout: Duration,
    /// Open connections at most (`MAX_CONNECTIONS`); more are answered 503 and closed.
    pub max_connections: usize,
}

/// How long a refused connection may take to send its request and read the 503.
const REFUSAL_TIME: Duration = Duration::from_secs(2);
/// Refusals answered at once; beyond this a connection over the cap is closed unanswered,
/// so a flood cannot turn refusals themselves into held sockets.
const MAX_REFUSALS_IN_PROGRESS: usize = 64;
/// At most one "connection limit reached" warning per this period (the log must not become
/// the bottleneck during a flood).
const WARN_EVERY: Duration = Duration::from_secs(5);

/// Admission of new connections under `MAX_CONNECTIONS`.
#[derive(Debug)]
pub struct ConnectionGate {
    open: Arc<Semaphore>,
    refusing: Arc<Semaphore>,
    max_connections: usize,
    refused: AtomicU64,
    /// When the last "limit reached" warning was logged.
    warned_at: Mutex<Option<Instant>>,
}

/// What to do with a freshly accepted connection.
#[derive(Debug)]
pub enum Admission {
    /// Serve it; the permit is its place under the cap until it closes.
    Serve(OwnedSemaphorePermit),
    /// Answer 503 and close it.
    Refuse(OwnedSemaphorePermit),
    /// Close it at once: too many refusals are already in progress.
    Drop,
}

impl ConnectionGate {
    pub fn new(max_connections: usize) -> Self {
        Self {
            open: Arc::new(Semaphore::new(max_connections)),
            refusing: Arc::new(Semaphore::new(MAX_REFUSALS_IN_PROGRESS)),
            max_connections,
            refused: AtomicU64::new(0),
            warned_at: Mutex::new(None),
        }
    }

    pub fn admit(&self) -> Admission {
        if let Ok(permit) = self.open.clone().try_acquire_owned() {
            return Admission::Serve(permit);
        }
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut warned_at) = self.warned_at.try_lock()
            && warned_at.is_none_or(|at| at.elapsed() >= WARN_EVERY)
        {
            *warned_at = Some(Instant::now());
            tracing::warn!(
                max_connections = self.max_connections,
                refused_so_far = refused,
                "connection limit reached: refusing new connections (MAX_CONNECTIONS)"
            );
        }
        match self.refusing.clone().try_acquire_owned() {
            Ok(permit) => Admission::Refuse(permit),
            Err(_) => Admission::Drop,
        }
    }
}

/// Answers every request of an over-the-cap connection with 503 (`Connection: close`),
/// within [`REFUSAL_TIME`]. HTTP/1 only: a client speaking HTTP/2 gets the connection closed.
pub async fn refuse(stream: TcpStream, peer: SocketAddr, state: Arc<AppState>) {
    let service = service_fn(move |request| {
        let response = pipeline::refuse_connection(&state, &request, peer);
        async move { Ok::<_, Infallible>(response) }
    });
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(REFUSAL_TIME)
        .keep_alive(false);
    let connection = http1.serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(REFUSAL_TIME, connection).await;
}

/// What a connection is doing, for the idle timeout: requests in flight and the last time
/// one finished or a byte was written.
#[derive(Debug)]
pub struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds since `started`.
    last_active_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(0),
        }
    }
}

impl Activity {
    fn touch(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_active_ms.fetch_max(now, Ordering::Relaxed);
    }

    fn last_active(&self) -> Instant {
        self.started + Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed))
    }

    /// Marks a request in flight until the returned guard is dropped (also when the
    /// request is abandoned).
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Completes once the connection has had no request in flight and written nothing for
    /// `limit`.
    pub async fn idle_for(&self, limit: Duration) {
        loop {
            let quiet_until = self.last_active() + limit;
            if Instant::now() < quiet_until {
                tokio::time::sleep_until(quiet_until.into()).await;
            } else if self.in_flight.load(Ordering::Relaxed) == 0 {
                return;
            } else {
                // A request in flight is not idleness, however long it runs: look again later.
                tokio::time::sleep(limit).await;
            }
        }
    }
}

/// A request in flight on a connection; see [`Activity::request`].
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client socket that records when bytes were written to it, so a slow but progressing
/// download is not mistaken for an idle connection.
#[derive(Debug)]
pub struct TrackedStream {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl TrackedStream {
    pub fn new(inner: TcpStream, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }

    fn wrote(&self, result: &Poll<io::Result<usize>>) {
        if matches!(result, Poll::Ready(Ok(n)) if *n > 0) {
            self.activity.touch();
        }
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
