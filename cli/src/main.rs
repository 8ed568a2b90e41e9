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
mod heap;
mod plan_cmd;
mod progress_display;
mod signals;
mod sync_cmd;
mod verify_cmd;

use clap::Parser;
use clap::error::ErrorKind;
use common::source::Source;

use crate::args::{Cli, Command};
use crate::config::{PlanConfig, SyncConfig};

/// The process exit statuses scripts rely on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    /// Everything selected is present and verified.
    Success = 0,
    /// Some object failed, or the run could not proceed.
    Failed = 1,
    /// Bad input; nothing was written.
    BadInput = 2,
    /// Stopped by Ctrl-C or SIGTERM.
    Interrupted = 130,
}

/// Why a command stopped early.
#[derive(Debug)]
pub enum Failure {
    /// Bad input (exit 2).
    Input(String),
    /// Anything else (exit 1).
    Runtime(String),
}

fn main() {
    let cli = match Cli::try_parse() {
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
    init_logging(
        if long_running { "info" } else { "warn" },
        cli.log_format == "json",
    );
    let code = match run(cli) {
        Ok(code) => code,
        Err(Failure::Input(message)) => {
            eprintln!("era5: error: {message}");
            ExitCode::BadInput
        }
        Err(Failure::Runtime(message)) => {
            eprintln!("era5: error: {message}");
            ExitCode::Failed
        }
    };
    std::process::exit(code as i32);
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
            let config = SyncConfig::try_from(&args).map_err(|e| Failure::Input(e.to_string()))?;
            runtime()?.block_on(sync_cmd::run(config))
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
            cluster_cmd::check_coordinator(&args)?;
            runtime()?.block_on(cluster_cmd::coordinator(args))
        }
        Command::Worker(args) => {
            cluster_cmd::check_worker(&args)?;
            runtime()?.block_on(cluster_cmd::worker(args))
        }
        Command::Submit(args) => {
            cluster_cmd::check_submit(&args)?;
            runtime()?.block_on(cluster_cmd::submit(args))
        }
        Command::Status(args) => runtime()?.block_on(cluster_cmd::status(args)),
        Command::Jobs(args) => runtime()?.block_on(cluster_cmd::jobs(args)),
        Command::Cancel(args) => runtime()?.block_on(cluster_cmd::cancel(args)),
        Command::Retry(args) => runtime()?.block_on(cluster_cmd::retry(args)),
        Command::Drain(args) => runtime()?.block_on(cluster_cmd::drain(args)),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the async runtime: {e}")))
}

async fn plan(config: PlanConfig) -> Result<ExitCode, Failure> {
    let source = Source::connect(&config.source).await;
    let retry = Default::default();
    let found = common::source::discover_detailed(&source, &config.selection, &retry)
        .await
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    discovery::check(&source, &config.selection, &found, &retry).await?;
    let mut stdout = std::io::stdout().lock();
    let written = if config.json {
        plan_cmd::write_json(&mut stdout, &found)
    } else {
        plan_cmd::write_table(&mut stdout, &found)
    };
    written.map_err(|e| Failure::Runtime(format!("writing the plan failed: {e}")))?;
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

fn init_logging(default_level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_errors_become_one_line() {
        let error = Cli::try_parse_from(["era5", "sync", "--product", "x"]).unwrap_err();
        let line = one_line(&error.render().to_string());
        assert!(!line.contains('\n'));
        assert!(
            line.starts_with("error: the following required arguments were not provided:"),
            "{line}"
        );
        assert!(line.contains("--start"), "{line}");
        let error =
            Cli::try_parse_from(["era5", "sync", "--verify", "sha", "--product", "x"]).unwrap_err();
        let line = one_line(&error.render().to_string());
        assert!(
            line.contains("'sha'") && line.contains("--verify"),
            "{line}"
        );
    }
}
