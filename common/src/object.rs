//! An object of the bucket as a listing describes it: the one shape every role passes around
//! (discovery returns it, the planner groups it into items, the engine fetches it), so none of
//! them needs the S3 transport to name it.

use serde::Serialize;

/// One object as the listing describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RemoteObject {
    /// Object key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// ETag without quotes, when the server lists it (some S3-compatible servers do not).
    pub etag: Option<String>,
    /// Last-Modified, RFC 3339, when listed.
    #[serde(skip)]
    pub last_modified: Option<String>,
}
