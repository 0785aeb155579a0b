//! The `prime-sigv4-proxy` binary: parses arguments, loads the configuration, binds the
//! listeners and runs the proxy until SIGTERM/SIGINT; or, as `doctor`, checks the setup.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use prime_sigv4_proxy::config::Config;
use prime_sigv4_proxy::doctor;

/// mimalloc instead of glibc's malloc: a request makes many small, short-lived allocations
/// across threads, where glibc spent about 17% of the proxy's CPU under load (`perf record`
/// during `scripts/loadtest.sh`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for a refused configuration (the SPEC's contract).
const EXIT_CONFIG: u8 = 2;
/// Exit status when the proxy could not start for another reason (port taken, …).
const EXIT_START: u8 = 1;

/// How long the exit waits for blocking tasks (file reads) still running after the drain.
const BLOCKING_TASKS_AT_EXIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Local signing proxy for Amazon Prime APIs: routes by x-amz-marketplace, signs with
/// AWS SigV4, retries and rate-limits.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// TOML configuration file (built-in defaults < this file < PRIME_PROXY_* environment).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the merged configuration, print it (secrets redacted) and exit.
    #[arg(long)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check whether this setup can work (configuration, credentials, and per region DNS,
    /// connect, TLS, clock and one signed probe), say what to do if not, and exit: 0 when
    /// every check passes, 1 when one fails, 2 when the configuration is invalid.
    Doctor(DoctorArgs),
}

#[derive(Debug, clap::Args)]
struct DoctorArgs {
    /// TOML configuration file, as for the proxy.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check only the region that serves this marketplace (e.g. US, DE, JP).
    #[arg(long, value_name = "MP")]
    marketplace: Option<String>,
    /// Print {"ok", "checks": [{"name", "region", "ok", "detail"}]} as JSON (for scripts).
    #[arg(long)]
    json: bool,
    /// Path (and query) of the signed GET probe; any answer but 403 means the signature
    /// was accepted.
    #[arg(long, value_name = "PATH", default_value = "/")]
    probe_path: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::Doctor(doctor_args)) = args.command {
        return run_doctor(doctor_args, args.config);
    }
    let config = match Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("prime-sigv4-proxy: configuration refused: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check_config {
        return match config.to_redacted_toml() {
            Ok(toml) => {
                print!("{toml}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("prime-sigv4-proxy: {error}");
                ExitCode::from(EXIT_CONFIG)
            }
        };
    }
    let logs = prime_sigv4_proxy::logging::init();
    if let Some(warning) = &logs.warning {
        tracing::warn!("{warning}");
    }
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    // One worker is a current-thread runtime: the accept loop, the connections and the
    // timers share one thread, with no work-stealing and no wake-ups across threads (a
    // multi-thread runtime with one worker still runs `serve` on this thread beside it).
    let mut runtime = match config.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        workers => {
            let mut runtime = tokio::runtime::Builder::new_multi_thread();
            runtime.worker_threads(workers);
            runtime
        }
    };
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("prime-sigv4-proxy: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_START);
        }
    };
    let status = runtime.block_on(serve(config));
    // Requests are drained by now. A blocking task still running (a certificate read stuck
    // on a hung volume) must not keep the process from exiting: it is left behind.
    runtime.shutdown_timeout(BLOCKING_TASKS_AT_EXIT);
    drop(logs); // flushes the last lines
    status
}

/// `doctor`: the report on stdout (text or JSON), and its exit status.
fn run_doctor(args: DoctorArgs, config: Option<PathBuf>) -> ExitCode {
    let options = doctor::Options {
        config_file: args.config.or(config),
        marketplace: args.marketplace,
        probe_path: args.probe_path,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("prime-sigv4-proxy: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_START);
        }
    };
    let outcome = runtime.block_on(doctor::run(&options));
    // A check stuck in a blocking task (a trust-root read on a hung volume) must not hold
    // up the answer: every check is already time-bound.
    runtime.shutdown_timeout(BLOCKING_TASKS_AT_EXIT);
    if args.json {
        println!("{}", outcome.report.to_json());
    } else {
        print!("{}", outcome.report.to_text());
    }
    ExitCode::from(outcome.exit)
}

async fn serve(config: Config) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, listen = %config.listen, "cannot bind `listen`");
            return ExitCode::from(EXIT_START);
        }
    };
    let admin_listener = match tokio::net::TcpListener::bind(config.admin_listen).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, admin_listen = %config.admin_listen, "cannot bind `admin_listen`");
            return ExitCode::from(EXIT_START);
        }
    };
    match prime_sigv4_proxy::run(config, listener, admin_listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            eprintln!("prime-sigv4-proxy: {error}");
            ExitCode::from(EXIT_START)
        }
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
