//! `era5 sync --progress json` (the default when stderr is not a terminal): progress as NDJSON
//! on stderr, one event per line, each as `docs/schemas/progress.schema.json` says:
//!
//! - `start`: a pass begins, with the plan's totals (`objects`, `bytes`);
//! - `object`: an object ended: `downloaded`, `present`, `verified_locally`, `superseded`,
//!   `failed` (with `reason_class` `transient`, `permanent` or `dest`, and the `reason`) or
//!   `not_finished`;
//! - `progress`: totals every `--progress-interval` seconds;
//! - `end`: the pass's totals.
//!
//! Every event carries `time` (RFC 3339), so a log collector can order them. A line is written
//! whole with one `write`; log lines (`--log-format json` makes them JSON too) may come
//! between events, so a reader keeps the lines whose `event` it knows.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::{Outcome, Progress};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use transport::RemoteObject;

/// Writes one event, whole, to stderr; a closed or full stderr loses it, nothing else.
fn emit(mut event: Value) {
    event["time"] = json!(jiff::Timestamp::now().to_string());
    let mut line = event.to_string();
    line.push('\n');
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// The `start` event of a pass over `objects`.
pub fn start(objects: &[RemoteObject]) {
    emit(json!({
        "event": "start",
        "objects": objects.len(),
        "bytes": objects.iter().map(|o| o.size).sum::<u64>(),
    }));
}

/// Sends an `object` event for every object `progress` sees end.
pub fn report_objects(progress: &Progress) {
    progress.on_object_end(|object, outcome| emit(object_event(object, outcome)));
}

fn object_event(object: &RemoteObject, outcome: &Outcome) -> Value {
    let (name, class, reason) = match outcome {
        Outcome::Downloaded => ("downloaded", None, None),
        Outcome::Present => ("present", None, None),
        Outcome::VerifiedLocally => ("verified_locally", None, None),
        Outcome::Superseded => ("superseded", None, None),
        Outcome::Cancelled => ("not_finished", None, None),
        Outcome::Failed { reason, permanent } => (
            "failed",
            Some(if *permanent { "permanent" } else { "transient" }),
            Some(reason.as_str()),
        ),
        Outcome::Local { reason, .. } => ("failed", Some("dest"), Some(reason.as_str())),
    };
    let mut event = json!({
        "event": "object",
        "key": object.key,
        "size": object.size,
        "outcome": name,
    });
    if let (Some(class), Some(reason)) = (class, reason) {
        event["reason_class"] = json!(class);
        event["reason"] = json!(reason);
    }
    event
}

/// `progress` events every `interval` until `stop`.
pub async fn report_totals(progress: Arc<Progress>, interval: Duration, stop: CancellationToken) {
    let started = Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let snapshot = progress.snapshot();
        let seconds = started.elapsed().as_secs_f64();
        emit(json!({
            "event": "progress",
            "objects_total": snapshot.objects_total,
            "objects_done": snapshot.objects_done,
            "objects_failed": snapshot.objects_failed,
            "bytes_total": snapshot.bytes_total,
            "bytes_downloaded": snapshot.bytes_downloaded,
            "seconds": seconds,
            "retries": snapshot.retries_total(),
        }));
    }
}

/// The `end` event of a pass: how many objects ended how, and the bytes received.
pub fn end(report: &engine::SyncReport, bytes_downloaded: u64) {
    emit(json!({
        "event": "end",
        "complete": report.all_verified(),
        "objects": report.results.len(),
        "done": report.count(Outcome::is_verified),
        "failed": report.count(|o| matches!(o, Outcome::Failed { .. } | Outcome::Local { .. })),
        "not_finished": report.count(|o| *o == Outcome::Cancelled),
        "bytes_downloaded": bytes_downloaded,
        "seconds": report.elapsed.as_secs_f64(),
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object() -> RemoteObject {
        RemoteObject {
            key: "e5.oper.an.sfc/202401/x.nc".into(),
            size: 5,
            etag: None,
            last_modified: None,
        }
    }

    #[test]
    fn failures_carry_their_class_and_reason() {
        let failed = object_event(
            &object(),
            &Outcome::Failed {
                reason: "403 Forbidden".into(),
                permanent: true,
            },
        );
        assert_eq!(failed["outcome"], "failed");
        assert_eq!(failed["reason_class"], "permanent");
        assert_eq!(failed["reason"], "403 Forbidden");
        let done = object_event(&object(), &Outcome::Downloaded);
        assert_eq!(done["outcome"], "downloaded");
        assert!(done.get("reason_class").is_none());
    }
}
