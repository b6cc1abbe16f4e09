//! # Plinth host
//!
//! Plinth serves HTTP by routing each request to a WebAssembly component (a *plugin*)
//! chosen by the plugins' manifests. The host owns everything cross-cutting; plugins see
//! only the `plinth:plugin` WIT world (`wit/plugin.wit`).
//!
//! ## The flow
//!
//! 1. **Start-up** ([`Application::build`]): read [`Config`] from the environment, open
//!    the shared [`capabilities`] (the database backend, the key-value store, tokens,
//!    password hashing) and read the operator policy, create the
//!    [`plugins::runtime::PluginEngine`] (pooling allocator, epoch ticker), load every
//!    plugin in `PLUGINS_DIR` ([`plugins::load_all`]: manifest → grants checked against
//!    the policy → compile → check imports against grants → link granted capabilities →
//!    `instantiate_pre` → prepare its data set and apply its migrations → smoke
//!    instantiation), build one [`plugins::routes::RouteTable`] (conflicts are errors),
//!    create the first superuser in the accounts data set, bind the socket.
//! 2. **Serving** ([`Application::run_until`]): hyper accepts connections within the
//!    limits of [`connections`] (cap, header and idle timeouts); each request goes through
//!    [`pipeline::handle`], the one place the request path is composed.
//! 3. **Per request**: resolve the route against a snapshot of the table, read the body
//!    within the limit, instantiate the plugin into a fresh `Store` with its memory limit and
//!    deadline, call `handler.handle`, validate the response. Failures of any step become
//!    docs/API.md error bodies in [`error::ApiError::into_response`]. Each request logs
//!    one access line under its request id ([`telemetry`]); with `METRICS_ADDR` it is
//!    measured ([`telemetry::metrics`]), with an OTLP endpoint it is one trace whose
//!    spans reach into the plugin's host calls ([`telemetry::traces`]).
//! 4. **Shutdown**: on SIGINT/SIGTERM stop accepting, let in-flight requests finish within
//!    the grace period, exit 0.
//!
//! ## Invariants
//!
//! - A plugin can fail only its own request: traps, timeouts, memory exhaustion and bad
//!   responses are per-store and map to 500/504.
//! - No secret or credential reaches a plugin: `Authorization` is stripped; capabilities
//!   that need secrets run in the host.

pub mod admin;
pub mod authn;
pub mod bindings;
pub mod bounded;
pub mod capabilities;
pub mod config;
pub mod connections;
pub mod error;
pub mod fleet;
pub mod middleware;
pub mod openapi;
pub mod pipeline;
pub mod plugins;
#[cfg(test)]
mod properties;
pub mod readiness;
pub mod request_id;
pub mod scaffold;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod workers;

pub use config::Config;
pub use server::Application;
