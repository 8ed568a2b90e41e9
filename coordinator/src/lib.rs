//! The era5-mirror coordinator: the lease state machine over two stores (Redis for the
//! cluster, in-memory for `era5 sync`), the planner that splits a job into lease items, and the
//! gRPC services that operators and workers talk to, behind one authorization layer and one
//! limits layer.

pub mod auth;
pub mod error;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod planner;
pub mod server;
pub mod service;
pub mod status_page;
pub mod store;
pub mod tls;

pub use error::Error;
pub use model::{Ack, Grant, ItemSpec, JobSpec, LeasePolicy, LeaseRef};
pub use store::memory::MemoryStore;
pub use store::redis::RedisStore;
pub use store::{LeaseStore, Pruned};
