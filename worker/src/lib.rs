//! The era5-mirror worker: the lease loop that every lease runs through, whether it comes from
//! the coordinator (a cluster worker) or from the store embedded in `era5 sync`, and the
//! cluster worker around it with its own HTTP side (/metrics, /healthz, /readyz).
//!
//! - [`runner`]: the lease loop (acquire, renew, fence, complete, fail, release) over any
//!   [`client::LeaseClient`], mirroring each lease through the engine's
//!   [`engine::sync::Mirrorer`].
//! - [`keep_alive`]: one lease's renewals and self-fencing, on tokio's clock (tested with
//!   paused time).
//! - [`client`]: what the loop asks of a lease service, in the lease model's types.
//! - [`grpc`]: the coordinator as that service.
//! - [`embedded`]: a `lease::MemoryStore` as that service, for `era5 sync`.
//! - [`agent`]: the cluster worker: the loop over the coordinator, the `WorkerSession` stream
//!   (progress up, commands down) and the sweep of abandoned temporaries.
//! - [`telemetry`]: the worker's /metrics, /healthz and /readyz.

pub mod agent;
pub mod client;
pub mod embedded;
pub mod grpc;
pub mod keep_alive;
pub mod runner;
pub mod telemetry;
