//! Test support for era5-mirror, made of real parts:
//!
//! - [`s3_server::TestS3`]: a real S3-protocol server (s3s over hyper) on an ephemeral port,
//!   holding an in-memory bucket, a source to download from or a destination to upload to
//!   (PutObject and multipart uploads, with their digests and conditions checked);
//! - [`faults`]: the fault layer in front of it (SlowDown, error statuses, reset, truncated,
//!   stalled, slow and corrupted bodies, objects replaced mid-download; and for uploads,
//!   connections dropped before or after the write and completions that report a wrong ETag);
//! - [`proxy::CountingProxy`]: counts a client's TCP connections from outside the client, and
//!   blackholes them one way or both;
//! - [`redis_server::RedisServer`]: a real redis-server per test on an ephemeral port (ACL
//!   users, TLS);
//! - [`pki`]: real certificates made in the test (CA, servers, workers, operators, and the
//!   ones that must be refused);
//! - [`fixtures`]: a synthetic bucket laid out exactly like `nsf-ncar-era5`;
//! - [`tls_front::TlsFront`]: HTTPS in front of a test server, with a certificate of [`pki`].

pub mod faults;
pub mod fixtures;
pub mod pki;
pub mod proxy;
pub mod redis_server;
pub mod s3_server;
mod store;
pub mod tls_front;
mod uploads;
