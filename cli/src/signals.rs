//! Ctrl-C and SIGTERM as one stream of "stop" requests, so each command decides what the first,
//! second and third one mean (drain, abort, quit) in one place.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// The stop requests a process receives: SIGINT (Ctrl-C) or SIGTERM.
pub struct StopSignals {
    terminate: Signal,
}

impl StopSignals {
    /// Starts listening; `None` (with a warning) when SIGTERM cannot be listened for.
    pub fn listen() -> Option<Self> {
        match signal(SignalKind::terminate()) {
            Ok(terminate) => Some(Self { terminate }),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                None
            }
        }
    }

    /// Waits for the next Ctrl-C or SIGTERM.
    pub async fn next(&mut self) {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
