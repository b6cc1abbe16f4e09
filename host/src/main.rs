//! `plinth`: the Plinth host. `plinth` (or `plinth serve`) serves, configured by the
//! environment (README.md "Configuration"); `plinth check DIR` checks a plugin directory
//! offline, as a host would load it; `plinth deploy DIR` checks, then copies it into
//! PLUGINS_DIR; `plinth new NAME` starts a plugin project; `plinth build [DIR]` builds one
//! into a plugin directory.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use plinth_host::capabilities::policy::Policy;
use plinth_host::plugins::check;
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

#[derive(Parser)]
#[command(
    name = "plinth",
    version,
    about = "The Plinth host: serves HTTP endpoints from sandboxed WebAssembly plugins."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default). Configured by environment variables: BIND_ADDR, PLUGINS_DIR,
    /// DATABASE_URL, REDIS_URL, ... (README.md "Configuration").
    Serve,
    /// Start a plugin project: plugin.toml with one described route, the code, a test
    /// and a README with the commands to build, check and deploy it.
    New {
        /// The plugin's name: a-z, 0-9 and `_` (also its route prefix and component name).
        name: String,
        #[arg(long, value_enum, default_value = "rust")]
        lang: plinth_host::scaffold::Language,
        /// Where to create it (default: ./NAME); must not exist yet.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// The Plinth checkout a Rust plugin takes plinth-sdk from (default: the one this
        /// `plinth` was built in).
        #[arg(long, value_name = "DIR")]
        sdk: Option<PathBuf>,
    },
    /// Build a plugin's component (Rust: cargo for wasm32-wasip2; Python: componentize-py;
    /// JavaScript: componentize-js)
    /// and lay out its plugin directory (manifest, component, schemas, migrations), ready
    /// for `check` and `deploy`. Prints the directory.
    Build {
        /// The plugin's sources: plugin.toml with Cargo.toml, app.py or app.js.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Where to lay it out, as OUT/<name> (default: the build's target/plinth).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Check a plugin directory as `check` does against PLUGINS_DIR, then copy it there the
    /// way a running host expects (files renamed into place, the manifest last), so a
    /// watching host serves it within a second. Nothing is copied when a check fails.
    Deploy {
        /// The plugin's directory: plugin.toml and the files it names.
        dir: PathBuf,
        /// Where the hosts read plugins from.
        #[arg(long, value_name = "DIR", env = "PLUGINS_DIR")]
        plugins_dir: PathBuf,
        /// The operator policy (default: PLUGINS_POLICY, else the development default).
        #[arg(long, value_name = "FILE", env = "PLUGINS_POLICY")]
        policy: Option<PathBuf>,
        /// The hosts' compilation cache: the component compiled by the check is kept there,
        /// so the host loading it compiles nothing (seconds for a Python or JS component).
        #[arg(long, value_name = "DIR", env = "PLUGIN_CACHE_DIR")]
        cache_dir: Option<PathBuf>,
    },
    /// Check a plugin directory offline, as a host would load it: the manifest and its
    /// route descriptions, the grants against the operator policy, the component, its
    /// imports and link, and (with --plugins-dir) its routes next to other plugins'.
    /// Prints every problem; exits 1 when there is one.
    Check {
        /// The plugin's directory: plugin.toml and the files it names.
        dir: PathBuf,
        /// A PLUGINS_DIR the plugin would join: its routes must not conflict with theirs.
        #[arg(long, value_name = "DIR")]
        plugins_dir: Option<PathBuf>,
        /// The operator policy to check grants against (default: PLUGINS_POLICY, else the
        /// development default, deploy/policy.toml).
        #[arg(long, value_name = "FILE", env = "PLUGINS_POLICY")]
        policy: Option<PathBuf>,
        /// Keep the compiled component in this compilation cache (the hosts'
        /// PLUGIN_CACHE_DIR), so a host loading it compiles nothing.
        #[arg(long, value_name = "DIR", env = "PLUGIN_CACHE_DIR")]
        cache_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        None | Some(Command::Serve) => serve_from_env(),
        Some(Command::Check {
            dir,
            plugins_dir,
            policy,
            cache_dir,
        }) => check_plugin(
            &dir,
            plugins_dir.as_deref(),
            policy.as_deref(),
            cache_dir.as_deref(),
        ),
        Some(Command::Deploy {
            dir,
            plugins_dir,
            policy,
            cache_dir,
        }) => {
            let checked = check_plugin(
                &dir,
                Some(&plugins_dir),
                policy.as_deref(),
                cache_dir.as_deref(),
            );
            if checked != ExitCode::SUCCESS {
                return checked;
            }
            match check::deploy(&dir, &plugins_dir) {
                Ok(target) => {
                    let _ = writeln!(
                        std::io::stdout().lock(),
                        "plinth deploy: copied into {}",
                        target.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("plinth deploy: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Build { dir, out }) => {
            match plinth_host::plugins::build::build(&dir, out.as_deref()) {
                Ok(built) => {
                    let _ = writeln!(std::io::stdout().lock(), "{}", built.display());
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("plinth build: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::New {
            name,
            lang,
            dir,
            sdk,
        }) => new_plugin(&name, lang, dir, sdk.as_deref()),
    }
}

fn new_plugin(
    name: &str,
    lang: plinth_host::scaffold::Language,
    dir: Option<PathBuf>,
    sdk: Option<&std::path::Path>,
) -> ExitCode {
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    match plinth_host::scaffold::create(name, lang, &dir, sdk) {
        Ok(files) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "plinth new: created {}:", dir.display());
            for file in files {
                let _ = writeln!(out, "  {}", file.display());
            }
            let _ = writeln!(out, "Next: {}/README.md", dir.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("plinth new: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_plugin(
    dir: &std::path::Path,
    plugins_dir: Option<&std::path::Path>,
    policy: Option<&std::path::Path>,
    cache_dir: Option<&std::path::Path>,
) -> ExitCode {
    let policy = match Policy::load(policy, false) {
        Ok(policy) => policy,
        Err(err) => {
            eprintln!("plinth check: {err:#}");
            return ExitCode::from(2);
        }
    };
    // PLUGIN_CACHE_DIR=off: the hosts keep no cache, and neither does the check.
    let cache_dir = cache_dir.filter(|dir| dir.as_os_str() != "off");
    let checked = check::check(dir, &policy, plugins_dir, cache_dir);
    let plugin = checked.plugin.unwrap_or_else(|| dir.display().to_string());
    // The report is this command's output (stdout); a closed pipe is no reason to fail.
    let mut out = std::io::stdout().lock();
    if checked.problems.is_empty() {
        let neighbours = plugins_dir.map_or(String::new(), |d| {
            format!(", no conflict with {}", d.display())
        });
        let _ = writeln!(
            out,
            "plinth check: {plugin}: ok ({} routes{neighbours})",
            checked.routes
        );
        return ExitCode::SUCCESS;
    }
    let _ = writeln!(
        out,
        "plinth check: {plugin}: {} problem(s); a host would refuse it:",
        checked.problems.len()
    );
    for problem in &checked.problems {
        let _ = writeln!(out, "  - {problem}");
    }
    ExitCode::FAILURE
}

fn serve_from_env() -> ExitCode {
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
