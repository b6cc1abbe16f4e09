//! The HTTP server: accept loop, connections, graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::capabilities::{self, Capabilities};
use crate::config::Config;
use crate::connections::{Activity, Admission, ConnectionGate, ConnectionLimits, TrackedStream};
use crate::fleet::Fleet;
use crate::middleware::rate_limit::RateLimiter;
use crate::pipeline;
use crate::plugins::{self, Registry, runtime::PluginEngine};
use crate::state::AppState;
use crate::telemetry::metrics::Metrics;

/// A built host: plugins loaded, socket bound, not yet serving.
///
/// `build` does everything that can fail at start-up, so a misconfiguration is reported
/// before the first connection is accepted; `run_until` serves.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    /// `METRICS_ADDR`: the Prometheus exposition, apart from the public port.
    metrics_listener: Option<TcpListener>,
    /// Acts on other hosts' reloads and reports this host's versions (with Redis).
    fleet_task: Option<tokio::task::JoinHandle<()>>,
    state: Arc<AppState>,
    shutdown_grace: Duration,
    connection_limits: ConnectionLimits,
    /// Applies changes in `PLUGINS_DIR` while it lives.
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        if config.tokens.ephemeral_secret {
            tracing::warn!(
                "JWT_SECRET is not set: using a random secret for this process; tokens will \
                 not survive a restart nor be accepted by other instances"
            );
        }
        if config.sql.ephemeral_role_secret && config.sql.url.starts_with("postgres") {
            tracing::warn!(
                "DATABASE_ROLE_SECRET is not set: the data set roles get passwords random to \
                 this process; other hosts sharing the database cannot connect as them"
            );
        }
        let metrics = Arc::new(Metrics::new(config.metrics_addr.is_some())?);
        let capabilities = Arc::new(Capabilities::connect(&config, &metrics).await?);
        tracing::info!(
            policy = capabilities.policy.source(),
            grants = %capabilities.policy.summary(),
            "operator policy"
        );
        let loading = std::time::Instant::now();
        let engine = PluginEngine::new(
            config.plugin_cache_dir.as_deref(),
            config.plugin_instances,
            metrics.clone(),
        )?;
        let table = plugins::load_all(&engine, &capabilities, &config.plugins_dir).await?;
        let stats = engine.compile_stats();
        tracing::info!(
            dir = %config.plugins_dir.display(),
            plugins = table.plugins().len(),
            elapsed_ms = loading.elapsed().as_millis() as u64,
            from_cache = stats.map(|s| s.cache_hits),
            compiled = stats.map(|s| s.compiled),
            "plugins ready"
        );
        // After the plugins: their migrations make the accounts data set's tables.
        if let Some(user) = &config.first_superuser {
            capabilities::bootstrap::ensure_first_superuser(
                &capabilities,
                &config.accounts_data_set,
                user,
            )
            .await?;
        }
        let listener = TcpListener::bind(config.bind_addr)
            .await
            .with_context(|| format!("cannot listen on BIND_ADDR {}", config.bind_addr))?;
        let metrics_listener = match config.metrics_addr {
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on METRICS_ADDR {addr}"))?;
                let metrics_addr = listener.local_addr()?;
                tracing::info!(%metrics_addr, "metrics on http://{metrics_addr}/metrics");
                Some(listener)
            }
            None => None,
        };
        let registry = Arc::new(Registry::new(
            table,
            engine,
            capabilities.clone(),
            config.plugins_dir.clone(),
        ));
        let fleet = Arc::new(Fleet::new(
            config.host_id.clone(),
            capabilities.kv.clone(),
            &config.key_prefix,
        ));
        let fleet_task = fleet.clone().spawn(registry.clone());
        let watcher = if config.watch_plugins {
            Some(plugins::watcher::watch(registry.clone())?)
        } else {
            None
        };
        let state = Arc::new(AppState {
            registry,
            rate_limiter: RateLimiter::new(
                capabilities.kv.clone(),
                &config.key_prefix,
                config.rate_limit_per_minute,
                config.auth_rate_limit_per_minute,
            ),
            cors: config.cors.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
            capabilities,
            max_body_bytes: config.max_body_bytes,
            accounts_data_set: config.accounts_data_set.clone(),
            body_read_timeout: config.connections.body_read_timeout,
            docs: config.docs,
            readiness: Default::default(),
            metrics,
            fleet,
        });
        Ok(Self {
            listener,
            metrics_listener,
            fleet_task,
            state,
            shutdown_grace: config.shutdown_grace,
            connection_limits: config.connections,
            _watcher: watcher,
        })
    }

    /// What every request shares: the plugin registry, the capabilities, the limits.
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// The bound address (the chosen port when `BIND_ADDR` ends in `:0`).
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until `shutdown` completes, then stops accepting and lets in-flight requests
    /// finish for up to the grace period.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let graceful = GracefulShutdown::new();
        let limits = self.connection_limits;
        let gate = ConnectionGate::new(limits.max_connections);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        builder.http2().timer(TokioTimer::new());
        tokio::pin!(shutdown);
        let metrics_server = self.metrics_listener.map(|listener| {
            tokio::spawn(crate::telemetry::metrics::serve(
                listener,
                self.state.metrics.clone(),
            ))
        });

        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // E.g. out of file descriptors: back off instead of spinning.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let place = match gate.admit() {
                Admission::Serve(place) => place,
                Admission::Refuse(refusal) => {
                    let state = self.state.clone();
                    tokio::spawn(async move {
                        crate::connections::refuse(stream, peer, state).await;
                        drop(refusal);
                    });
                    continue;
                }
                Admission::Drop => continue,
            };
            let state = self.state.clone();
            let activity = Arc::new(Activity::default());
            let requests = activity.clone();
            let service = service_fn(move |request| {
                let state = state.clone();
                let in_flight = requests.request();
                async move {
                    let response = pipeline::handle(state, request, peer).await;
                    drop(in_flight);
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let stream = TrackedStream::new(stream, activity.clone());
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                tokio::select! {
                    result = connection => {
                        if let Err(err) = result {
                            tracing::debug!(error = %err, %peer, "connection ended with an error");
                        }
                    }
                    () = activity.idle_for(limits.idle_timeout) => {
                        tracing::debug!(%peer, "closing an idle connection");
                    }
                }
                // The connection's place under MAX_CONNECTIONS is free again.
                drop(place);
            });
        }

        drop(self.listener);
        if let Some(metrics_server) = metrics_server {
            metrics_server.abort();
        }
        if let Some(fleet_task) = self.fleet_task {
            fleet_task.abort();
        }
        tracing::info!(in_flight_connections = graceful.count(), "shutting down");
        match tokio::time::timeout(self.shutdown_grace, graceful.shutdown()).await {
            Ok(()) => tracing::info!("all connections closed"),
            Err(_) => {
                tracing::warn!(grace = ?self.shutdown_grace, "grace period over; closing the rest")
            }
        }
        Ok(())
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
