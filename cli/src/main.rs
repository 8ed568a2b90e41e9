//! `era5`: mirror the ERA5 reanalysis from S3 onto a filesystem.
//!
//! Exit status: 0 when every selected object is present and verified; 1 when some object
//! failed (each is listed with its reason) or the run could not proceed; 2 for bad input, with
//! a one-line error naming the bad value, before anything is written; 130 when interrupted.

mod args;
mod audit_cmd;
mod catalog_cmd;
mod cluster_cmd;
mod config;
mod discovery;
mod exit;
mod heap;
mod plan_cmd;
mod progress_display;
mod progress_events;
mod signals;
mod sync_cmd;
mod sync_summary;
mod uploads_cmd;
mod verify_cmd;

use clap::error::ErrorKind;
use transport::Source;

use crate::args::{Cli, Command};
use crate::config::{PlanConfig, SyncConfig};
use crate::exit::{ExitCode, Failure};

fn main() {
    let cli = match parse(std::env::args_os()) {
        Ok(cli) => cli,
        Err(error)
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) =>
        {
            error.exit()
        }
        Err(error) => {
            eprintln!("era5: {}", one_line(&error.render().to_string()));
            std::process::exit(ExitCode::BadInput as i32);
        }
    };
    // Only the commands that download churn body buffers; the coordinator's memory follows
    // its jobs' size, so it keeps glibc's defaults and gives memory back after a big plan.
    if matches!(cli.command, Command::Sync(_) | Command::Worker(_)) {
        heap::keep_freed_memory();
    }
    let long_running = matches!(cli.command, Command::Coordinator(_) | Command::Worker(_));
    // Long-running commands log through a writer that never blocks them: a full or closed
    // stderr pipe costs log lines, never a stop on SIGTERM.
    let log_writer = init_logging(
        if long_running { "info" } else { "warn" },
        cli.log_format == "json",
        long_running,
    );
    // TLS to Redis (rediss://) builds its configuration with the process's default provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let code = match run(cli) {
        Ok(code) => code,
        Err(Failure::Input(message)) => {
            report(&message);
            ExitCode::BadInput
        }
        Err(Failure::Runtime(message)) => {
            report(&message);
            ExitCode::Failed
        }
    };
    flush_logs(log_writer);
    std::process::exit(code as i32);
}

/// The one-line error, on stderr if anyone still reads it (`eprintln!` would panic on a
/// closed pipe).
fn report(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "era5: error: {message}");
}

/// Lets the log writer flush what it holds, for at most a second and a half: if its pipe is
/// full, the lines are lost rather than the exit delayed.
fn flush_logs(writer: Option<tracing_appender::non_blocking::WorkerGuard>) {
    let Some(writer) = writer else { return };
    let (done, flushed) = std::sync::mpsc::channel();
    let _ = std::thread::Builder::new()
        .name("era5-log-flush".into())
        .spawn(move || {
            drop(writer);
            let _ = done.send(());
        });
    let _ = flushed.recv_timeout(std::time::Duration::from_millis(1500));
}

/// The command line, with every argument's environment value hidden from `--help` (clap shows
/// them by default, and `ERA5_REDIS` or an endpoint URL may hold a password).
fn command() -> clap::Command {
    fn hide_env_values(command: clap::Command) -> clap::Command {
        let subcommands: Vec<String> = command
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect();
        let mut command = command.mut_args(|arg| arg.hide_env_values(true));
        for name in subcommands {
            command = command.mut_subcommand(name, hide_env_values);
        }
        command
    }
    hide_env_values(<Cli as clap::CommandFactory>::command())
}

/// Parses `args` with [`command`].
fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = command().try_get_matches_from(args)?;
    <Cli as clap::FromArgMatches>::from_arg_matches(&matches)
}

fn run(cli: Cli) -> Result<ExitCode, Failure> {
    match cli.command {
        Command::Catalog(args) => {
            let config = catalog_cmd::CatalogConfig::try_from(&args)
                .map_err(|e| Failure::Input(e.to_string()))?;
            runtime()?.block_on(catalog_cmd::run(config))
        }
        Command::Plan(args) => {
            let config = PlanConfig::try_from(&args).map_err(|e| Failure::Input(e.to_string()))?;
            runtime()?.block_on(plan(config))
        }
        Command::Sync(args) => {
            let config =
                SyncConfig::try_from(args.as_ref()).map_err(|e| Failure::Input(e.to_string()))?;
            runtime()?.block_on(sync_cmd::run(config))
        }
        Command::Uploads(args) => {
            let config = uploads_cmd::UploadsConfig::try_from(&args)
                .map_err(|e| Failure::Input(e.to_string()))?;
            runtime()?.block_on(uploads_cmd::run(config))
        }
        Command::Audit(args) => {
            let config = audit_cmd::AuditConfig::try_from(&args)
                .map_err(|e| Failure::Input(e.to_string()))?;
            runtime()?.block_on(audit_cmd::run(config))
        }
        Command::Verify(args) => {
            let config = verify_cmd::VerifyConfig::try_from(&args)
                .map_err(|e| Failure::Input(e.to_string()))?;
            runtime()?.block_on(verify_cmd::run(config))
        }
        Command::Coordinator(args) => {
            let config = cluster_cmd::coordinator_config(&args)?;
            until_stopped(|stop| cluster_cmd::coordinator(config, stop))
        }
        Command::Worker(args) => {
            let config = cluster_cmd::worker_config(&args)?;
            until_stopped(|stop| cluster_cmd::worker(config, args.http, stop))
        }
        Command::Submit(args) => {
            let channel = cluster_cmd::check_submit(&args)?;
            runtime()?.block_on(cluster_cmd::submit(args, channel))
        }
        Command::Status(args) => {
            let channel = cluster_cmd::operator_config(&args.coordinator)?;
            runtime()?.block_on(cluster_cmd::status(args, channel))
        }
        Command::Jobs(args) => {
            let channel = cluster_cmd::operator_config(&args)?;
            runtime()?.block_on(cluster_cmd::jobs(args, channel))
        }
        Command::Cancel(args) => {
            let channel = cluster_cmd::operator_config(&args.coordinator)?;
            runtime()?.block_on(cluster_cmd::cancel(args, channel))
        }
        Command::Retry(args) => {
            let channel = cluster_cmd::operator_config(&args.coordinator)?;
            runtime()?.block_on(cluster_cmd::retry(args, channel))
        }
        Command::Drain(args) => {
            let channel = cluster_cmd::operator_config(&args.coordinator)?;
            runtime()?.block_on(cluster_cmd::drain(args, channel))
        }
    }
}

/// Runs a long-running command until SIGTERM or SIGINT (see `cluster_cmd::stop`), then gives
/// the runtime's leftover tasks a moment and no more.
fn until_stopped<F, Fut>(command: F) -> Result<ExitCode, Failure>
where
    F: FnOnce(tokio_util::sync::CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<ExitCode, Failure>>,
{
    let stop = cluster_cmd::stop::on_signals()?;
    let runtime = runtime()?;
    let result = runtime.block_on(command(stop));
    // Dropping a runtime waits for its blocking tasks; a stuck one must not hold up the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the async runtime: {e}")))
}

async fn plan(config: PlanConfig) -> Result<ExitCode, Failure> {
    let source = Source::connect(&config.source).await;
    let retry = transport::retry::RetryPolicy::default();
    let found = transport::discover_detailed(&source, &config.selection, &retry)
        .await
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    discovery::check(&source, &config.selection, &found, &retry).await?;
    let mut found = found;
    let shard = config
        .shard
        .map(|shard| plan_cmd::ShardNote::take(&mut found.objects, shard));
    let listing = source.connection_stats().snapshot().traffic;
    let cost = plan_cmd::PlanCost::new(&listing, found.objects.len(), &config.prices);
    let mut stdout = std::io::stdout().lock();
    let written = if config.json {
        plan_cmd::write_json(&mut stdout, &found, &cost, shard.as_ref())
    } else {
        let written = plan_cmd::write_table(&mut stdout, &found);
        if let Some(shard) = &shard {
            eprintln!("{shard}");
        }
        eprintln!("{cost}");
        written
    };
    crate::exit::written(written, "the plan")?;
    Ok(ExitCode::Success)
}

/// Clap's multi-line error as one line: the message without the usage and help hints.
fn one_line(rendered: &str) -> String {
    rendered
        .lines()
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more information"))
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Log lines a non-blocking writer holds before it drops new ones (about a megabyte).
const LOG_LINES_BUFFERED: usize = 4096;

/// Logs to stderr. With `non_blocking`, lines go through a writer thread that drops them when
/// stderr does not keep up, and the returned guard flushes it; either way a failed write is
/// ignored (tracing's default is to report it with `eprintln!`, which panics on a closed
/// pipe, killing whatever task was logging).
fn init_logging(
    default_level: &str,
    json: bool,
    non_blocking: bool,
) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let (writer, guard) = if non_blocking {
        let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(LOG_LINES_BUFFERED)
            .thread_name("era5-log-writer")
            .finish(std::io::stderr());
        (
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(writer),
            Some(guard),
        )
    } else {
        (
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
            None,
        )
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .log_internal_errors(false)
        .with_target(false);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    guard
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_errors_become_one_line() {
        let error = parse(["era5", "sync", "--product", "x"]).unwrap_err();
        let line = one_line(&error.render().to_string());
        assert!(!line.contains('\n'));
        assert!(
            line.starts_with("error: the following required arguments were not provided:"),
            "{line}"
        );
        assert!(line.contains("--start"), "{line}");
        let error = parse(["era5", "sync", "--verify", "sha", "--product", "x"]).unwrap_err();
        let line = one_line(&error.render().to_string());
        assert!(
            line.contains("'sha'") && line.contains("--verify"),
            "{line}"
        );
    }
}
