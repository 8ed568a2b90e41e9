//! The lease domain of era5-mirror, with no network in it: the vocabulary of jobs, items and
//! grants ([`model`]), the planner that splits a job's objects into items ([`planner`]), the
//! [`LeaseStore`] trait with its embedded implementation ([`MemoryStore`]), and, behind the
//! `conformance` feature, the scenarios every store must pass.
//!
//! `era5 sync` runs on the embedded store in one process; the coordinator runs the same state
//! machine on Redis. Neither gRPC nor Redis is a dependency of this crate.

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod error;
pub mod memory;
pub mod model;
pub mod planner;
pub mod store;

pub use error::Error;
pub use memory::MemoryStore;
pub use model::{Ack, Grant, ItemSpec, JobSpec, LeasePolicy, LeaseRef};
pub use store::{FailOutcome, LeaseStore, Pruned};
