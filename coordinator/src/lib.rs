//! The era5-mirror coordinator: the cluster's lease store on Redis, and the gRPC services that
//! operators and workers talk to, behind one authorization layer and one limits layer, with
//! the HTTP side (health, metrics, the status page). The lease state machine itself, the
//! planner and the embedded store live in the `lease` crate.

pub mod auth;
pub mod error;
pub mod limits;
pub mod metrics;
pub mod redis_store;
pub mod server;
pub mod service;
pub mod shares;
pub mod status_page;
pub mod tls;

pub use error::Error;
pub use redis_store::RedisStore;
