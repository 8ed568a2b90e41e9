//! The era5-mirror cluster worker: the agent that takes leases from the coordinator over gRPC
//! and runs each through the fetch engine's [`engine::sync::Mirrorer`], and the worker's own
//! HTTP side (/metrics, /healthz, /readyz).
//!
//! - [`agent`]: the lease loop (acquire, renew, fence, complete, fail, release) and the
//!   `WorkerSession` stream (progress up, commands down).
//! - [`telemetry`]: the worker's /metrics, /healthz and /readyz.

pub mod agent;
pub mod telemetry;
