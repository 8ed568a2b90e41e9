//! The `s3://` destination from the command line: reaching it (`open_s3`, which `era5 sync`
//! uses before it lists anything: credentials resolved, the bucket answering) and
//! `era5 uploads`, which lists the open multipart uploads under a destination prefix and, with
//! `--abort`, aborts those older than `--older-than`.
//!
//! Output of `era5 uploads`: one line per upload, `KEY<TAB>UPLOAD_ID<TAB>INITIATED<TAB>STATE`
//! (STATE: `open`, `aborted` or `abort-failed`), or one JSON object per line with `--json`;
//! a summary line on stderr. Exit 0, or 1 when an abort failed.

use std::sync::Arc;
use std::time::Duration;

use common::error::InputError;
use engine::{Destination, EngineConfig, Progress};
use s3dest::{ConnectError, Copier, DestConfig, S3Mirror};
use transport::retry::RetryPolicy;
use transport::{ConnectionStats, Source};

use crate::args::UploadsArgs;
use crate::config::dest_store;
use crate::exit::{ExitCode, Failure};

/// Connects to the destination and checks its bucket answers, then builds the destination the
/// lease loop copies through. Missing credentials are bad input (exit 2); a bucket that is
/// not there or not ours is a runtime failure (exit 1).
pub async fn open_s3(
    dest: &DestConfig,
    source: &Source,
    engine: &EngineConfig,
    progress: Arc<Progress>,
) -> Result<(Arc<dyn Destination>, Arc<ConnectionStats>), Failure> {
    let (client, http) = connect(dest, &engine.retry).await?;
    let connections = dest.pool.max_connections;
    let copier = Copier::new(
        source.clone(),
        client,
        dest.target.clone(),
        engine,
        connections,
        progress,
    );
    let window = copier.scheduler.max();
    let mirror: Arc<dyn Destination> = S3Mirror::new(copier, window + 2);
    Ok((mirror, http.stats()))
}

/// The destination's client (`s3dest::connect`): missing credentials are bad input (exit 2),
/// a bucket that is not there or not ours a runtime failure (exit 1).
pub(crate) async fn connect(
    dest: &DestConfig,
    retry: &RetryPolicy,
) -> Result<(aws_sdk_s3::Client, transport::BoundedHttpClient), Failure> {
    s3dest::connect(dest, retry)
        .await
        .map_err(|error| match error {
            ConnectError::NoCredentials { .. } => Failure::Input(error.to_string()),
            ConnectError::Unusable { .. } => Failure::Runtime(error.to_string()),
        })
}

/// `era5 uploads`, validated.
#[derive(Debug)]
pub struct UploadsConfig {
    dest: DestConfig,
    older_than: Duration,
    abort: bool,
    json: bool,
}

impl TryFrom<&UploadsArgs> for UploadsConfig {
    type Error = InputError;

    fn try_from(args: &UploadsArgs) -> Result<Self, InputError> {
        let dest = dest_store(&args.dest, &args.dest_store, 8)?;
        let older_than = parse_age(&args.older_than)?;
        Ok(Self {
            dest,
            older_than,
            abort: args.abort,
            json: args.json,
        })
    }
}

/// `--older-than`: a duration, `0s` included (every open upload).
fn parse_age(text: &str) -> Result<Duration, InputError> {
    let bad = || InputError::BadValue {
        flag: "--older-than",
        value: text.to_string(),
        reason: "expected a duration such as 24h, 1h30m, 90m or 0s".into(),
    };
    common::units::parse_duration(text).ok_or_else(bad)
}

/// Runs `era5 uploads`.
pub async fn run(config: UploadsConfig) -> Result<ExitCode, Failure> {
    let retry = RetryPolicy::default();
    let (client, _http) = connect(&config.dest, &retry).await?;
    let target = &config.dest.target;
    let open = s3dest::uploads::list(&client, &target.bucket, &target.prefix, &retry)
        .await
        .map_err(|why| Failure::Runtime(format!("listing the open uploads of {target}: {why}")))?;
    let stale: Vec<_> = open
        .iter()
        .filter(|upload| upload.age().is_none_or(|age| age >= config.older_than))
        .collect();
    let (mut aborted, mut failed) = (0, 0);
    for upload in &stale {
        let state = if config.abort {
            match s3dest::uploads::abort(
                &client,
                &target.bucket,
                &upload.key,
                &upload.upload_id,
                &retry,
            )
            .await
            {
                Ok(()) => {
                    aborted += 1;
                    "aborted"
                }
                Err(why) => {
                    failed += 1;
                    eprintln!(
                        "era5: aborting {} ({}) failed: {why}",
                        upload.key, upload.upload_id
                    );
                    "abort-failed"
                }
            }
        } else {
            "open"
        };
        if config.json {
            println!(
                "{}",
                serde_json::json!({
                    "key": upload.key,
                    "upload_id": upload.upload_id,
                    "initiated": upload.initiated,
                    "state": state,
                })
            );
        } else {
            println!(
                "{}\t{}\t{}\t{state}",
                upload.key, upload.upload_id, upload.initiated
            );
        }
    }
    let older = humantime_secs(config.older_than);
    eprintln!(
        "era5: {} open uploads under {target}, {} started {older} ago or more{}",
        open.len(),
        stale.len(),
        if config.abort {
            format!("; {aborted} aborted, {failed} failed")
        } else {
            String::new()
        }
    );
    Ok(if failed == 0 {
        ExitCode::Success
    } else {
        ExitCode::Failed
    })
}

fn humantime_secs(duration: Duration) -> String {
    jiff::SignedDuration::try_from(duration)
        .map_or_else(|_| format!("{duration:?}"), |d| format!("{d:#}"))
}
