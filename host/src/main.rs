//! `plinth`: the Plinth host. Configuration comes from the environment (see docs/API.md).

use plinth_host::{Application, Config, server, telemetry};

/// mimalloc rather than glibc's malloc: every request allocates and frees across two
/// worker threads (headers, bodies, rows, the log line). Measured (BENCHMARKS.md, issue 14):
/// `/hello/x` +5–7%, `users/me` on SQLite +11–15%, `/health` unchanged.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Scheduler ticks between checks for I/O and timers (tokio's default: 61). Guests run in
/// slices of one epoch tick; at the default, a worker busy with spinning guests would
/// notice new connections only every ~61 slices.
const EVENT_INTERVAL: u32 = 8;

/// Scheduler ticks between looks at the shared queue (tokio's default: 31), where work
/// woken from outside a worker waits; short for the same reason.
const GLOBAL_QUEUE_INTERVAL: u32 = 4;

fn main() -> std::process::ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("plinth: configuration error: {err:#}");
            return std::process::ExitCode::from(2);
        }
    };
    // Before the runtime, and dropped after it: the trace exporter's client and its last
    // flush block, which a runtime worker must not.
    let _log_guard =
        match telemetry::init(config.log_format, config.traces.as_ref(), &config.host_id) {
            Ok(guard) => guard,
            Err(err) => {
                eprintln!("plinth: cannot start logging or tracing: {err:#}");
                return std::process::ExitCode::FAILURE;
            }
        };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .event_interval(EVENT_INTERVAL)
        .global_queue_interval(GLOBAL_QUEUE_INTERVAL)
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("plinth: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(serve(config));
    // Tasks still running (connections past the grace period) end here, before the
    // guard writes the last lines.
    drop(runtime);
    code
}

async fn serve(config: Config) -> std::process::ExitCode {
    match run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("plinth: {err:#}");
            eprintln!("plinth: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    let addr = app.local_addr()?;
    tracing::info!(%addr, "listening on http://{addr}");
    app.run_until(server::shutdown_signal()).await
}
