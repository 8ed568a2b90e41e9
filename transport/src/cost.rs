//! What a run costs: requests counted by kind as they leave the connection pool, bytes on the
//! sockets in and out, and an estimate in dollars from documented prices.
//!
//! **Every request is counted once, when it is written to a connection** (`pool`), so retries,
//! hedges and HEADs all count, and a request that never reached a connection (no connection
//! could be opened) does not: the counts are what the server received. The kind comes from the
//! method and the query, as S3 bills it: a GET on the bucket with `list-type` is a LIST, a PUT
//! with `partNumber` an UploadPart, a POST with `uploadId` a CompleteMultipartUpload.
//!
//! **Default prices** are S3 Standard's request prices in us-west-2 (where the ERA5 bucket
//! is): $0.005 per 1,000 LIST, PUT, UploadPart, CreateMultipartUpload and
//! CompleteMultipartUpload; $0.0004 per 1,000 GET and HEAD; aborts are free. Transfer is
//! priced at $0 per GB by default: the ERA5 bucket is in AWS's Open Data Sponsorship Program,
//! so whoever reads it pays neither requests nor transfer; the estimate says what the same
//! traffic costs on a bucket that bills its requests (a mirror of your own, or another
//! source), and `--prices gb=0.045` adds a NAT gateway's processing charge, say.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// What S3 bills a request as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// ListObjectsV2 (and any other bucket-level GET).
    List,
    /// HeadObject.
    Head,
    /// GetObject, ranged or whole.
    Get,
    /// PutObject.
    Put,
    /// CreateMultipartUpload.
    CreateUpload,
    /// UploadPart.
    UploadPart,
    /// CompleteMultipartUpload.
    Complete,
    /// AbortMultipartUpload (and other DELETEs).
    Abort,
    /// Anything else.
    Other,
}

impl RequestKind {
    /// Every kind, in report order.
    pub const ALL: [RequestKind; 9] = [
        RequestKind::List,
        RequestKind::Head,
        RequestKind::Get,
        RequestKind::Put,
        RequestKind::CreateUpload,
        RequestKind::UploadPart,
        RequestKind::Complete,
        RequestKind::Abort,
        RequestKind::Other,
    ];

    /// The kind of a request, from its method and query (era5 lists with ListObjectsV2,
    /// whose query always carries `list-type`).
    pub fn of(method: &http::Method, query: Option<&str>) -> Self {
        let query = query.unwrap_or("");
        let has = |name: &str| {
            query
                .split('&')
                .any(|pair| pair.split('=').next() == Some(name))
        };
        match *method {
            http::Method::HEAD => RequestKind::Head,
            // ListObjectsV2, ListMultipartUploads (`?uploads`) and ListParts (`?uploadId`):
            // all billed as LIST.
            http::Method::GET if has("list-type") || has("uploads") || has("uploadId") => {
                RequestKind::List
            }
            http::Method::GET => RequestKind::Get,
            http::Method::PUT if has("partNumber") && has("uploadId") => RequestKind::UploadPart,
            http::Method::PUT => RequestKind::Put,
            http::Method::POST if has("uploads") => RequestKind::CreateUpload,
            http::Method::POST if has("uploadId") => RequestKind::Complete,
            http::Method::DELETE => RequestKind::Abort,
            _ => RequestKind::Other,
        }
    }

    /// The name in reports, metrics and `--prices`.
    pub fn label(self) -> &'static str {
        match self {
            RequestKind::List => "list",
            RequestKind::Head => "head",
            RequestKind::Get => "get",
            RequestKind::Put => "put",
            RequestKind::CreateUpload => "create_upload",
            RequestKind::UploadPart => "upload_part",
            RequestKind::Complete => "complete",
            RequestKind::Abort => "abort",
            RequestKind::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Live request and byte counters of one connection pool.
#[derive(Debug, Default)]
pub struct TrafficCounters {
    requests: [AtomicU64; RequestKind::ALL.len()],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl TrafficCounters {
    /// One request of `kind` was written to a connection.
    pub fn request(&self, kind: RequestKind) {
        self.requests[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes read from a socket.
    pub fn received(&self, bytes: usize) {
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Bytes written to a socket.
    pub fn sent(&self, bytes: usize) {
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> Traffic {
        let mut requests = [0; RequestKind::ALL.len()];
        for (count, counter) in requests.iter_mut().zip(&self.requests) {
            *count = counter.load(Ordering::Relaxed);
        }
        Traffic {
            requests,
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
        }
    }
}

/// Requests by kind and bytes on the sockets, at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    requests: [u64; RequestKind::ALL.len()],
    /// Bytes read from sockets (responses: headers and bodies).
    pub bytes_in: u64,
    /// Bytes written to sockets (requests: headers and bodies).
    pub bytes_out: u64,
}

/// Two pools' traffic together (a sync's source and its `s3://` destination).
impl std::ops::Add for Traffic {
    type Output = Traffic;

    fn add(mut self, other: Traffic) -> Traffic {
        for (mine, theirs) in self.requests.iter_mut().zip(other.requests) {
            *mine += theirs;
        }
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self
    }
}

impl Traffic {
    /// Requests of `kind`.
    pub fn requests(&self, kind: RequestKind) -> u64 {
        self.requests[kind.index()]
    }

    /// Every request.
    pub fn total_requests(&self) -> u64 {
        self.requests.iter().sum()
    }
}

/// Dollars per 1,000 requests of each kind, and per GB (10^9 bytes) moved.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prices {
    per_thousand: [f64; RequestKind::ALL.len()],
    /// Dollars per GB, in or out.
    pub per_gb: f64,
}

impl Default for Prices {
    /// S3 Standard in us-west-2 (see the module doc).
    fn default() -> Self {
        let mut per_thousand = [0.0; RequestKind::ALL.len()];
        for kind in RequestKind::ALL {
            per_thousand[kind.index()] = match kind {
                RequestKind::List
                | RequestKind::Put
                | RequestKind::CreateUpload
                | RequestKind::UploadPart
                | RequestKind::Complete => 0.005,
                RequestKind::Head | RequestKind::Get | RequestKind::Other => 0.0004,
                RequestKind::Abort => 0.0,
            };
        }
        Self {
            per_thousand,
            per_gb: 0.0,
        }
    }
}

/// A `--prices` value that cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "--prices: `{0}` is not KIND=DOLLARS (KIND one of list, head, get, put, create_upload, upload_part, complete, abort, other, gb; dollars per 1,000 requests, or per GB for gb)"
)]
pub struct BadPrices(pub String);

impl Prices {
    /// The defaults with the overrides of `spec`: `KIND=DOLLARS[,KIND=DOLLARS...]`, dollars
    /// per 1,000 requests of KIND, or per GB for `gb`.
    pub fn parse(spec: &str) -> Result<Self, BadPrices> {
        let mut prices = Self::default();
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let bad = || BadPrices(item.to_string());
            let (kind, dollars) = item.split_once('=').ok_or_else(bad)?;
            let dollars: f64 = dollars.trim().parse().map_err(|_| bad())?;
            if !dollars.is_finite() || dollars < 0.0 {
                return Err(bad());
            }
            let kind = kind.trim();
            if kind == "gb" {
                prices.per_gb = dollars;
                continue;
            }
            let kind = RequestKind::ALL
                .into_iter()
                .find(|k| k.label() == kind)
                .ok_or_else(bad)?;
            prices.per_thousand[kind.index()] = dollars;
        }
        Ok(prices)
    }

    /// What `traffic` costs at these prices.
    pub fn estimate(&self, traffic: &Traffic) -> Cost {
        let requests: f64 = RequestKind::ALL
            .iter()
            .map(|k| traffic.requests(*k) as f64 / 1000.0 * self.per_thousand[k.index()])
            .sum();
        let transfer = (traffic.bytes_in + traffic.bytes_out) as f64 / 1e9 * self.per_gb;
        Cost {
            requests,
            transfer,
            total: requests + transfer,
        }
    }

    /// Dollars per 1,000 requests of `kind`.
    pub fn per_thousand(&self, kind: RequestKind) -> f64 {
        self.per_thousand[kind.index()]
    }
}

/// An estimate in dollars.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Cost {
    /// For the requests.
    pub requests: f64,
    /// For the bytes moved.
    pub transfer: f64,
    /// Both.
    pub total: f64,
}

impl fmt::Display for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "${:.4} (requests ${:.4}, transfer ${:.4})",
            self.total, self.requests, self.transfer
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_kinded_as_s3_bills_them() {
        let kind =
            |method: &str, query: Option<&str>| RequestKind::of(&method.parse().unwrap(), query);
        assert_eq!(
            kind("GET", Some("list-type=2&prefix=e5")),
            RequestKind::List
        );
        assert_eq!(
            kind("GET", Some("prefix=e5&list-type=2")),
            RequestKind::List
        );
        assert_eq!(kind("GET", None), RequestKind::Get);
        assert_eq!(kind("GET", Some("x-id=GetObject")), RequestKind::Get);
        assert_eq!(kind("HEAD", None), RequestKind::Head);
        assert_eq!(kind("PUT", None), RequestKind::Put);
        assert_eq!(
            kind("PUT", Some("partNumber=2&uploadId=abc")),
            RequestKind::UploadPart
        );
        assert_eq!(kind("POST", Some("uploads")), RequestKind::CreateUpload);
        assert_eq!(kind("POST", Some("uploadId=abc")), RequestKind::Complete);
        assert_eq!(kind("DELETE", Some("uploadId=abc")), RequestKind::Abort);
        // ListMultipartUploads and ListParts are billed as LIST, not GET.
        assert_eq!(kind("GET", Some("uploads&prefix=k")), RequestKind::List);
        assert_eq!(kind("GET", Some("uploadId=abc")), RequestKind::List);
    }

    #[test]
    fn prices_default_to_s3_standard_and_take_overrides() {
        let mut counters = TrafficCounters::default();
        for _ in 0..2000 {
            counters.request(RequestKind::Get);
        }
        for _ in 0..1000 {
            counters.request(RequestKind::List);
        }
        counters.received(2_000_000_000);
        let traffic = counters.snapshot();
        let cost = Prices::default().estimate(&traffic);
        assert!(
            (cost.requests - (2.0 * 0.0004 + 0.005)).abs() < 1e-12,
            "{cost:?}"
        );
        assert!(cost.transfer.abs() < f64::EPSILON, "{cost:?}");
        let nat = Prices::parse("gb=0.045, get=0.001").unwrap();
        let cost = nat.estimate(&traffic);
        assert!((cost.transfer - 0.09).abs() < 1e-12, "{cost:?}");
        assert!((cost.requests - (0.002 + 0.005)).abs() < 1e-12, "{cost:?}");
        counters = TrafficCounters::default();
        assert_eq!(counters.snapshot().total_requests(), 0);
    }

    #[test]
    fn bad_prices_name_the_bad_item() {
        for spec in ["get", "get=x", "gets=1", "get=-1", "gb=inf"] {
            let error = Prices::parse(spec).unwrap_err();
            assert!(error.to_string().contains(&format!("`{spec}`")), "{error}");
        }
        assert_eq!(Prices::parse("").unwrap(), Prices::default());
    }
}
