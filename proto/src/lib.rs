//! The cluster API of era5-mirror, generated from `proto/era5.proto`: the `Operator` service
//! (submit, list, inspect, cancel, retry, drain) and the `Worker` service (lease calls keyed by
//! lease id and epoch, and the `WorkerSession` stream of progress up and commands down).

/// Version 1 of the API.
pub mod v1 {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("era5.v1");
}
