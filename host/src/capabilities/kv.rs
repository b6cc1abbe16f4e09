//! `kv`: a key-value store, in-process by default and Redis when `REDIS_URL` is set.
//!
//! The host confines each plugin to its own namespace (`<prefix>:kv:<plugin>:<key>`), so
//! plugin A can never read plugin B's keys. The host's own state (token revocation, rate
//! limits) lives in other namespaces of the same store, so every host instance sharing a
//! Redis sees it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwapOption;
use futures_core::Stream as _;
use prometheus::IntCounterVec;
use redis::aio::MultiplexedConnection;
use wasmtime::component::{HasSelf, Linker};

use super::{CapabilityView, Descriptor};
use crate::bindings::plinth::plugin::kv::{self as wit, Error};
use crate::telemetry::metrics::HostCalls;

pub fn descriptor<T: CapabilityView>() -> Descriptor<T> {
    Descriptor {
        interface: "kv",
        granted: |grants| grants.kv,
        link: |linker: &mut Linker<T>| {
            wit::add_to_linker::<T, HasSelf<KvInstance>>(linker, |state| {
                &mut state.capabilities().kv
            })
        },
    }
}

/// Longest time-to-live a plugin may set (a year): longer ones are refused as `invalid`
/// instead of overflowing a clock.
const MAX_TTL_MS: u64 = 365 * 24 * 3600 * 1000;

/// Longest key and value a plugin may store.
const MAX_KEY_BYTES: usize = 512;
const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// How long a Redis command may take, connecting included, before the store counts as
/// unavailable (and the connection it was sent on is given up, see [`RedisStore`]).
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a store operation failed (host-side; plugins see the WIT `error`).
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("key-value store unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Invalid(String),
}

impl From<KvError> for Error {
    fn from(err: KvError) -> Self {
        match err {
            KvError::Unavailable(_) => Error::Unavailable,
            KvError::Invalid(msg) => Error::Invalid(msg),
        }
    }
}

/// The store shared by all plugins and host services.
#[derive(Clone)]
pub enum KvStore {
    Memory(Arc<MemoryStore>),
    Redis(RedisStore),
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Memory(_) => "KvStore::Memory",
            Self::Redis(_) => "KvStore::Redis",
        })
    }
}

impl KvStore {
    /// A fresh in-process store.
    pub fn in_process() -> Self {
        Self::Memory(Arc::new(MemoryStore::default()))
    }

    /// The in-process store, or Redis at `url`. Redis must answer at start-up; after that a
    /// lost connection is replaced by the next command (see [`RedisStore`]).
    /// `errors`: `plinth_redis_errors_total`, counted by reason.
    pub async fn connect(url: Option<&str>, errors: IntCounterVec) -> anyhow::Result<Self> {
        let Some(url) = url else {
            return Ok(Self::in_process());
        };
        let client = redis::Client::open(url).context("REDIS_URL is not a valid Redis URL")?;
        Ok(Self::Redis(RedisStore::open(client, errors).await?))
    }

    pub fn is_redis(&self) -> bool {
        matches!(self, Self::Redis(_))
    }

    pub async fn ping(&self) -> Result<(), KvError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Redis(remote) => {
                remote.query::<String>(&redis::cmd("PING")).await?;
                Ok(())
            }
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        match self {
            Self::Memory(store) => Ok(store.get(key)),
            Self::Redis(remote) => remote.query(redis::cmd("GET").arg(key)).await,
        }
    }

    /// Several keys in one round trip.
    pub async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        match self {
            Self::Memory(store) => Ok(keys.iter().map(|k| store.get(k)).collect()),
            Self::Redis(remote) => remote.query(redis::cmd("MGET").arg(keys)).await,
        }
    }

    pub async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), KvError> {
        match self {
            Self::Memory(store) => store.set(key, value, ttl, false).map(|_| ()),
            Self::Redis(remote) => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(key).arg(value);
                if let Some(ttl) = ttl {
                    cmd.arg("PX").arg(ttl_ms(ttl));
                }
                remote.query::<()>(&cmd).await
            }
        }
    }

    /// Sends `payload` to every host subscribed to `channel` (Redis `PUBLISH`). In
    /// process there is no other host to tell: nothing is sent.
    pub async fn publish(&self, channel: &str, payload: &[u8]) -> Result<(), KvError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Redis(remote) => {
                remote
                    .query::<i64>(redis::cmd("PUBLISH").arg(channel).arg(payload))
                    .await?;
                Ok(())
            }
        }
    }

    /// The messages published on `channel` from now on, from a connection of their own
    /// that is reopened (after a second) whenever it fails; `None` in process. The
    /// subscription ends when the receiver is dropped.
    pub fn subscribe(&self, channel: String) -> Option<tokio::sync::mpsc::Receiver<Vec<u8>>> {
        let Self::Redis(remote) = self else {
            return None;
        };
        let client = remote.0.client.clone();
        let (sender, receiver) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            // Said once per outage (and once a minute while it lasts), not every retry.
            let mut failures: u64 = 0;
            while !sender.is_closed() {
                match forward_messages(&client, &channel, &sender).await {
                    Ok(()) => failures = 0,
                    Err(err) => {
                        if failures.is_multiple_of(60) {
                            tracing::warn!(error = %err, %channel, "Redis subscription lost; retrying every second");
                        }
                        failures += 1;
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Some(receiver)
    }

    /// Sets `field` of the hash at `key` and (re)sets the hash's expiry (Redis only; in
    /// process, nothing is stored).
    pub async fn hash_set(
        &self,
        key: &str,
        field: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), KvError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Redis(remote) => {
                let mut pipe = redis::pipe();
                pipe.cmd("HSET").arg(key).arg(field).arg(value).ignore();
                pipe.cmd("PEXPIRE").arg(key).arg(ttl_ms(ttl)).ignore();
                remote
                    .run(|mut conn| async move { pipe.query_async::<()>(&mut conn).await })
                    .await
            }
        }
    }

    /// Every field of the hash at `key` (Redis only; in process, none).
    pub async fn hash_get_all(&self, key: &str) -> Result<Vec<(String, Vec<u8>)>, KvError> {
        match self {
            Self::Memory(_) => Ok(Vec::new()),
            Self::Redis(remote) => remote.query(redis::cmd("HGETALL").arg(key)).await,
        }
    }

    /// Deletes `field` of the hash at `key` (Redis only).
    pub async fn hash_delete(&self, key: &str, field: &str) -> Result<(), KvError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Redis(remote) => {
                remote
                    .query::<i64>(redis::cmd("HDEL").arg(key).arg(field))
                    .await?;
                Ok(())
            }
        }
    }

    pub async fn set_if_absent(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool, KvError> {
        match self {
            Self::Memory(store) => store.set(key, value, ttl, true),
            Self::Redis(remote) => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(key).arg(value).arg("NX");
                if let Some(ttl) = ttl {
                    cmd.arg("PX").arg(ttl_ms(ttl));
                }
                let stored: Option<String> = remote.query(&cmd).await?;
                Ok(stored.is_some())
            }
        }
    }

    pub async fn delete(&self, key: &str) -> Result<bool, KvError> {
        match self {
            Self::Memory(store) => Ok(store.delete(key)),
            Self::Redis(remote) => {
                let removed: i64 = remote.query(redis::cmd("DEL").arg(key)).await?;
                Ok(removed > 0)
            }
        }
    }

    /// Adds `delta` atomically; `ttl` applies when this call creates the key.
    pub async fn increment(
        &self,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, KvError> {
        match self {
            Self::Memory(store) => store.increment(key, delta, ttl),
            Self::Redis(remote) => {
                // One round trip: INCRBY (atomic), then PEXPIRE NX, which sets the expiry
                // only when the key has none, i.e. when this call created it. Cheaper for
                // Redis than a Lua script on this per-request path (rate limiting).
                let mut pipe = redis::pipe();
                pipe.cmd("INCRBY").arg(key).arg(delta);
                if let Some(ttl) = ttl {
                    pipe.cmd("PEXPIRE")
                        .arg(key)
                        .arg(ttl_ms(ttl))
                        .arg("NX")
                        .ignore();
                }
                let (value,): (i64,) = remote
                    .run(|mut conn| async move { pipe.query_async(&mut conn).await })
                    .await?;
                Ok(value)
            }
        }
    }

    /// Replaces the value at `key` only if it is `expected` (`None`: absent); `new` of
    /// `None` deletes it. True when it was replaced.
    pub async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
        ttl: Option<Duration>,
    ) -> Result<bool, KvError> {
        match self {
            Self::Memory(store) => store.compare_and_swap(key, expected, new, ttl),
            Self::Redis(remote) => {
                // EVAL rather than EVALSHA: refreshes are rare, and the script's text is
                // small; it runs atomically either way.
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(COMPARE_AND_SWAP_LUA).arg(1).arg(key);
                match expected {
                    Some(value) => cmd.arg("1").arg(value),
                    None => cmd.arg("0").arg(""),
                };
                match new {
                    Some(value) => cmd.arg("1").arg(value),
                    None => cmd.arg("0").arg(""),
                };
                cmd.arg(ttl.map(ttl_ms).unwrap_or(0));
                let swapped: i64 = remote.query(&cmd).await?;
                Ok(swapped == 1)
            }
        }
    }

    /// Remaining time to live of `key`, if it exists and expires.
    pub async fn ttl(&self, key: &str) -> Result<Option<Duration>, KvError> {
        match self {
            Self::Memory(store) => Ok(store.ttl(key)),
            Self::Redis(remote) => {
                let ms: i64 = remote.query(redis::cmd("PTTL").arg(key)).await?;
                Ok(u64::try_from(ms).ok().map(Duration::from_millis))
            }
        }
    }
}

/// KEYS[1]; ARGV: has-expected, expected, has-new, new, ttl-ms (0: none).
const COMPARE_AND_SWAP_LUA: &str = r"
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
if ARGV[3] == '1' then
  if ARGV[5] ~= '0' then
    redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
  else
    redis.call('SET', KEYS[1], ARGV[4])
  end
else
  redis.call('DEL', KEYS[1])
end
return 1
";

/// Forwards the messages of one subscription until it fails or the receiver is gone.
async fn forward_messages(
    client: &redis::Client,
    channel: &str,
    sender: &tokio::sync::mpsc::Sender<Vec<u8>>,
) -> redis::RedisResult<()> {
    let mut pubsub = tokio::time::timeout(REDIS_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| {
            redis::RedisError::from((redis::ErrorKind::IoError, "connecting timed out"))
        })??;
    pubsub.subscribe(channel).await?;
    let mut messages = pubsub.into_on_message();
    while let Some(message) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut messages).poll_next(cx)).await
    {
        if sender
            .send(message.get_payload_bytes().to_vec())
            .await
            .is_err()
        {
            break;
        }
    }
    Ok(())
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Redis through one multiplexed connection that every caller shares.
///
/// A command that fails without an answer from Redis (an I/O error, or no reply within
/// [`REDIS_TIMEOUT`]) retires the connection it was sent on, and the next command opens a
/// new one. A connection with an overdue reply is never used again: it may be stuck (a
/// path that silently drops packets reports no error for many minutes; redis-rs's
/// `ConnectionManager` reconnects on errors that report a dropped connection but not on
/// timeouts, so behind it every later command timed out as well), and its late replies,
/// if any arrive, go only to the requests already sent on it (the multiplexer matches
/// replies in order), never to a later request. The old connection closes once the
/// requests still waiting on it are done.
#[derive(Clone)]
pub struct RedisStore(Arc<RedisShared>);

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisStore") // the client holds the URL and its password
    }
}

struct RedisShared {
    client: redis::Client,
    /// The connection commands are sent on; `None` once it was retired.
    current: ArcSwapOption<MultiplexedConnection>,
    /// Held while a connection is opened: callers arriving meanwhile wait for that one
    /// rather than each opening their own.
    opening: tokio::sync::Mutex<()>,
    errors: IntCounterVec,
}

impl RedisStore {
    /// Connects once (one retry) at start-up: a host configured for Redis does not start
    /// without it.
    async fn open(client: redis::Client, errors: IntCounterVec) -> anyhow::Result<Self> {
        let store = Self(Arc::new(RedisShared {
            client,
            current: ArcSwapOption::empty(),
            opening: tokio::sync::Mutex::new(()),
            errors,
        }));
        if store.ping_once().await.is_err() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            store
                .ping_once()
                .await
                .context("cannot connect to Redis at REDIS_URL")?;
        }
        Ok(store)
    }

    async fn ping_once(&self) -> Result<(), KvError> {
        self.query::<String>(&redis::cmd("PING")).await.map(|_| ())
    }

    /// The current connection, or a new one.
    async fn connection(&self) -> redis::RedisResult<Arc<MultiplexedConnection>> {
        if let Some(connection) = self.0.current.load_full() {
            return Ok(connection);
        }
        let _opening = self.0.opening.lock().await;
        if let Some(connection) = self.0.current.load_full() {
            return Ok(connection);
        }
        let config = redis::AsyncConnectionConfig::new().set_connection_timeout(REDIS_TIMEOUT);
        let connection = Arc::new(
            self.0
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await?,
        );
        self.0.current.store(Some(connection.clone()));
        Ok(connection)
    }

    fn count_error(&self, reason: &str) {
        self.0.errors.with_label_values(&[reason]).inc();
    }

    /// Stops sending commands on `connection`, unless another caller already replaced it.
    fn retire(&self, connection: &Arc<MultiplexedConnection>) {
        self.0
            .current
            .compare_and_swap(connection, None::<Arc<MultiplexedConnection>>);
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, KvError> {
        self.run(|mut conn| async move { cmd.query_async(&mut conn).await })
            .await
    }

    /// Runs `call` on the current connection within [`REDIS_TIMEOUT`], connecting included.
    async fn run<T, F>(&self, call: impl FnOnce(MultiplexedConnection) -> F) -> Result<T, KvError>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let deadline = tokio::time::Instant::now() + REDIS_TIMEOUT;
        let connection = match tokio::time::timeout_at(deadline, self.connection()).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(err)) => {
                self.count_error("connect");
                return Err(KvError::Unavailable(err.to_string()));
            }
            Err(_) => {
                self.count_error("connect");
                return Err(KvError::Unavailable(
                    "Redis did not accept a connection in time".into(),
                ));
            }
        };
        match tokio::time::timeout_at(deadline, call(MultiplexedConnection::clone(&connection)))
            .await
        {
            Ok(Ok(value)) => Ok(value),
            // Redis answered, refusing the command or with another type: the connection
            // is fine.
            Ok(Err(err))
                if err.kind() == redis::ErrorKind::TypeError
                    || err.kind() == redis::ErrorKind::ResponseError =>
            {
                Err(KvError::Invalid(err.to_string()))
            }
            Ok(Err(err)) => {
                self.count_error("connection");
                self.retire(&connection);
                Err(KvError::Unavailable(err.to_string()))
            }
            Err(_) => {
                self.count_error("timeout");
                self.retire(&connection);
                Err(KvError::Unavailable("Redis did not answer in time".into()))
            }
        }
    }
}

/// Most the in-process store holds, counting keys, values and [`ENTRY_OVERHEAD_BYTES`] per
/// entry. Beyond it a new key is refused as `Unavailable` (plugins and the host then answer
/// 503) rather than evicting one: evicting could forget a revoked token.
pub const MEMORY_STORE_MAX_BYTES: usize = 64 * 1024 * 1024;
/// What one entry costs besides its key and value (map slot, allocations, expiry).
const ENTRY_OVERHEAD_BYTES: usize = 64;
/// Expired entries are swept at most this often (and whenever the store is full), so keys
/// that are never read again (rate-limit windows, counters) do not pile up.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// The shortest gap between two sweeps made because the store was full.
const FULL_SWEEP_GAP: Duration = Duration::from_millis(100);

/// The in-process store: a map with expiry, swept periodically and bounded in size.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    entries: HashMap<String, Entry>,
    /// Sum of [`Entry::cost`] over `entries`.
    used_bytes: usize,
    last_sweep: Option<Instant>,
}

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    expires_at: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|t| t > now)
    }

    fn cost(key: &str, value: &[u8]) -> usize {
        key.len() + value.len() + ENTRY_OVERHEAD_BYTES
    }
}

impl MemoryState {
    fn live(&self, key: &str, now: Instant) -> Option<&Entry> {
        self.entries.get(key).filter(|e| e.live(now))
    }

    fn sweep(&mut self, now: Instant) {
        let mut freed = 0;
        self.entries.retain(|key, entry| {
            let live = entry.live(now);
            if !live {
                freed += Entry::cost(key, &entry.value);
            }
            live
        });
        self.used_bytes -= freed;
        self.last_sweep = Some(now);
    }

    fn swept_within(&self, period: Duration, now: Instant) -> bool {
        self.last_sweep
            .is_some_and(|at| now.duration_since(at) < period)
    }

    fn has_room(&self, key: &str, entry: &Entry) -> bool {
        let replaced = self
            .entries
            .get(key)
            .map_or(0, |old| Entry::cost(key, &old.value));
        self.used_bytes - replaced + Entry::cost(key, &entry.value) <= MEMORY_STORE_MAX_BYTES
    }

    /// Stores `entry` under `key` if the store has room for it, sweeping first when due.
    fn insert(&mut self, key: &str, entry: Entry, now: Instant) -> Result<(), KvError> {
        if !self.swept_within(SWEEP_INTERVAL, now) {
            self.sweep(now);
        }
        // When full, expired entries may make room; but sweep at most every FULL_SWEEP_GAP,
        // so writes against a store full of live keys do not each pay a whole sweep.
        if !self.has_room(key, &entry) && !self.swept_within(FULL_SWEEP_GAP, now) {
            self.sweep(now);
        }
        if !self.has_room(key, &entry) {
            return Err(KvError::Unavailable(format!(
                "the in-process store is full ({MEMORY_STORE_MAX_BYTES} bytes)"
            )));
        }
        let cost = Entry::cost(key, &entry.value);
        // In place when the key exists: counters are rewritten on every request.
        let old = match self.entries.get_mut(key) {
            Some(existing) => Some(std::mem::replace(existing, entry)),
            None => self.entries.insert(key.to_owned(), entry),
        };
        if let Some(old) = old {
            self.used_bytes -= Entry::cost(key, &old.value);
        }
        self.used_bytes += cost;
        Ok(())
    }
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // A panic while holding the lock cannot leave an entry half-written: recover.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let now = Instant::now();
        self.lock().live(key, now).map(|e| e.value.clone())
    }

    fn ttl(&self, key: &str) -> Option<Duration> {
        let now = Instant::now();
        self.lock()
            .live(key, now)
            .and_then(|e| e.expires_at)
            .map(|t| t - now)
    }

    /// Stores the value; with `only_if_absent`, only when no live entry exists.
    fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        only_if_absent: bool,
    ) -> Result<bool, KvError> {
        let now = Instant::now();
        let mut state = self.lock();
        if only_if_absent && state.live(key, now).is_some() {
            return Ok(false);
        }
        let entry = Entry {
            value: value.to_vec(),
            expires_at: ttl.map(|t| now + t),
        };
        state.insert(key, entry, now)?;
        Ok(true)
    }

    fn delete(&self, key: &str) -> bool {
        let now = Instant::now();
        let mut state = self.lock();
        match state.entries.remove(key) {
            Some(old) => {
                state.used_bytes -= Entry::cost(key, &old.value);
                old.live(now)
            }
            None => false,
        }
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
        ttl: Option<Duration>,
    ) -> Result<bool, KvError> {
        let now = Instant::now();
        let mut state = self.lock();
        if state.live(key, now).map(|e| e.value.as_slice()) != expected {
            return Ok(false);
        }
        match new {
            Some(value) => {
                let entry = Entry {
                    value: value.to_vec(),
                    expires_at: ttl.map(|t| now + t),
                };
                state.insert(key, entry, now)?;
            }
            None => {
                if let Some(old) = state.entries.remove(key) {
                    state.used_bytes -= Entry::cost(key, &old.value);
                }
            }
        }
        Ok(true)
    }

    fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        let now = Instant::now();
        let mut state = self.lock();
        let current = match state.live(key, now) {
            Some(entry) => Some((
                std::str::from_utf8(&entry.value)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .ok_or_else(|| KvError::Invalid("value is not an integer".into()))?,
                entry.expires_at,
            )),
            None => None,
        };
        let (value, expires_at) = match current {
            Some((value, expires_at)) => (value, expires_at),
            None => (0, ttl.map(|t| now + t)),
        };
        let next = value
            .checked_add(delta)
            .ok_or_else(|| KvError::Invalid("increment would overflow".into()))?;
        let entry = Entry {
            value: next.to_string().into_bytes(),
            expires_at,
        };
        state.insert(key, entry, now)?;
        Ok(next)
    }
}

/// The namespaced key for a plugin's `key`.
pub fn plugin_key(prefix: &str, plugin: &str, key: &str) -> String {
    format!("{prefix}:kv:{plugin}:{key}")
}

fn check_key(key: &str) -> Result<(), Error> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(Error::Invalid(format!(
            "keys must be 1 to {MAX_KEY_BYTES} bytes"
        )));
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), Error> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(Error::Invalid(format!(
            "values must be at most {MAX_VALUE_BYTES} bytes"
        )));
    }
    Ok(())
}

/// A plugin's namespace in the store.
#[derive(Debug, Clone)]
pub struct PluginKv {
    store: KvStore,
    /// `<prefix>:kv:<plugin>:`; plugin names cannot contain `:`.
    namespace: Arc<str>,
}

impl PluginKv {
    pub fn new(store: KvStore, key_prefix: &str, plugin: &str) -> Self {
        Self {
            store,
            namespace: Arc::from(plugin_key(key_prefix, plugin, "")),
        }
    }

    fn key(&self, key: &str) -> Result<String, Error> {
        check_key(key)?;
        Ok(format!("{}{key}", self.namespace))
    }
}

/// A request's view of `kv`: the plugin's namespace.
#[derive(Debug)]
pub struct KvInstance {
    kv: Option<PluginKv>,
    calls: HostCalls,
}

impl KvInstance {
    pub fn new(kv: Option<PluginKv>, calls: HostCalls) -> Self {
        Self { kv, calls }
    }

    fn kv(&self) -> wasmtime::Result<&PluginKv> {
        // Unreachable for a plugin: `kv` is linked only when granted.
        self.kv
            .as_ref()
            .ok_or_else(|| wasmtime::Error::msg("kv called without the grant"))
    }
}

fn ttl(ttl_ms: Option<u64>) -> Result<Option<Duration>, Error> {
    match ttl_ms {
        Some(ms) if ms > MAX_TTL_MS => Err(Error::Invalid(format!(
            "ttl-ms must be at most {MAX_TTL_MS} (a year)"
        ))),
        other => Ok(other.map(Duration::from_millis)),
    }
}

impl wit::Host for KvInstance {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        let _timed = self.calls.time("kv", "get");
        let kv = self.kv()?;
        Ok(match kv.key(&key) {
            Ok(key) => kv.store.get(&key).await.map_err(Error::from),
            Err(e) => Err(e),
        })
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let _timed = self.calls.time("kv", "set");
        let kv = self.kv()?;
        let (key, ttl) = match check_value(&value).and_then(|()| Ok((kv.key(&key)?, ttl(ttl_ms)?)))
        {
            Ok(checked) => checked,
            Err(e) => return Ok(Err(e)),
        };
        Ok(kv.store.set(&key, &value, ttl).await.map_err(Error::from))
    }

    async fn set_if_absent(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<bool, Error>> {
        let _timed = self.calls.time("kv", "set-if-absent");
        let kv = self.kv()?;
        let (key, ttl) = match check_value(&value).and_then(|()| Ok((kv.key(&key)?, ttl(ttl_ms)?)))
        {
            Ok(checked) => checked,
            Err(e) => return Ok(Err(e)),
        };
        Ok(kv
            .store
            .set_if_absent(&key, &value, ttl)
            .await
            .map_err(Error::from))
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, Error>> {
        let _timed = self.calls.time("kv", "delete");
        let kv = self.kv()?;
        Ok(match kv.key(&key) {
            Ok(key) => kv.store.delete(&key).await.map_err(Error::from),
            Err(e) => Err(e),
        })
    }

    async fn increment(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<i64, Error>> {
        let _timed = self.calls.time("kv", "increment");
        let kv = self.kv()?;
        let (key, ttl) = match kv.key(&key).and_then(|key| Ok((key, ttl(ttl_ms)?))) {
            Ok(checked) => checked,
            Err(e) => return Ok(Err(e)),
        };
        Ok(kv
            .store
            .increment(&key, delta, ttl)
            .await
            .map_err(Error::from))
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<bool, Error>> {
        let _timed = self.calls.time("kv", "compare-and-swap");
        let kv = self.kv()?;
        Ok(Self::checked_compare_and_swap(kv, &key, expected, new, ttl_ms).await)
    }
}

impl KvInstance {
    async fn checked_compare_and_swap(
        kv: &PluginKv,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
        ttl_ms: Option<u64>,
    ) -> Result<bool, Error> {
        if let Some(value) = &new {
            check_value(value)?;
        }
        let key = kv.key(key)?;
        let ttl = ttl(ttl_ms)?;
        Ok(kv
            .store
            .compare_and_swap(&key, expected.as_deref(), new.as_deref(), ttl)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_semantics() -> anyhow::Result<()> {
        let kv = KvStore::in_process();
        assert_eq!(kv.get("a").await?, None);
        assert!(kv.set_if_absent("a", b"1", None).await?);
        assert!(!kv.set_if_absent("a", b"2", None).await?);
        assert_eq!(kv.get("a").await?, Some(b"1".to_vec()));
        assert_eq!(kv.increment("a", 5, None).await?, 6);
        assert!(kv.delete("a").await?);
        assert!(!kv.delete("a").await?);
        kv.set("t", b"x", Some(Duration::from_millis(30))).await?;
        assert!(kv.ttl("t").await?.is_some());
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(kv.get("t").await?, None);
        assert!(kv.set_if_absent("t", b"y", None).await?);
        kv.set("s", b"text", None).await?;
        assert!(matches!(
            kv.increment("s", 1, None).await,
            Err(KvError::Invalid(_))
        ));
        Ok(())
    }

    #[tokio::test]
    async fn compare_and_swap_changes_only_the_expected_value() -> anyhow::Result<()> {
        let kv = KvStore::in_process();
        assert!(
            !kv.compare_and_swap("k", Some(b"a"), Some(b"b"), None)
                .await?
        );
        assert!(kv.compare_and_swap("k", None, Some(b"a"), None).await?);
        assert!(!kv.compare_and_swap("k", None, Some(b"x"), None).await?);
        assert!(
            !kv.compare_and_swap("k", Some(b"b"), Some(b"x"), None)
                .await?
        );
        assert!(
            kv.compare_and_swap("k", Some(b"a"), Some(b"b"), None)
                .await?
        );
        assert_eq!(kv.get("k").await?, Some(b"b".to_vec()));
        assert!(kv.compare_and_swap("k", Some(b"b"), None, None).await?);
        assert_eq!(kv.get("k").await?, None);
        // An expired value counts as absent.
        kv.set("t", b"a", Some(Duration::from_millis(10))).await?;
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(
            !kv.compare_and_swap("t", Some(b"a"), Some(b"b"), None)
                .await?
        );
        assert!(kv.compare_and_swap("t", None, Some(b"b"), None).await?);
        Ok(())
    }

    #[test]
    fn the_memory_store_is_bounded() -> anyhow::Result<()> {
        let store = MemoryStore::default();
        let value = vec![b'x'; 1024 * 1024];
        let mut stored = 0;
        while store
            .set(&format!("big{stored}"), &value, None, false)
            .is_ok()
        {
            stored += 1;
            anyhow::ensure!(stored <= 64, "more than 64 MiB accepted");
        }
        anyhow::ensure!(stored >= 60, "only {stored} MiB accepted");
        // Less than a value's worth of room is left, for small keys such as counters.
        let mut counters = 0;
        while store.increment(&format!("c{counters}"), 1, None).is_ok() {
            counters += 1;
            anyhow::ensure!(counters < 20_000, "{counters} counters after 1 MiB values");
        }
        anyhow::ensure!(matches!(
            store.set("new", b"1", None, true),
            Err(KvError::Unavailable(_))
        ));
        // Existing keys can still change, e.g. shrink to make room.
        store.increment("c0", 1, None)?;
        store.set("big0", b"small", None, false)?;
        store.increment("new", 1, None)?;
        Ok(())
    }

    #[test]
    fn the_memory_store_sweeps_expired_counters() -> anyhow::Result<()> {
        let store = MemoryStore::default();
        let ttl = Some(Duration::from_millis(1));
        for i in 0..100_000 {
            store.increment(&format!("rl:{i}"), 1, ttl)?;
        }
        std::thread::sleep(Duration::from_millis(5));
        store.lock().last_sweep = None;
        store.increment("after", 1, None)?;
        let state = store.lock();
        anyhow::ensure!(state.entries.len() == 1, "{} entries", state.entries.len());
        anyhow::ensure!(state.used_bytes == Entry::cost("after", b"1"));
        Ok(())
    }

    #[test]
    fn plugin_keys_are_namespaced() {
        assert_ne!(plugin_key("p", "a", "k"), plugin_key("p", "b", "k"));
        // A key cannot climb into another plugin's namespace.
        assert!(plugin_key("p", "a", "x:b:k").starts_with("p:kv:a:"));
    }
}
