//! How a command ends: the exit statuses scripts rely on (the table of `era5 --help`,
//! `args::EXIT_STATUS`), why a command stopped early, and what a failed write of its output
//! comes to. Every command module returns `Result<ExitCode, Failure>`; `main` turns it into
//! the process's status and one line on stderr.

/// The process exit statuses scripts rely on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    /// Everything selected is present and verified.
    Success = 0,
    /// Some object failed, or the run could not proceed.
    Failed = 1,
    /// Bad input; nothing was written.
    BadInput = 2,
    /// Stopped at `--max-transfer` or `--max-duration`: finished files are kept, interrupted
    /// ones resume next run.
    LimitReached = 3,
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

/// What writing a command's output came to. A closed stdout (`| head`) ends the output
/// quietly, as in other Unix tools: the command's exit status still says what it found. Any
/// other failure names `what` was being written.
pub fn written(result: std::io::Result<()>, what: &str) -> Result<(), Failure> {
    match result {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Failure::Runtime(format!("writing {what} failed: {error}")))
        }
        _ => Ok(()),
    }
}
