//! Rate limiting per client IP: fixed one-minute windows counted in the key-value store,
//! so with Redis every host instance shares one budget.
//!
//! With Redis, a host does not pay a round trip per request: it reserves a few of the
//! window's counter values at a time (`INCRBY n`) and hands them out locally ([`Leases`]).
//! The guarantee: **across all hosts, no more than the limit is admitted per client and
//! window**, because every admitted request holds one counter value no greater than the
//! limit. A reservation is at most an eighth of the budget the host last saw remaining,
//! and at most [`MAX_RESERVATION`]; near the limit it is one. A client whose traffic keeps
//! reaching every host it used gets exactly the limit; one that stops visiting a host can
//! meet its first 429 early by what that host still holds (at most `MAX_RESERVATION - 1`
//! per host). Once a host has seen the counter pass the limit it refuses the client
//! locally until the window ends. The in-process store (no Redis) counts exactly, one
//! increment per request.
//!
//! Two classes: `default` (`RATE_LIMIT_PER_MINUTE`, every route and unknown paths) and
//! `auth` (`AUTH_RATE_LIMIT_PER_MINUTE`, routes whose manifest says `rate_limit = "auth"`),
//! each with its own counter. `/health`, `/ready` and CORS preflights are never counted.
//!
//! When Redis cannot be reached: `auth` routes fail closed (503: brute-force protection
//! must not disappear with Redis), other routes fall back to a per-instance counter (the
//! limit then holds per instance rather than globally).
//!
//! A client is an IPv4 address or an IPv6 /64 (one subscriber's usual allocation: rotating
//! addresses within it buys no new budget). IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`,
//! what a dual-stack socket reports for IPv4 peers) count as the IPv4 address, also when
//! matching `TRUSTED_PROXIES`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::capabilities::kv::KvStore;
use crate::plugins::manifest::RateLimitClass;

const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct RateLimiter {
    store: KvStore,
    /// Used for `default` routes while the shared store is unreachable.
    local: KvStore,
    key_prefix: String,
    default_per_minute: u32,
    auth_per_minute: u32,
    /// After a store failure, the store is not asked again until then (Unix ms), so an
    /// outage costs one timeout, not one per request.
    store_down_until_ms: AtomicU64,
    /// Counter values reserved from the shared store and not yet handed out.
    leases: Mutex<Leases<Counter>>,
}

/// How long the shared store is left alone after it failed.
const STORE_RETRY_AFTER: Duration = Duration::from_secs(2);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// The outcome of counting one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the window resets.
    pub reset_secs: u64,
    pub allowed: bool,
}

// Parsed once, not per response.
const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

impl Decision {
    /// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (and `Retry-After` on 429).
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(RATELIMIT_LIMIT, HeaderValue::from(self.limit));
        headers.insert(RATELIMIT_REMAINING, HeaderValue::from(self.remaining));
        headers.insert(RATELIMIT_RESET, HeaderValue::from(self.reset_secs));
        if !self.allowed {
            headers.insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(self.reset_secs),
            );
        }
    }
}

/// Why no decision could be made.
#[derive(Debug, thiserror::Error)]
#[error("rate limit store unavailable")]
pub struct LimiterUnavailable;

impl From<LimiterUnavailable> for crate::error::ApiError {
    fn from(_: LimiterUnavailable) -> Self {
        Self::Unavailable("rate limit store".into())
    }
}

impl RateLimiter {
    pub fn new(
        store: KvStore,
        key_prefix: &str,
        default_per_minute: u32,
        auth_per_minute: u32,
    ) -> Self {
        Self {
            store,
            local: KvStore::in_process(),
            key_prefix: key_prefix.to_owned(),
            default_per_minute,
            auth_per_minute,
            store_down_until_ms: AtomicU64::new(0),
            leases: Mutex::new(Leases::default()),
        }
    }

    fn limit_of(&self, class: RateLimitClass) -> u32 {
        match class {
            RateLimitClass::Default => self.default_per_minute,
            RateLimitClass::Auth => self.auth_per_minute,
        }
    }

    /// Counts one request of `client` in `class`; `None` when that class is not limited.
    pub async fn check(
        &self,
        client: IpAddr,
        class: RateLimitClass,
    ) -> Result<Option<Decision>, LimiterUnavailable> {
        let limit = self.limit_of(class);
        if limit == 0 {
            return Ok(None);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let window = now / WINDOW.as_secs();
        let reset_secs = (window + 1) * WINDOW.as_secs() - now;
        let counter = Counter {
            class,
            client: ClientKey::of(client),
        };
        // The store's key, written only when the store is asked (with Redis, once per
        // reservation rather than per request).
        let key = || {
            format!(
                "{}:rl:{}:{}:{window}",
                self.key_prefix,
                class.name(),
                counter.client
            )
        };
        // The key outlives its window slightly so clock skew between instances is harmless.
        let ttl = Some(WINDOW + Duration::from_secs(5));
        let shared = if now_ms() < self.store_down_until_ms.load(Ordering::Relaxed) {
            None
        } else {
            match self.count_shared(counter, key, window, limit, ttl).await {
                Ok(count) => Some(count),
                Err(err) => {
                    tracing::warn!(error = %err, "rate limit store unavailable");
                    self.store_down_until_ms.store(
                        now_ms() + STORE_RETRY_AFTER.as_millis() as u64,
                        Ordering::Relaxed,
                    );
                    None
                }
            }
        };
        let count = match (shared, class) {
            (Some(count), _) => count,
            (None, RateLimitClass::Default) => self
                .local
                .increment(&key(), 1, ttl)
                .await
                .map_err(|_| LimiterUnavailable)?,
            (None, RateLimitClass::Auth) => return Err(LimiterUnavailable),
        };
        let count = u32::try_from(count.max(0)).unwrap_or(u32::MAX);
        Ok(Some(Decision {
            limit,
            remaining: limit.saturating_sub(count),
            reset_secs,
            allowed: count <= limit,
        }))
    }
}

impl RateLimiter {
    /// The counter value of this request in the shared store: from this host's lease when
    /// it holds one, otherwise reserved from the store (see the module docs).
    async fn count_shared(
        &self,
        counter: Counter,
        key: impl Fn() -> String,
        window: u64,
        limit: u32,
        ttl: Option<Duration>,
    ) -> Result<i64, crate::capabilities::kv::KvError> {
        if !self.store.is_redis() {
            return self.store.increment(&key(), 1, ttl).await;
        }
        let reservation = {
            let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
            match leases.take(&counter, window, limit) {
                Take::Value(value) => return Ok(value),
                Take::Reserve(n) => n,
            }
        };
        let last = self.store.increment(&key(), reservation, ttl).await?;
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        Ok(leases.reserved(&counter, window, limit, last, reservation))
    }
}

/// One client's counter in one class (the window is the [`Leases`]').
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Counter {
    class: RateLimitClass,
    client: ClientKey,
}

/// Largest number of counter values a host reserves at once.
pub const MAX_RESERVATION: i64 = 16;

/// Clients whose reservations a host keeps at once; past it, a new client is counted one
/// request at a time (correct, just not cheaper), so a flood of addresses cannot grow it.
const MAX_LEASED_CLIENTS: usize = 100_000;

/// The counter values this host reserved, per counter key, for the current window.
#[derive(Debug)]
struct Leases<K> {
    window: u64,
    by_key: HashMap<K, Lease>,
}

impl<K> Default for Leases<K> {
    fn default() -> Self {
        Self {
            window: 0,
            by_key: HashMap::new(),
        }
    }
}

#[derive(Debug, Default)]
struct Lease {
    /// Reserved values not yet handed out, as inclusive ranges.
    free: Vec<(i64, i64)>,
    /// The highest counter value the store has returned to this host.
    seen: i64,
}

/// What to do for one request.
#[derive(Debug, PartialEq, Eq)]
enum Take {
    /// The request's counter value, from the lease (or past the limit: refused).
    Value(i64),
    /// Reserve this many values from the store.
    Reserve(i64),
}

impl<K: std::hash::Hash + Eq + Clone> Leases<K> {
    fn take(&mut self, key: &K, window: u64, limit: u32) -> Take {
        if window != self.window {
            // A new window: every reservation of the old one is void.
            self.window = window;
            self.by_key.clear();
        }
        let limit = i64::from(limit);
        let Some(lease) = self.by_key.get_mut(key) else {
            return Take::Reserve(reservation(limit, 0));
        };
        if let Some(range) = lease.free.first_mut() {
            let value = range.0;
            if range.0 == range.1 {
                lease.free.remove(0);
            } else {
                range.0 += 1;
            }
            return Take::Value(value);
        }
        if lease.seen >= limit {
            // The counter never goes down within a window: refused without asking.
            return Take::Value(lease.seen + 1);
        }
        Take::Reserve(reservation(limit, lease.seen))
    }

    /// Records that the store's counter went to `last` after reserving `n`; returns the
    /// value of the request that reserved them and keeps the rest.
    fn reserved(&mut self, key: &K, window: u64, limit: u32, last: i64, n: i64) -> i64 {
        let first = last - n + 1;
        if window != self.window
            || (!self.by_key.contains_key(key) && self.by_key.len() >= MAX_LEASED_CLIENTS)
        {
            return first;
        }
        let lease = self.by_key.entry(key.clone()).or_default();
        lease.seen = lease.seen.max(last);
        // Values past the limit admit nobody: not worth keeping.
        let usable_end = last.min(i64::from(limit));
        if first < usable_end {
            lease.free.push((first + 1, usable_end));
        }
        first
    }
}

/// How many values to reserve when `seen` of `limit` are known to be taken: an eighth of
/// what remains, at least one, at most [`MAX_RESERVATION`].
fn reservation(limit: i64, seen: i64) -> i64 {
    ((limit - seen) / 8).clamp(1, MAX_RESERVATION)
}

/// Whose budget a client draws from: its IPv4 address, or its IPv6 /64 (the address with
/// its last 64 bits cleared; written `2001:db8:1:2::/64` into the counter's key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ClientKey(IpAddr);

impl ClientKey {
    fn of(client: IpAddr) -> Self {
        Self(match client.to_canonical() {
            IpAddr::V4(v4) => IpAddr::V4(v4),
            IpAddr::V6(v6) => IpAddr::V6((v6.to_bits() & !u128::from(u64::MAX)).into()),
        })
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => v4.fmt(f),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

#[cfg(test)]
fn client_key(client: IpAddr) -> String {
    ClientKey::of(client).to_string()
}

/// `net` in canonical form: an IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) as the
/// IPv4 network it maps.
fn canonical_net(net: &ipnet::IpNet) -> ipnet::IpNet {
    if let ipnet::IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && let Some(prefix) = v6.prefix_len().checked_sub(96)
        && let Ok(v4) = ipnet::Ipv4Net::new(v4, prefix)
    {
        return ipnet::IpNet::V4(v4);
    }
    *net
}

/// The client's address: the socket peer, or, when the peer is a trusted proxy, the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy. Addresses are
/// compared, and returned, in canonical form (IPv4-mapped IPv6 as IPv4).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| canonical_net(net).contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .collect::<Vec<_>>();
    forwarded
        .into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<ipnet::IpNet> {
        list.iter().filter_map(|n| n.parse().ok()).collect()
    }

    fn xff(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert("x-forwarded-for", v);
        }
        headers
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() -> anyhow::Result<()> {
        let proxy: IpAddr = "10.0.0.5".parse()?;
        let stranger: IpAddr = "203.0.113.9".parse()?;
        let trusted = nets(&["10.0.0.0/8"]);
        let headers = xff("198.51.100.1, 10.0.0.7");
        assert_eq!(
            client_ip(proxy, &headers, &trusted),
            "198.51.100.1".parse::<IpAddr>()?
        );
        assert_eq!(client_ip(stranger, &headers, &trusted), stranger);
        // A client cannot hide behind a forged left-most entry.
        let spoofed = xff("1.2.3.4, 198.51.100.1");
        assert_eq!(
            client_ip(proxy, &spoofed, &trusted),
            "198.51.100.1".parse::<IpAddr>()?
        );
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy);
        Ok(())
    }

    #[test]
    fn ipv4_mapped_peers_match_trusted_proxies_in_canonical_form() -> anyhow::Result<()> {
        let mapped: IpAddr = "::ffff:10.0.0.5".parse()?;
        let headers = xff("198.51.100.1");
        let client: IpAddr = "198.51.100.1".parse()?;
        for trusted in [nets(&["10.0.0.0/8"]), nets(&["::ffff:10.0.0.0/104"])] {
            assert_eq!(client_ip(mapped, &headers, &trusted), client);
        }
        let v4: IpAddr = "10.0.0.5".parse()?;
        assert_eq!(
            client_ip(v4, &headers, &nets(&["::ffff:10.0.0.0/104"])),
            client
        );
        // Untrusted, a mapped peer is reported as its IPv4 address.
        assert_eq!(client_ip(mapped, &headers, &[]), v4);
        Ok(())
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() -> anyhow::Result<()> {
        let key = |ip: &str| -> anyhow::Result<String> { Ok(client_key(ip.parse()?)) };
        assert_eq!(
            key("2001:db8:1:2::1")?,
            key("2001:db8:1:2:ffff:ffff:ffff:ffff")?
        );
        assert_eq!(key("2001:db8:1:2::1")?, "2001:db8:1:2::/64");
        assert_ne!(key("2001:db8:1:2::1")?, key("2001:db8:1:3::1")?);
        assert_eq!(key("192.0.2.7")?, "192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7")?, "192.0.2.7");
        Ok(())
    }

    /// Hosts sharing one counter, each with its own leases, serving requests in
    /// `order` (a host index per request): what each request was told.
    fn simulate(hosts: usize, limit: u32, order: &[usize]) -> Vec<bool> {
        let mut counter = 0i64;
        let mut leases: Vec<Leases<&str>> = (0..hosts).map(|_| Leases::default()).collect();
        order
            .iter()
            .map(|&host| {
                let value = match leases[host].take(&"k", 7, limit) {
                    Take::Value(value) => value,
                    Take::Reserve(n) => {
                        counter += n;
                        leases[host].reserved(&"k", 7, limit, counter, n)
                    }
                };
                value <= i64::from(limit)
            })
            .collect()
    }

    #[test]
    fn hosts_sharing_a_counter_never_admit_more_than_the_limit() {
        for limit in [1, 2, 5, 6, 10, 60, 100, 1_000] {
            for hosts in 1..=4 {
                // Round robin, then bursts of uneven length per host.
                let mut orders: Vec<Vec<usize>> =
                    vec![(0..limit as usize * 2 + 40).map(|i| i % hosts).collect()];
                orders.push(
                    (0..limit as usize * 2 + 40)
                        .map(|i| (i * 7 / 5 + i / 3) % hosts)
                        .collect(),
                );
                for order in orders {
                    let admitted = simulate(hosts, limit, &order);
                    let count = admitted.iter().filter(|a| **a).count();
                    // Every host keeps receiving requests, so the whole budget is used.
                    assert_eq!(count, limit as usize, "limit {limit}, {hosts} hosts");
                }
            }
        }
    }

    #[test]
    fn alternating_hosts_meet_the_first_refusal_right_after_the_limit() {
        for limit in [6, 60] {
            let order: Vec<usize> = (0..limit as usize + 10).map(|i| i % 2).collect();
            let admitted = simulate(2, limit, &order);
            let first_refused = admitted.iter().position(|a| !a);
            // Within the leftovers of one reservation of the other host.
            let first_refused = first_refused.unwrap_or(usize::MAX);
            assert!(
                first_refused + MAX_RESERVATION as usize > limit as usize,
                "limit {limit}: first 429 at request {}",
                first_refused + 1
            );
            if limit <= 8 {
                assert_eq!(first_refused, limit as usize, "small limits count exactly");
            }
        }
    }

    #[test]
    fn a_host_past_the_limit_refuses_without_asking_and_a_new_window_starts_afresh() {
        let mut leases = Leases::<&str>::default();
        assert_eq!(leases.take(&"k", 1, 3), Take::Reserve(1));
        assert_eq!(leases.reserved(&"k", 1, 3, 4, 1), 4); // another host took 1..=3
        assert_eq!(leases.take(&"k", 1, 3), Take::Value(5));
        assert_eq!(leases.take(&"k", 2, 3), Take::Reserve(1));
        // Reservations stay bounded, and shrink as the budget runs out.
        assert_eq!(reservation(1_000_000, 0), MAX_RESERVATION);
        assert_eq!(reservation(100, 60), 5);
        assert_eq!(reservation(100, 99), 1);
    }

    #[tokio::test]
    async fn the_request_after_the_limit_is_the_first_refused() -> anyhow::Result<()> {
        let limiter = RateLimiter::new(KvStore::in_process(), "t", 3, 1);
        let ip: IpAddr = "192.0.2.1".parse()?;
        for expected_remaining in [2, 1, 0] {
            let decision = limiter.check(ip, RateLimitClass::Default).await?;
            let decision = decision.ok_or_else(|| anyhow::anyhow!("limited"))?;
            assert!(decision.allowed);
            assert_eq!(decision.remaining, expected_remaining);
        }
        let refused = limiter
            .check(ip, RateLimitClass::Default)
            .await?
            .ok_or_else(|| anyhow::anyhow!("limited"))?;
        assert!(!refused.allowed);
        assert!(refused.reset_secs <= 60);
        // The auth class has its own budget.
        let auth = limiter.check(ip, RateLimitClass::Auth).await?;
        assert!(auth.is_some_and(|d| d.allowed && d.limit == 1));
        Ok(())
    }
}
