//! `plinth`: the Plinth host. Configuration comes from the environment (see API.md).

use plinth_host::{Application, Config, server, telemetry};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("plinth: configuration error: {err:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let _log_guard = telemetry::init(config.log_format);
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
