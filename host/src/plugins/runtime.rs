//! The wasmtime side of a plugin: one engine, a fresh store per request, limits.
//!
//! The engine is configured once: async support (capability calls are async), the pooling
//! allocator (instantiation is a few microseconds, and memory is reset, not re-mapped, per
//! request: only the pages the request wrote), epoch interruption driven by one ticker
//! thread (which parks shortly after the last store is gone: an idle host costs no
//! wake-ups), and an on-disk cache of compiled code keyed by the component's bytes and the
//! engine's settings (a restart, or a roll-back to a version compiled before, does not
//! compile again).
//!
//! A request first passes its plugin's [`Admission`] (a concurrency cap with a short,
//! bounded queue: past it, a fast 503), then runs in a new [`Store`] with the plugin's
//! memory limit and a deadline; while under its deadline a guest yields to tokio at every
//! tick, so a busy plugin never holds a worker thread for long. What a tick cannot cut
//! short (filling or copying tens of MiB in one instruction, lifting a huge response,
//! resetting the memory afterwards) is bounded by [`HeavyLanes`]: a plugin whose calls
//! touch that much memory takes turns on fewer lanes than there are worker threads, and
//! one whose calls also hold their thread for [`HOLDING_STRETCH`] without yielding (timed
//! between epoch yields) hands its worker's queue to another thread before each call.
//!
//! A plugin that keeps no state between requests may opt into reuse
//! (`limits.reuse_instance_for`): after a successful call its instance is parked
//! (capability state, output and ticker claim released) and the next request of that
//! version runs in it, instantiation skipped; a trap or timeout drops it instead.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use prometheus::{Histogram, IntCounter, IntGauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument as _;
use wasmtime::component::ResourceTable;
use wasmtime::{
    Cache, CacheConfig, Config, Enabled, Engine, InstanceAllocationStrategy,
    PoolingAllocationConfig, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap,
    UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::bindings::{Plugin, PluginPre, Request, Response};
use crate::bounded::{BoundedSemaphore, Refusal};
use crate::capabilities::{CapabilityView, InstanceCapabilities, PluginCapabilities};
use crate::plugins::guest_output::{GuestOutput, GuestStream};
use crate::plugins::manifest::Limits;
use crate::plugins::wasi_http;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::traces::trace_span;
use crate::workers;

/// How often the epoch advances: the granularity of deadlines and of guest yields. A busy
/// guest holds a worker thread at most this long before others get a turn. Measured on
/// two cores (`scripts/bench.sh`, sandbox section), a neighbour's p99 of ~6 ms became
/// ~200 ms next to four spinning guests at 5 ms; next to an endless loop, a memory bomb
/// and a trap (with the runtime settings in `main.rs`) ~19 ms at 1 ms and ~18 ms at
/// 0.5 ms. A tick costs one fiber switch per running guest.
pub const EPOCH_TICK: Duration = Duration::from_micros(500);

/// Instances alive at once across all plugins, unless `PLUGIN_INSTANCES` says otherwise;
/// beyond it requests queue for a slot, then get 503. Each slot reserves about 4 GiB of
/// address space (wasmtime's reservation per linear memory, which spares compiled code
/// its bounds checks): 1,000 slots take about 4 TiB of the 128 TiB a Linux process may
/// map, none of it resident until used.
pub const DEFAULT_INSTANCES: u32 = 1_000;

/// Largest linear memory any plugin may be granted (manifests ask for less).
const MAX_MEMORY_BYTES: usize = 512 * 1024 * 1024;

/// Memory kept mapped between uses of a pool slot: resetting it is cheaper than unmapping
/// it. A Rust guest's stack and small heap fit. Only the pages a request wrote are reset
/// (the kernel's `PAGEMAP_SCAN`, Linux 6.7+, where available; otherwise all of it): for
/// `hello` that took one call from 13.3 to 11.7 µs (`benches/plugin_call.rs`). 4 MiB
/// measured 3% slower than 1 MiB.
const KEEP_RESIDENT_BYTES: usize = 1024 * 1024;

/// Response headers a plugin may set, in number and in bytes (names and values); more is
/// an invalid response (hyper's header map would refuse past 32,768 entries anyway, by
/// panicking).
const MAX_RESPONSE_HEADERS: usize = 128;
const MAX_RESPONSE_HEADER_BYTES: usize = 64 * 1024;

/// How long a request waits for a free instance slot before it is answered 503.
const SLOT_WAIT: Duration = Duration::from_secs(5);

/// A call whose linear memory reached this size is heavy: filling, copying and resetting
/// that much holds a worker thread for milliseconds (several epoch ticks) without a chance
/// to yield. Rust guests start near 1 MiB; `auth` and `users` stay under 3 MiB.
const HEAVY_MEMORY_BYTES: usize = 16 * 1024 * 1024;

/// A heavy call that also held its thread this long at a stretch (guest code between two
/// yields: one `memory.fill` of tens of MiB; or the host lifting its response) marks its
/// plugin as one that holds threads: its next calls first hand their worker's queue to
/// another thread ([`workers::hand_over`]), so the requests queued behind them
/// are not held up. A memory bomb allocating 1 MiB at a time yields between its
/// allocations and is not marked; it takes turns on the lanes like any heavy call.
const HOLDING_STRETCH: Duration = Duration::from_millis(10);

/// How long a plugin's calls keep taking turns on the heavy lanes after its last heavy call.
const HEAVY_FOR: Duration = Duration::from_secs(60);

/// The per-process plugin engine.
#[derive(Clone, Debug)]
pub struct PluginEngine {
    engine: Engine,
    /// The on-disk cache of compiled code, if enabled (kept for its hit/miss counts).
    cache: Option<Cache>,
    /// One permit per pooled instance slot: requests beyond the pool's size queue here
    /// (fairly, in arrival order) instead of failing to instantiate.
    slots: Arc<Semaphore>,
    /// Reusable instances one plugin version may keep parked, each holding a slot.
    max_parked: usize,
    ticker: EpochTicker,
    heavy_lanes: HeavyLanes,
    metrics: Arc<Metrics>,
}

/// How compilations were served so far: from the on-disk cache, or compiled afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileStats {
    pub cache_hits: usize,
    pub compiled: usize,
}

impl PluginEngine {
    /// `cache_dir`: where compiled code is kept across restarts (`None`: always compile);
    /// `instances`: how many may be alive at once across all plugins (the pool's slots).
    pub fn new(
        cache_dir: Option<&Path>,
        instances: u32,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(instances > 0, "the instance pool needs at least one slot");
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(instances)
            .total_memories(instances)
            .total_tables(instances.saturating_mul(4))
            .total_core_instances(instances.saturating_mul(8))
            .total_stacks(instances)
            .max_memory_size(MAX_MEMORY_BYTES)
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .table_keep_resident(64 * 1024)
            .pagemap_scan(Enabled::Auto);

        let cache = cache_dir
            .map(|dir| {
                let mut settings = CacheConfig::new();
                settings.with_directory(dir);
                Cache::new(settings)
                    .map_err(anyhow::Error::from)
                    .with_context(|| format!("PLUGIN_CACHE_DIR {}: cannot be used", dir.display()))
            })
            .transpose()?;

        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .cache(cache.clone());
        let engine = Engine::new(&config)
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!(
                    "configuring the wasm engine ({instances} instance slots of about 4 GiB \
                     of address space each: under an address-space limit such as \
                     `ulimit -v`, set PLUGIN_INSTANCES lower)"
                )
            })?;
        let ticker = EpochTicker::spawn(&engine)?;
        let slots = Arc::new(Semaphore::new(instances as usize));
        metrics
            .instance_slots
            .with_label_values(&["total"])
            .set(i64::from(instances));
        let in_use = metrics.instance_slots.with_label_values(&["in_use"]);
        let pool = Arc::downgrade(&slots);
        metrics.on_scrape(move || {
            if let Some(pool) = pool.upgrade() {
                in_use.set(i64::from(instances) - pool.available_permits() as i64);
            }
        });
        Ok(Self {
            engine,
            cache,
            slots,
            // Parked instances hold slots: a small pool keeps them to a sixteenth of it
            // (none under 16 slots), so they cannot starve the requests that need one.
            max_parked: MAX_PARKED.min(instances as usize / 16),
            ticker,
            heavy_lanes: HeavyLanes::for_this_runtime(),
            metrics,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn slots(&self) -> Arc<Semaphore> {
        self.slots.clone()
    }

    pub fn max_parked(&self) -> usize {
        self.max_parked
    }

    pub fn ticker(&self) -> EpochTicker {
        self.ticker.clone()
    }

    pub fn heavy_lanes(&self) -> HeavyLanes {
        self.heavy_lanes.clone()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// `None` when the on-disk cache is off.
    pub fn compile_stats(&self) -> Option<CompileStats> {
        self.cache.as_ref().map(|cache| CompileStats {
            cache_hits: cache.cache_hits(),
            compiled: cache.cache_misses(),
        })
    }
}

/// Ticks the epoch ticker goes on making after the last store is dropped before it parks:
/// under load the count of live stores touches 0 between requests all the time, and
/// waking a parked ticker is a `futex` wake-up (and often an IPI) on the request's path —
/// about 2% of the workers' samples with reused instances. 200 ticks: 0.1 s.
const IDLE_TICKS_BEFORE_PARKING: u32 = 200;

/// Advances the engine's epoch every [`EPOCH_TICK`] while at least one store exists (and
/// for [`IDLE_TICKS_BEFORE_PARKING`] more), and sleeps otherwise: 2,000 wake-ups a second
/// cost an idle host about 5% of a core.
///
/// Every store holds an [`EpochTicking`] for its whole life (instantiation included, where
/// a start function could loop), so no guest ever runs without ticks. Missed ticks are
/// harmless: deadlines are wall-clock instants checked at each tick.
#[derive(Clone, Debug)]
pub struct EpochTicker(Arc<TickerShared>);

#[derive(Debug)]
struct TickerShared {
    stores: AtomicUsize,
    thread: std::thread::Thread,
}

impl EpochTicker {
    /// One thread per engine; it ends when the engine is dropped.
    fn spawn(engine: &Engine) -> anyhow::Result<Self> {
        let weak = engine.weak();
        let (thread_tx, thread_rx) = std::sync::mpsc::sync_channel::<Arc<TickerShared>>(1);
        let handle = std::thread::Builder::new()
            .name("plinth-epoch".into())
            .spawn(move || {
                let Ok(shared) = thread_rx.recv() else { return };
                let mut idle_ticks = 0;
                while let Some(engine) = weak.upgrade() {
                    if shared.stores.load(Ordering::Acquire) == 0 {
                        idle_ticks += 1;
                    } else {
                        idle_ticks = 0;
                    }
                    if idle_ticks > IDLE_TICKS_BEFORE_PARKING {
                        drop(engine);
                        // Woken by the first new store; a wake-up that raced ahead of
                        // this park makes it return at once. The timeout only lets the
                        // thread notice a dropped engine.
                        std::thread::park_timeout(Duration::from_secs(1));
                        // Still no store (the timeout): park again at once.
                        idle_ticks = IDLE_TICKS_BEFORE_PARKING;
                        continue;
                    }
                    drop(engine);
                    // Sleep first: a tick right as the first store appears would make
                    // nearly every short call yield once for nothing.
                    std::thread::sleep(EPOCH_TICK);
                    if let Some(engine) = weak.upgrade() {
                        engine.increment_epoch();
                    }
                }
            })
            .context("starting the epoch ticker thread")?;
        let shared = Arc::new(TickerShared {
            stores: AtomicUsize::new(0),
            thread: handle.thread().clone(),
        });
        thread_tx
            .send(shared.clone())
            .context("starting the epoch ticker thread")?;
        Ok(Self(shared))
    }

    /// Keeps the epoch advancing until the returned value is dropped.
    pub fn ticking(&self) -> EpochTicking {
        if self.0.stores.fetch_add(1, Ordering::AcqRel) == 0 {
            self.0.thread.unpark();
        }
        EpochTicking(self.0.clone())
    }
}

/// Where heavy calls run: one lane fewer than the runtime has worker threads (at least
/// one), shared by every plugin, so calls that cannot yield never hold all the workers
/// and the other plugins' requests keep being served (issue 14: `/hello/x` p99 next to a
/// plugin answering 64 MiB bodies went from 19× its quiet figure to under 3×).
///
/// A plugin is put on the lanes by what its calls cost, not by configuration: a call that
/// grows its memory past [`HEAVY_MEMORY_BYTES`] marks the plugin version for [`HEAVY_FOR`].
/// Its calls then wait (within the plugin's queue timeout) for a lane; a plugin that never
/// touches that much memory never waits here.
///
/// Lanes as threads of their own (a small runtime beside the workers) were measured and
/// not kept (`BENCHMARKS.md`, issue 14's fourth round): at the default priority a memory
/// bomb on them took a third of the CPU from the workers, at a lower one every thread a
/// lane creates would inherit that priority; and only as a shared permit does a lane also
/// cap how many heavy calls run at once.
#[derive(Clone, Debug)]
pub struct HeavyLanes {
    lanes: Arc<Semaphore>,
    count: usize,
}

impl HeavyLanes {
    fn for_this_runtime() -> Self {
        let workers = tokio::runtime::Handle::try_current()
            .map(|runtime| runtime.metrics().num_workers())
            .unwrap_or_else(|_| std::thread::available_parallelism().map_or(1, |n| n.get()));
        Self::new(workers.saturating_sub(1).max(1))
    }

    fn new(count: usize) -> Self {
        Self {
            lanes: Arc::new(Semaphore::new(count)),
            count,
        }
    }
}

/// Until when ([`now_us`]) a plugin version is marked (heavy, or holding
/// threads); 0: never marked.
#[derive(Debug, Default)]
pub struct HeavyMark(AtomicU64);

impl HeavyMark {
    fn is_set(&self) -> bool {
        now_us() < self.0.load(Ordering::Relaxed)
    }

    /// Marks the plugin for [`HEAVY_FOR`]; true when it was not marked already.
    fn set(&self) -> bool {
        let now = now_us();
        let until = now.saturating_add(u64::try_from(HEAVY_FOR.as_micros()).unwrap_or(u64::MAX));
        self.0.swap(until, Ordering::Relaxed) <= now
    }
}

/// A store's limits, and the largest linear memory its instance reached.
struct TrackedLimits {
    limits: StoreLimits,
    peak_memory: usize,
}

impl ResourceLimiter for TrackedLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if allowed {
            self.peak_memory = self.peak_memory.max(desired);
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// A store's claim on the epoch ticker (see [`EpochTicker`]).
#[derive(Debug)]
pub struct EpochTicking(Arc<TickerShared>);

impl Drop for EpochTicking {
    fn drop(&mut self) {
        self.0.stores.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The data of one request's store: WASI (with nothing granted), limits, and the state of
/// the plugin's capabilities for this request.
pub struct InstanceState {
    wasi: WasiCtx,
    /// `wasi:http`'s context (used by standard components only; a few bytes otherwise).
    http: WasiHttpCtx,
    table: ResourceTable,
    limits: TrackedLimits,
    capabilities: InstanceCapabilities,
    stdout: GuestOutput,
    stderr: GuestOutput,
    /// Held while the store serves a request (a parked reusable instance runs no code).
    ticking: Option<EpochTicking>,
    held: HoldClock,
}

/// How long the store's call held its thread at a stretch, measured between the moments
/// the guest gets its thread (the call's start, each return from a yield) and the moments
/// it gives it up (each yield at an epoch tick, the end of the call). A host call the guest
/// awaits counts into the stretch around it, so only calls past [`HEAVY_MEMORY_BYTES`] are
/// judged by it.
#[derive(Debug, Default)]
struct HoldClock {
    /// When the guest last got its thread back ([`now_us`]; written by
    /// the yield's future as it completes).
    resumed_us: Arc<AtomicU64>,
    longest_us: u64,
}

impl HoldClock {
    fn start(&mut self) {
        self.longest_us = 0;
        self.resumed_us.store(now_us(), Ordering::Relaxed);
    }

    /// Closes the stretch now ending.
    fn lap(&mut self) {
        let held = now_us().saturating_sub(self.resumed_us.load(Ordering::Relaxed));
        self.longest_us = self.longest_us.max(held);
    }

    fn longest(&self) -> Duration {
        Duration::from_micros(self.longest_us)
    }
}

/// The timestamps of [`HoldClock`] and [`HeavyMark`]: µs on [`workers::now_ns`]'s clock.
fn now_us() -> u64 {
    workers::now_ns() / 1_000
}

/// Gives the thread up once, then records when the guest got it back (wasmtime's own
/// yield, plus the timestamp).
struct YieldOnce {
    yielded: bool,
    resumed_us: Arc<AtomicU64>,
}

impl Future for YieldOnce {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.yielded {
            self.resumed_us.store(now_us(), Ordering::Relaxed);
            return std::task::Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

impl std::fmt::Debug for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceState")
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}

impl CapabilityView for InstanceState {
    fn capabilities(&mut self) -> &mut InstanceCapabilities {
        &mut self.capabilities
    }
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for InstanceState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            // Outgoing requests go only where the grant says.
            hooks: &mut self.capabilities.outbound_http,
        }
    }
}

/// What the host calls in a component: Plinth's `handler`, or the standard
/// `wasi:http/incoming-handler` ([`super::wasi_http`]).
pub(crate) enum Entry {
    Plinth(PluginPre<InstanceState>),
    WasiHttp(ProxyPre<InstanceState>),
}

/// Why a plugin call produced no usable response.
#[derive(Debug, thiserror::Error)]
pub enum PluginFailure {
    #[error("plugin exceeded its time limit of {0:?}")]
    Timeout(Duration),
    #[error("plugin trapped: {0}")]
    Trap(String),
    #[error("plugin returned an invalid response: {0}")]
    InvalidResponse(String),
    /// The plugin (or the host) is at capacity; the request was not run.
    #[error("overloaded: {0}")]
    Overloaded(String),
}

/// What happened to a plugin version's requests on this host: the series of the
/// `plinth_plugin_*` metric families for its name and version, so the admin API and a
/// scrape read the same counters.
#[derive(Debug)]
pub struct PluginCounters {
    ok: IntCounter,
    traps: IntCounter,
    timeouts: IntCounter,
    invalid_responses: IntCounter,
    /// Requests refused at capacity (the plugin's queue, the heavy lanes, the host's
    /// instance slots).
    rejections: IntCounter,
    /// Calls whose memory grew past [`HEAVY_MEMORY_BYTES`] (see [`HeavyLanes`]).
    heavy_calls: IntCounter,
    instantiation: Histogram,
    in_use: IntGauge,
    /// Requests waiting in [`Admission`]'s line.
    pub(crate) queued: IntGauge,
    /// Held in `plinth_plugin_info` while this version is loaded.
    _info: PluginInfo,
}

impl PluginCounters {
    pub fn new(metrics: &Arc<Metrics>, plugin: &str, version: &str, hash: &str) -> Self {
        let outcome = |outcome| {
            metrics
                .plugin_invocations
                .with_label_values(&[plugin, version, outcome])
        };
        Self {
            ok: outcome("ok"),
            traps: outcome("trap"),
            timeouts: outcome("timeout"),
            invalid_responses: outcome("invalid_response"),
            rejections: outcome("rejected"),
            heavy_calls: metrics
                .plugin_heavy_calls
                .with_label_values(&[plugin, version]),
            instantiation: metrics
                .plugin_instantiation
                .with_label_values(&[plugin, version]),
            in_use: metrics
                .plugin_instances_in_use
                .with_label_values(&[plugin, version]),
            queued: metrics.plugin_queued.with_label_values(&[plugin, version]),
            _info: PluginInfo::hold(
                metrics.clone(),
                [plugin.to_owned(), version.to_owned(), hash.to_owned()],
            ),
        }
    }

    fn count(&self, result: &Result<Response, PluginFailure>) {
        let counter = match result {
            Ok(_) => &self.ok,
            Err(PluginFailure::Timeout(_)) => &self.timeouts,
            Err(PluginFailure::Trap(_)) => &self.traps,
            Err(PluginFailure::InvalidResponse(_)) => &self.invalid_responses,
            Err(PluginFailure::Overloaded(_)) => &self.rejections,
        };
        counter.inc();
    }

    pub fn snapshot(&self) -> serde_json::Value {
        let failures = [
            &self.traps,
            &self.timeouts,
            &self.invalid_responses,
            &self.rejections,
        ];
        serde_json::json!({
            "requests": self.ok.get() + failures.iter().map(|c| c.get()).sum::<u64>(),
            "traps": self.traps.get(),
            "timeouts": self.timeouts.get(),
            "invalid_responses": self.invalid_responses.get(),
            "rejections": self.rejections.get(),
            "heavy_calls": self.heavy_calls.get(),
        })
    }
}

/// Counts one instance in `plinth_plugin_instances_in_use` while it serves.
struct InUse<'a>(&'a IntGauge);

impl<'a> InUse<'a> {
    fn new(gauge: &'a IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A loaded version's series in `plinth_plugin_info`: 1 while loaded (2 for a moment while
/// a reload of identical content swaps), removed when the last copy is dropped.
#[derive(Debug)]
struct PluginInfo {
    metrics: Arc<Metrics>,
    /// `plugin`, `version`, `hash`.
    labels: [String; 3],
}

impl PluginInfo {
    fn hold(metrics: Arc<Metrics>, labels: [String; 3]) -> Self {
        metrics.plugin_info.with_label_values(&labels).inc();
        Self { metrics, labels }
    }
}

impl Drop for PluginInfo {
    fn drop(&mut self) {
        let held = self.metrics.plugin_info.with_label_values(&self.labels);
        held.dec();
        if held.get() <= 0 {
            let _ = self.metrics.plugin_info.remove_label_values(&self.labels);
        }
    }
}

/// Admission to one plugin version: at most `max_concurrency` requests run, up to
/// `max_queued` more wait (each at most `queue_timeout`) for a turn, and the rest are
/// refused at once. A slow or stuck plugin thus costs its own callers a quick 503, never
/// a pile of waiting connections.
#[derive(Debug)]
pub struct Admission {
    turns: BoundedSemaphore,
    queue_timeout: Duration,
}

impl Admission {
    /// `queued`: kept equal to the number of requests waiting for a turn.
    pub fn new(limits: &Limits, queued: IntGauge) -> Self {
        Self {
            turns: BoundedSemaphore::new(
                limits.max_concurrency as usize,
                limits.max_queued as usize,
            )
            .mirror_waiting(queued),
            queue_timeout: limits.queue_timeout(),
        }
    }

    /// A turn on a heavy lane, waiting at most the queue timeout for one.
    async fn heavy_lane(&self, lanes: &HeavyLanes) -> Result<OwnedSemaphorePermit, PluginFailure> {
        tokio::time::timeout(self.queue_timeout, lanes.lanes.clone().acquire_owned())
            .await
            .map_err(|_| {
                PluginFailure::Overloaded(format!(
                    "no heavy-call lane within the queue timeout of {:?}",
                    self.queue_timeout
                ))
            })?
            .map_err(|_| PluginFailure::Overloaded("heavy-call lanes closed".into()))
    }

    async fn admit(&self) -> Result<OwnedSemaphorePermit, PluginFailure> {
        self.turns
            .acquire(Some(self.queue_timeout))
            .await
            .map_err(|refusal| {
                PluginFailure::Overloaded(match refusal {
                    Refusal::LineFull => {
                        "the plugin's concurrency limit is reached and its queue is full".into()
                    }
                    Refusal::TimedOut(limit) => {
                        format!("no turn within the queue timeout of {limit:?}")
                    }
                })
            })
    }
}

/// A compiled, linked plugin ready to be instantiated per request.
pub struct ReadyComponent {
    pub counters: PluginCounters,
    pub(crate) admission: Admission,
    pub(crate) engine: Engine,
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) ticker: EpochTicker,
    pub(crate) heavy_lanes: HeavyLanes,
    pub(crate) heavy: HeavyMark,
    /// Set by a heavy call that held its thread past [`HOLDING_STRETCH`].
    pub(crate) holds_threads: HeavyMark,
    pub(crate) entry: Entry,
    pub(crate) plugin_name: Arc<str>,
    pub(crate) capabilities: PluginCapabilities,
    pub(crate) memory_bytes: usize,
    pub(crate) timeout: Duration,
    pub(crate) max_response_bytes: usize,
    /// `limits.reuse_instance_for`: 0, a fresh instance per request.
    pub(crate) reuse_for: u32,
    /// Instances between requests, most recently used last (only when `reuse_for > 0`).
    pub(crate) parked: std::sync::Mutex<Vec<Parked>>,
    /// How many may be parked ([`PluginEngine::max_parked`]).
    pub(crate) max_parked: usize,
}

/// Reusable instances parked per plugin version at most: enough to keep every worker
/// thread busy with warm ones; more would only hold memory.
const MAX_PARKED: usize = 16;

/// An instance, its store and its slot, between two requests (`limits.reuse_instance_for`).
pub(crate) struct Parked {
    store: Store<InstanceState>,
    instance: Plugin,
    served: u32,
    _slot: OwnedSemaphorePermit,
}

impl std::fmt::Debug for ReadyComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadyComponent")
            .field("plugin_name", &self.plugin_name)
            .field("memory_bytes", &self.memory_bytes)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ReadyComponent {
    /// Runs `request` in a fresh instance (or, for a plugin that opts into reuse, a parked
    /// one) and counts its outcome.
    pub async fn call(&self, request: &Request) -> Result<Response, PluginFailure> {
        let result = if self.holds_threads.is_set() && workers::on_worker_pool() {
            // The worker's queue goes to another thread first, then this thread serves
            // the call alone: what it cannot cut short delays no other request.
            workers::hand_over(|| tokio::runtime::Handle::current().block_on(self.run(request)))
        } else {
            self.run(request).await
        };
        self.counters.count(&result);
        result
    }

    /// Instantiates once without handling a request: a version that cannot even start
    /// (e.g. its initial memory exceeds its limit) is refused before it is swapped in.
    pub async fn smoke_test(&self) -> anyhow::Result<()> {
        let mut store = self.new_store(Arc::from("smoke-test"));
        match &self.entry {
            Entry::Plinth(pre) => pre.instantiate_async(&mut store).await.map(drop),
            Entry::WasiHttp(pre) => pre.instantiate_async(&mut store).await.map(drop),
        }
        .map_err(|err| anyhow::anyhow!("instantiating the component failed: {err:#}"))
    }

    async fn run(&self, request: &Request) -> Result<Response, PluginFailure> {
        let (_turn, _lane) = async {
            let turn = self.admission.admit().await?;
            let lane = if self.heavy.is_set() {
                Some(self.admission.heavy_lane(&self.heavy_lanes).await?)
            } else {
                None
            };
            Ok::<_, PluginFailure>((turn, lane))
        }
        .instrument(trace_span!("admission wait"))
        .await?;
        let _in_use = InUse::new(&self.counters.in_use);
        let request_id: Arc<str> = Arc::from(request.request_id.as_str());
        let (mut store, mut instance, served, slot) = match self.unpark(request_id.clone()) {
            Some(parked) => (
                parked.store,
                Some(parked.instance),
                parked.served,
                parked._slot,
            ),
            None => {
                let slot = tokio::time::timeout(SLOT_WAIT, self.slots.clone().acquire_owned())
                    .instrument(trace_span!("instance slot wait"))
                    .await
                    .map_err(|_| {
                        PluginFailure::Overloaded("no instance slot freed in time".into())
                    })?
                    .map_err(|_| PluginFailure::Overloaded("instance slots closed".into()))?;
                (self.new_store(request_id), None, 0, slot)
            }
        };
        let run = async {
            let pre = match &self.entry {
                Entry::Plinth(pre) => pre,
                Entry::WasiHttp(pre) => {
                    let proxy = self.instantiated(pre.instantiate_async(&mut store)).await?;
                    return wasi_http::handle(&proxy, &mut store, request, self.max_response_bytes)
                        .instrument(trace_span!("guest call", plinth.plugin = %self.plugin_name))
                        .await
                        .map_err(|failure| match failure {
                            wasi_http::Failure::Trap(err) => self.classify(err, false),
                            wasi_http::Failure::Invalid(message) => {
                                PluginFailure::InvalidResponse(message)
                            }
                        });
                }
            };
            let instance = match &mut instance {
                Some(instance) => instance,
                None => {
                    instance.insert(self.instantiated(pre.instantiate_async(&mut store)).await?)
                }
            };
            instance
                .plinth_plugin_handler()
                .call_handle(&mut store, request)
                .instrument(trace_span!("guest call", plinth.plugin = %self.plugin_name))
                .await
                .map_err(|err| self.classify(err, false))
        };
        // The epoch deadline stops a guest only while its code runs; this one also stops
        // a guest waiting on the host (a slow statement, the hashing queue, a sleep).
        // Dropping the call drops the store, and with it any open transaction.
        let outcome = tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| PluginFailure::Timeout(self.timeout));
        if matches!(outcome, Ok(Ok(_))) {
            // The last stretch: the guest's last steps and the host lifting its answer. A
            // failed call's (the trap's unwinding and backtrace) is the failure's cost, not
            // the plugin's way of working.
            store.data_mut().held.lap();
        }
        self.note_cost(store.data().limits.peak_memory, store.data().held.longest());
        // A trap or a timeout leaves the instance unusable: it is dropped here.
        let response = outcome??;
        validate_response(&response, self.max_response_bytes)?;
        if let Some(instance) = instance {
            self.park(Parked {
                store,
                instance,
                served: served + 1,
                _slot: slot,
            });
        }
        Ok(response)
    }

    /// Awaits an instantiation, timed into the plugin's instantiation histogram.
    async fn instantiated<T>(
        &self,
        instantiating: impl Future<Output = wasmtime::Result<T>>,
    ) -> Result<T, PluginFailure> {
        let started = Instant::now();
        let instance = instantiating
            .instrument(trace_span!("instantiate"))
            .await
            .map_err(|err| self.classify(err, true))?;
        self.counters
            .instantiation
            .observe(started.elapsed().as_secs_f64());
        Ok(instance)
    }

    /// A parked instance ready for the request `request_id`, if the plugin reuses them.
    fn unpark(&self, request_id: Arc<str>) -> Option<Parked> {
        if self.reuse_for == 0 {
            return None;
        }
        let mut parked = self
            .parked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()?;
        let state = parked.store.data_mut();
        state.stdout.start_request(request_id.clone());
        state.stderr.start_request(request_id.clone());
        state.capabilities = self.capabilities.instance(request_id);
        state.ticking = Some(self.ticker.ticking());
        self.arm_deadline(&mut parked.store);
        Some(parked)
    }

    /// Keeps an instance for a later request, unless it has served its share or enough
    /// are parked. What the request held is released first: its capability state (an open
    /// transaction is rolled back), its output lines, its claim on the epoch ticker.
    fn park(&self, mut parked: Parked) {
        if parked.served >= self.reuse_for || self.max_parked == 0 {
            return;
        }
        let state = parked.store.data_mut();
        state.capabilities = self.capabilities.instance(Arc::from("parked"));
        state.stdout.end_request();
        state.stderr.end_request();
        state.ticking = None;
        let mut all = self
            .parked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if all.len() < self.max_parked {
            all.push(parked);
        }
    }

    /// Whether this version's calls take turns on the heavy lanes now, and how many lanes
    /// the host has (shown by the admin API).
    pub fn heavy_status(&self) -> serde_json::Value {
        serde_json::json!({
            "marked": self.heavy.is_set(),
            "holds_threads": self.holds_threads.is_set(),
            "lanes": self.heavy_lanes.count,
        })
    }

    /// Puts the plugin on the heavy lanes if this call touched that much memory, and marks
    /// it as holding threads if it also held its thread that long at a stretch.
    fn note_cost(&self, peak_memory: usize, longest_stretch: Duration) {
        if peak_memory < HEAVY_MEMORY_BYTES {
            return;
        }
        self.counters.heavy_calls.inc();
        if longest_stretch >= HOLDING_STRETCH && self.holds_threads.set() {
            tracing::warn!(
                plugin = %self.plugin_name,
                held_ms = longest_stretch.as_millis() as u64,
                "a heavy call held its thread for {} ms or more without yielding: the \
                 plugin's calls hand their worker's queue to another thread first for {}s",
                HOLDING_STRETCH.as_millis(),
                HEAVY_FOR.as_secs()
            );
        }
        if self.heavy.set() {
            tracing::warn!(
                plugin = %self.plugin_name,
                memory_mib = peak_memory / (1024 * 1024),
                lanes = self.heavy_lanes.count,
                "a call grew its memory past {} MiB: the plugin's calls take turns on the \
                 heavy lanes for {}s",
                HEAVY_MEMORY_BYTES / (1024 * 1024),
                HEAVY_FOR.as_secs()
            );
        }
    }

    /// A store for one request. WASI gets nothing beyond what the world needs: no
    /// preopened directories, network, environment or arguments; stdout and stderr
    /// become log lines tagged with the plugin and `request_id`.
    fn new_store(&self, request_id: Arc<str>) -> Store<InstanceState> {
        let output =
            |stream| GuestOutput::new(self.plugin_name.clone(), request_id.clone(), stream);
        let (stdout, stderr) = (output(GuestStream::Stdout), output(GuestStream::Stderr));
        let state = InstanceState {
            // Said explicitly, not left to defaults: no sockets, no name lookups. Clocks
            // and randomness stay (std's `Instant`, `SystemTime` and hash maps need them).
            wasi: WasiCtx::builder()
                .stdout(stdout.clone())
                .stderr(stderr.clone())
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            limits: TrackedLimits {
                limits: StoreLimitsBuilder::new()
                    .memory_size(self.memory_bytes)
                    .instances(64)
                    .tables(64)
                    .memories(4)
                    .build(),
                peak_memory: 0,
            },
            capabilities: self.capabilities.instance(request_id),
            stdout,
            stderr,
            ticking: Some(self.ticker.ticking()),
            held: HoldClock::default(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        self.arm_deadline(&mut store);
        store
    }

    /// Wake at every tick: yield to tokio while time remains, trap once it has run out.
    fn arm_deadline(&self, store: &mut Store<InstanceState>) {
        let deadline = Instant::now() + self.timeout;
        store.data_mut().held.start();
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |mut store| {
            if Instant::now() >= deadline {
                return Ok(UpdateDeadline::Interrupt);
            }
            let held = &mut store.data_mut().held;
            held.lap();
            let resumed_us = held.resumed_us.clone();
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(YieldOnce {
                    yielded: false,
                    resumed_us,
                }),
            ))
        });
    }

    fn classify(&self, err: wasmtime::Error, instantiating: bool) -> PluginFailure {
        if let Some(Trap::Interrupt) = err.downcast_ref::<Trap>() {
            return PluginFailure::Timeout(self.timeout);
        }
        let message = format!("{err:#}");
        if instantiating && message.contains("maximum concurrent") {
            return PluginFailure::Overloaded(message);
        }
        PluginFailure::Trap(message)
    }
}

fn validate_response(response: &Response, max_body_bytes: usize) -> Result<(), PluginFailure> {
    if response.body.len() > max_body_bytes {
        return Err(PluginFailure::InvalidResponse(format!(
            "the body of {} bytes exceeds `limits.max_response_mb` ({max_body_bytes} bytes)",
            response.body.len()
        )));
    }
    if !(200..=599).contains(&response.status) {
        return Err(PluginFailure::InvalidResponse(format!(
            "status {} is outside 200-599",
            response.status
        )));
    }
    if response.headers.len() > MAX_RESPONSE_HEADERS {
        return Err(PluginFailure::InvalidResponse(format!(
            "{} headers exceed the limit of {MAX_RESPONSE_HEADERS}",
            response.headers.len()
        )));
    }
    let header_bytes: usize = response
        .headers
        .iter()
        .map(|(n, v)| n.len() + v.len())
        .sum();
    if header_bytes > MAX_RESPONSE_HEADER_BYTES {
        return Err(PluginFailure::InvalidResponse(format!(
            "headers of {header_bytes} bytes exceed the limit of {MAX_RESPONSE_HEADER_BYTES}"
        )));
    }
    for (name, value) in &response.headers {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err()
            || http::HeaderValue::from_str(value).is_err()
        {
            return Err(PluginFailure::InvalidResponse(format!(
                "header `{}` is not valid HTTP",
                name.escape_debug()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_has_the_slots_asked_for_and_parks_within_a_sixteenth_of_them() -> anyhow::Result<()>
    {
        let metrics = Arc::new(Metrics::new(false)?);
        for (instances, parked) in [(1, 0), (15, 0), (16, 1), (100, 6), (256, 16), (1_000, 16)] {
            let engine = PluginEngine::new(None, instances, metrics.clone())?;
            assert_eq!(engine.slots().available_permits(), instances as usize);
            assert_eq!(engine.max_parked(), parked, "{instances} slots");
        }
        assert!(PluginEngine::new(None, 0, metrics).is_err());
        Ok(())
    }
}
