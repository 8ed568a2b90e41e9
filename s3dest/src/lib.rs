//! The S3 destination of era5-mirror: `--dest s3://BUCKET[/PREFIX]`.
//!
//! Objects are streamed from the source into another object store (AWS, MinIO, Ceph...) with
//! no local disk: each range read from the source becomes a part of a multipart upload, every
//! part carries the Content-MD5 the destination checks, the source is verified against its
//! ETag as the bytes pass, and the completed object's ETag is checked against what was read.
//! It is the second implementation of `engine::Destination` beside the directory mirror.
//!
//! - [`audit`]: what the destination holds, for `era5 audit` (read only).
//! - [`target`]: `s3://BUCKET[/PREFIX]`, and where a source key lands under it.
//! - [`client`]: the destination's own client and credentials (never the source's).
//! - [`layout`]: how an object is cut into upload parts, and how its source is checked.
//! - [`listing`]: the destination's copies under a folder, every page.
//! - [`copy`]: one object's verified, resumable streaming copy ([`copy::Copier`]).
//! - [`recheck`]: a copy read back and checked (`era5 verify`).
//! - [`uploads`]: open multipart uploads: listing, parts, abort (`era5 uploads`).
//! - [`mirror`]: [`mirror::S3Mirror`], the lease loop's destination: triage by listing.

pub mod audit;
pub mod client;
pub mod copy;
pub mod integrity;
pub mod layout;
pub mod listing;
pub mod mirror;
pub mod recheck;
pub mod target;
pub mod uploads;

pub use client::{ConnectError, DestConfig, Store, connect};
pub use copy::{Copier, CopyError};
pub use mirror::S3Mirror;
pub use target::{S3Target, is_s3_url};
