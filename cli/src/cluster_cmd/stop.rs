//! Stopping the long-running commands (`coordinator`, `worker`) on SIGTERM or SIGINT, whatever
//! the async runtime or the log writer is doing.
//!
//! Signals are taken on a thread of their own, not by a task of the runtime: a task can be
//! starved, or blocked by whatever it shares a lock with (a log writer stuck on a full pipe
//! was one). The thread cancels the returned token, which starts an orderly stop, and arms a
//! deadline: a process still running [`STOP_DEADLINE`] later exits anyway. A second signal
//! exits at once.

use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tokio_util::sync::CancellationToken;

use crate::exit::Failure;

/// How long an orderly stop may take before the process exits regardless (inside the 10 s
/// that the operations guide promises, and well inside Kubernetes' grace periods).
pub const STOP_DEADLINE: Duration = Duration::from_secs(9);

/// Exit status when the deadline ends a stop that did not finish.
const FORCED_EXIT: i32 = 1;
/// Exit status on a second signal.
const INTERRUPTED_EXIT: i32 = 130;

/// A token cancelled on the first SIGTERM or SIGINT.
pub fn on_signals() -> Result<CancellationToken, Failure> {
    let token = CancellationToken::new();
    let mut signals = Signals::new([SIGTERM, SIGINT])
        .map_err(|e| Failure::Runtime(format!("cannot listen for signals: {e}")))?;
    let cancel = token.clone();
    std::thread::Builder::new()
        .name("era5-signals".into())
        .spawn(move || {
            let mut stopping = false;
            for signal in signals.forever() {
                if stopping {
                    // SAFETY: _exit ends the process without running anything else, which is
                    // the point: nothing may hold it up now.
                    unsafe { libc::_exit(INTERRUPTED_EXIT) };
                }
                stopping = true;
                cancel.cancel();
                tracing::info!(signal, "stopping");
                let _ = std::thread::Builder::new()
                    .name("era5-stop-deadline".into())
                    .spawn(|| {
                        std::thread::sleep(STOP_DEADLINE);
                        tracing::error!(
                            seconds = STOP_DEADLINE.as_secs(),
                            "still running after the stop signal: exiting now"
                        );
                        std::thread::sleep(Duration::from_millis(100));
                        // SAFETY: as above.
                        unsafe { libc::_exit(FORCED_EXIT) };
                    });
            }
        })
        .map_err(|e| Failure::Runtime(format!("cannot start the signal thread: {e}")))?;
    Ok(token)
}
