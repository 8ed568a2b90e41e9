//! The cluster API of era5-mirror, generated from `proto/era5.proto`: the `Operator` service
//! (submit, list, inspect, cancel, retry, drain) and the `Worker` service (lease calls keyed by
//! lease id and epoch, and the `WorkerSession` stream of progress up and commands down).
//!
//! Beside the generated code, what both ends of a connection must agree on:
//! - [`identity`]: who a peer is, from the URI SAN of its certificate, and the rules for
//!   worker names;
//! - [`channel`]: how clients (workers, operator commands) reach the coordinator: `http://`
//!   or `https://` with a client certificate (never one falling back to the other), deadlines
//!   and HTTP/2 keepalive;
//! - [`http_port`]: the operations HTTP port both roles serve (probes, metrics, the status
//!   page), with a connection cap, a header deadline and an idle deadline;
//! - [`Error`]: the crate's one error type.

pub mod channel;
pub mod error;
pub mod http_port;
pub mod identity;

pub use error::Error;

/// Version 1 of the API.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("era5.v1");
}

/// gRPC paths of the two services, as the authorization layer matches them.
pub mod paths {
    /// Prefix of every Worker service method.
    pub const WORKER: &str = "/era5.v1.Worker/";
    /// Prefix of every Operator service method.
    pub const OPERATOR: &str = "/era5.v1.Operator/";
    /// Prefix of the standard gRPC health service (open to every peer).
    pub const HEALTH: &str = "/grpc.health.v1.Health/";
    /// The long-lived worker stream (no unary deadline applies to it).
    pub const WORKER_SESSION: &str = "/era5.v1.Worker/WorkerSession";
    /// Job submission (lists the bucket, so it gets the listing deadline).
    pub const SUBMIT_JOB: &str = "/era5.v1.Operator/SubmitJob";
}
