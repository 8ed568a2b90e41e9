//! `TestS3`: a real S3-protocol server (s3s over hyper) on an ephemeral port, holding an
//! in-memory bucket, with the fault layer in front. It runs on its own thread and runtime, so
//! plain `#[test]` functions can drive child processes while it serves; dropping it stops it.
//!
//! It is a source to download from (seeded with [`TestS3::put_object_with`]) and a destination
//! to upload to: PutObject and multipart uploads are checked as S3 checks them, the open
//! uploads can be inspected and aged ([`TestS3::uploads`], [`TestS3::set_upload_initiated`]),
//! and every request is recorded with its S3 [`Operation`].

use common::sync::MutexExt;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};

use crate::faults::{
    ArmedRule, BodyFault, BodyStats, Fault, FaultBody, FaultRule, HugeBody, empty_listing_page,
    error_body, junk_listing_page,
};
pub use crate::store::{ChecksumAlgo, PutOptions, StoredObject};
use crate::store::{MemoryS3, Store};
pub use crate::uploads::{MIN_PART_SIZE, PartInfo, UploadInfo};
use crate::uploads::{StoredPart, wrong_etag};

/// Access key the server accepts for signed requests (unsigned ones are accepted too).
pub const ACCESS_KEY: &str = "era5test";
/// Secret key the server accepts for signed requests.
pub const SECRET_KEY: &str = "era5testsecret";

/// The S3 operation of a request, told from its method, path and query as S3 tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// GET of an object's bytes, ranged or whole.
    GetObject,
    /// HEAD of an object.
    HeadObject,
    /// PUT of a whole object.
    PutObject,
    /// DELETE of an object.
    DeleteObject,
    /// POST `?uploads`.
    CreateMultipartUpload,
    /// PUT `?partNumber=N&uploadId=U`.
    UploadPart,
    /// GET `?uploadId=U` on an object.
    ListParts,
    /// POST `?uploadId=U`.
    CompleteMultipartUpload,
    /// DELETE `?uploadId=U`.
    AbortMultipartUpload,
    /// GET `?list-type=2` on the bucket.
    ListObjectsV2,
    /// GET `?uploads` on the bucket.
    ListMultipartUploads,
    /// Anything else (bucket HEAD and location, ListBuckets, subresources such as `?acl`).
    Other,
}

impl Operation {
    /// The operation of a request with this method, on an object or not, with this query.
    pub fn of(method: &http::Method, on_object: bool, query: Option<&str>) -> Self {
        let has = |name: &str| {
            query.is_some_and(|q| {
                q.split('&')
                    .any(|pair| pair.split_once('=').map_or(pair, |(k, _)| k) == name)
            })
        };
        // Object subresources this server does not serve; `x-id`, which the SDK adds to every
        // request, is not one of them.
        let subresource = [
            "acl",
            "tagging",
            "attributes",
            "retention",
            "legal-hold",
            "torrent",
        ]
        .into_iter()
        .any(has);
        match (method.as_str(), on_object) {
            ("GET", true) if has("uploadId") => Operation::ListParts,
            ("GET", true) if !subresource => Operation::GetObject,
            ("HEAD", true) => Operation::HeadObject,
            ("PUT", true) if has("uploadId") && has("partNumber") => Operation::UploadPart,
            ("PUT", true) if !subresource => Operation::PutObject,
            ("POST", true) if has("uploads") => Operation::CreateMultipartUpload,
            ("POST", true) if has("uploadId") => Operation::CompleteMultipartUpload,
            ("DELETE", true) if has("uploadId") => Operation::AbortMultipartUpload,
            ("DELETE", true) if !subresource => Operation::DeleteObject,
            ("GET", false) if has("uploads") => Operation::ListMultipartUploads,
            ("GET", false) if query_param(query, "list-type").as_deref() == Some("2") => {
                Operation::ListObjectsV2
            }
            _ => Operation::Other,
        }
    }

    /// Whether the request carries an object's bytes (PutObject, UploadPart).
    pub fn is_upload(self) -> bool {
        matches!(self, Operation::PutObject | Operation::UploadPart)
    }
}

/// One request as the server saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Object key, for object requests (None for bucket requests such as listings).
    pub key: Option<String>,
    /// The raw query string (`uploadId=...&partNumber=2`, `list-type=2&prefix=...`).
    pub query: Option<String>,
    /// The S3 operation.
    pub operation: Operation,
    /// The Range header.
    pub range: Option<String>,
    /// The If-Match header.
    pub if_match: Option<String>,
    /// The digest headers sent (`content-md5`, `x-amz-checksum-*`), by name, lowercase.
    pub digests: Vec<String>,
    /// Response status; 0 when the connection was reset without an answer.
    pub status: u16,
    /// The fault injected, if any.
    pub fault: Option<String>,
}

/// State shared by the server tasks and the handle.
struct Shared {
    store: Arc<Store>,
    rules: Mutex<Vec<Arc<ArmedRule>>>,
    requests: Mutex<Vec<RequestRecord>>,
    listed_prefixes: Mutex<Vec<String>>,
    stats: Arc<BodyStats>,
    /// Numbers the tokens of endless listings.
    endless_tokens: std::sync::atomic::AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock_unpoisoned()
}

/// The running server.
pub struct TestS3 {
    addr: SocketAddr,
    bucket: String,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestS3 {
    /// Starts a server holding an empty bucket named `bucket`, on an ephemeral port: a
    /// source once seeded, or as it is, a destination to upload to.
    pub fn start(bucket: &str) -> TestS3 {
        Self::start_on(bucket, SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind 127.0.0.1:0")
    }

    /// Starts a server on `addr` (the standalone binary uses a fixed port).
    pub fn start_on(bucket: &str, addr: SocketAddr) -> std::io::Result<TestS3> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            store: Arc::new(Store::new(bucket)),
            rules: Mutex::default(),
            requests: Mutex::default(),
            listed_prefixes: Mutex::default(),
            stats: Arc::default(),
            endless_tokens: std::sync::atomic::AtomicU64::new(0),
        });
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("test-s3".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("test server runtime");
                runtime.block_on(serve(thread_shared, listener, addr_tx, stop_rx));
                runtime.shutdown_timeout(Duration::from_millis(100));
            })
            .expect("spawn the test server thread");
        let addr = addr_rx.recv().expect("the test server started");
        Ok(TestS3 {
            addr,
            bucket: bucket.to_string(),
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Stores `data` as a single-part upload.
    pub fn put_object(&self, key: &str, data: Bytes) {
        self.put_object_with(key, data, PutOptions::default());
    }

    /// Stores `data` as `options` say (multipart ETag, checksum...).
    pub fn put_object_with(&self, key: &str, data: Bytes, options: PutOptions) {
        let object = StoredObject::new(data, &options);
        lock(&self.shared.store.objects).insert(key.to_string(), object);
    }

    /// Removes an object.
    pub fn delete_object(&self, key: &str) {
        lock(&self.shared.store.objects).remove(key);
    }

    /// The stored object.
    pub fn object(&self, key: &str) -> Option<StoredObject> {
        lock(&self.shared.store.objects).get(key).cloned()
    }

    /// Every key the bucket holds, in order (an upload destination's contents).
    pub fn keys(&self) -> Vec<String> {
        lock(&self.shared.store.objects).keys().cloned().collect()
    }

    /// Replaces the fault rules.
    pub fn set_faults(&self, rules: Vec<FaultRule>) {
        *lock(&self.shared.rules) = rules
            .into_iter()
            .map(|r| Arc::new(ArmedRule::new(r)))
            .collect();
    }

    /// Adds a fault rule.
    pub fn add_fault(&self, rule: FaultRule) {
        lock(&self.shared.rules).push(Arc::new(ArmedRule::new(rule)));
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        lock(&self.shared.rules).clear();
    }

    /// Caps the keys per ListObjectsV2 page.
    pub fn set_list_max_keys(&self, max: Option<usize>) {
        lock(&self.shared.store.quirks).max_keys = max;
    }

    /// Answers every conditional write (If-Match, If-None-Match on PutObject or
    /// CompleteMultipartUpload) 501 NotImplemented, as stores without conditional writes do.
    pub fn set_refuse_conditional_writes(&self, refuse: bool) {
        self.shared
            .store
            .refuse_conditional_writes
            .store(refuse, std::sync::atomic::Ordering::Relaxed);
    }

    /// Multipart uploads ignore additional checksums (`x-amz-checksum-*`): neither checked,
    /// kept nor echoed, as stores older than S3's checksums do. `Content-MD5` is still checked.
    pub fn set_ignore_checksums(&self, ignore: bool) {
        self.shared
            .store
            .ignore_checksums
            .store(ignore, std::sync::atomic::Ordering::Relaxed);
    }

    /// Leaves ETags out of listings.
    pub fn set_list_omits_etag(&self, omit: bool) {
        lock(&self.shared.store.quirks).omit_etag = omit;
    }

    /// Makes listings and HEADs claim `size` bytes for `key` (None: its real size), as a
    /// broken or hostile server might.
    pub fn set_claimed_size(&self, key: &str, size: Option<u64>) {
        let mut quirks = lock(&self.shared.store.quirks);
        match size {
            Some(size) => quirks.claimed_sizes.insert(key.to_string(), size),
            None => quirks.claimed_sizes.remove(key),
        };
    }

    /// Listing requests so far (ListMultipartUploads excepted).
    pub fn list_count(&self) -> usize {
        lock(&self.shared.requests)
            .iter()
            .filter(|r| {
                r.method == "GET"
                    && r.key.is_none()
                    && r.operation != Operation::ListMultipartUploads
            })
            .count()
    }

    /// Requests of `operation` so far, answered or not.
    pub fn count(&self, operation: Operation) -> usize {
        lock(&self.shared.requests)
            .iter()
            .filter(|r| r.operation == operation)
            .count()
    }

    /// The open multipart uploads, by key, then in creation order.
    pub fn uploads(&self) -> Vec<UploadInfo> {
        let mut uploads: Vec<UploadInfo> = lock(&self.shared.store.uploads)
            .values()
            .map(crate::uploads::Upload::info)
            .collect();
        uploads.sort_by(|a, b| (&a.key, &a.upload_id).cmp(&(&b.key, &b.upload_id)));
        uploads
    }

    /// Opens a multipart upload of `key` with `parts` already uploaded (numbered from 1), as
    /// a run that stopped midway leaves one; returns its upload id.
    pub fn create_upload(&self, key: &str, parts: Vec<Bytes>) -> String {
        self.shared.store.create_upload(key, |upload| {
            for (number, data) in (1..).zip(parts) {
                upload.parts.insert(number, StoredPart::new(data, None));
            }
        })
    }

    /// Moves an upload's initiated time, to make it stale (or fresh); false when there is no
    /// such open upload.
    pub fn set_upload_initiated(&self, upload_id: &str, initiated: SystemTime) -> bool {
        lock(&self.shared.store.uploads)
            .get_mut(upload_id)
            .map(|upload| upload.initiated = initiated)
            .is_some()
    }

    /// The smallest size of every part but the last that CompleteMultipartUpload accepts
    /// ([`MIN_PART_SIZE`], S3's 5 MiB, by default); smaller makes tests of many parts cheap.
    pub fn set_min_part_size(&self, bytes: u64) {
        self.shared
            .store
            .min_part_size
            .store(bytes, Ordering::Relaxed);
    }

    /// The `bytes=` ranges of every GET of `key`, in order; a GET without a Range header
    /// reads the whole object and counts as `(0, u64::MAX)`.
    pub fn get_ranges(&self, key: &str) -> Vec<(u64, u64)> {
        lock(&self.shared.requests)
            .iter()
            .filter(|r| r.operation == Operation::GetObject && r.key.as_deref() == Some(key))
            .filter_map(|r| {
                let Some(range) = r.range.as_deref() else {
                    return Some((0, u64::MAX));
                };
                let (start, end) = range.strip_prefix("bytes=")?.split_once('-')?;
                Some((start.parse().ok()?, end.parse().ok()?))
            })
            .collect()
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.requests).clone()
    }

    /// Forgets the recorded requests and listed prefixes.
    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
        lock(&self.shared.listed_prefixes).clear();
    }

    /// GETs of `key`'s bytes.
    pub fn get_count(&self, key: &str) -> usize {
        lock(&self.shared.requests)
            .iter()
            .filter(|r| r.operation == Operation::GetObject && r.key.as_deref() == Some(key))
            .count()
    }

    /// Body bytes sent by GETs since start.
    pub fn body_bytes_sent(&self) -> u64 {
        self.shared.stats.bytes_sent.load(Ordering::Relaxed)
    }

    /// The `prefix` of every listing.
    pub fn listed_prefixes(&self) -> Vec<String> {
        lock(&self.shared.listed_prefixes).clone()
    }

    /// Peak number of GET bodies in progress at once.
    pub fn max_concurrent_gets(&self) -> usize {
        self.shared
            .stats
            .max_gets_in_progress
            .load(Ordering::SeqCst)
    }

    /// Restarts the peak count from the current value.
    pub fn reset_max_concurrent_gets(&self) {
        let now = self.shared.stats.gets_in_progress.load(Ordering::SeqCst);
        self.shared
            .stats
            .max_gets_in_progress
            .store(now, Ordering::SeqCst);
    }
}

impl Drop for TestS3 {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn s3_service(store: Arc<Store>) -> S3Service {
    let mut builder = S3ServiceBuilder::new(MemoryS3::new(store));
    builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    builder.set_access(AllowAnonymous);
    builder.build()
}

/// Signed and unsigned requests are both welcome: the archive is public.
struct AllowAnonymous;

#[async_trait::async_trait]
impl s3s::access::S3Access for AllowAnonymous {
    async fn check(&self, _cx: &mut s3s::access::S3AccessContext<'_>) -> s3s::S3Result<()> {
        Ok(())
    }
}

async fn serve(
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    addr_tx: std::sync::mpsc::Sender<SocketAddr>,
    mut stop: oneshot::Receiver<()>,
) {
    // The listener is bound before the thread starts, so a port conflict is the caller's error.
    let listener = TcpListener::from_std(listener).expect("adopt the listener");
    let _ = addr_tx.send(listener.local_addr().expect("local addr"));
    let service = s3_service(shared.store.clone());
    loop {
        let socket = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                Err(_) => continue,
            },
        };
        let _ = socket.set_nodelay(true);
        let shared = shared.clone();
        let service = service.clone();
        tokio::spawn(serve_connection(socket, shared, service));
    }
}

/// Serves one connection; a `ResetMidBody` fault aborts it with an RST.
async fn serve_connection(socket: tokio::net::TcpStream, shared: Arc<Shared>, service: S3Service) {
    let fd: RawFd = socket.as_raw_fd();
    let reset = Arc::new(Notify::new());
    let handler_reset = reset.clone();
    let handler = hyper::service::service_fn(move |request: Request<Incoming>| {
        let shared = shared.clone();
        let service = service.clone();
        let reset = handler_reset.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(request, &shared, &service, reset).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(socket), handler);
    // Pinned here, not moved into the select: select! drops the losing branch's future (and
    // with it the socket) before running the winning arm, and the arm needs the socket open.
    tokio::pin!(connection);
    tokio::select! {
        _ = &mut connection => {}
        () = reset.notified() => {
            // SAFETY: the pinned connection future, which owns the socket, is still alive here
            // (it is dropped at the end of this function), so the descriptor is open.
            let socket = unsafe { BorrowedFd::borrow_raw(fd) };
            let _ = socket2::SockRef::from(&socket).set_linger(Some(Duration::ZERO));
        }
    }
}

type ResponseBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

fn object_key(bucket: &str, path: &str) -> Option<String> {
    let rest = path
        .strip_prefix('/')?
        .strip_prefix(bucket)?
        .strip_prefix('/')?;
    (!rest.is_empty()).then(|| percent_decode(rest))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(value) = u8::from_str_radix(
                std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                16,
            )
        {
            out.push(value);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(&v.replace('+', " ")))
    })
}

/// A request body read whole, with the byte at `at` flipped (when the body reaches it).
async fn corrupted(body: &mut Incoming, at: u64) -> Bytes {
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    bytes.extend_from_slice(data);
                }
            }
            Err(_) => break,
        }
    }
    if let Some(byte) = usize::try_from(at).ok().and_then(|at| bytes.get_mut(at)) {
        *byte ^= 0xff;
    }
    Bytes::from(bytes)
}

/// Reads a request body to its end (or its first error), discarding it.
async fn drain(body: &mut Incoming) {
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            break;
        }
    }
}

/// A response whose `ETag` (header, or CompleteMultipartUpload's XML `<ETag>`) is replaced by
/// another of the same shape.
async fn with_wrong_etag(response: Response<s3s::Body>) -> Response<s3s::Body> {
    let (mut parts, body) = response.into_parts();
    if let Some(etag) = parts
        .headers
        .get(http::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(wrong_etag)
        && let Ok(value) = http::HeaderValue::from_str(&etag)
    {
        parts.headers.insert(http::header::ETAG, value);
        return Response::from_parts(parts, body);
    }
    let Ok(collected) = body.collect().await else {
        return Response::from_parts(parts, s3s::Body::empty());
    };
    let xml = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
    let rewritten = match xml.split_once("<ETag>") {
        Some((head, rest)) => match rest.split_once("</ETag>") {
            Some((etag, tail)) => format!("{head}<ETag>{}</ETag>{tail}", wrong_etag(etag)),
            None => xml,
        },
        None => xml,
    };
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Response::from_parts(parts, s3s::Body::from(Bytes::from(rewritten)))
}

async fn handle(
    request: Request<Incoming>,
    shared: &Shared,
    service: &S3Service,
    reset: Arc<Notify>,
) -> Response<ResponseBody> {
    let method = request.method().clone();
    let key = object_key(&shared.store.bucket, request.uri().path());
    let query = request.uri().query().map(str::to_string);
    let operation = Operation::of(&method, key.is_some(), query.as_deref());
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let range = header("range");
    let if_match = header("if-match");
    let digests: Vec<String> = request
        .headers()
        .keys()
        .map(|name| name.as_str().to_ascii_lowercase())
        .filter(|name| name == "content-md5" || name.starts_with("x-amz-checksum-"))
        .collect();
    let listing = operation == Operation::ListObjectsV2;
    let list_prefix = query_param(query.as_deref(), "prefix").unwrap_or_default();
    let list_token = query_param(query.as_deref(), "continuation-token");
    if listing {
        lock(&shared.listed_prefixes).push(list_prefix.clone());
    }
    let rules: Vec<Arc<ArmedRule>> = lock(&shared.rules).clone();
    let fault = rules
        .iter()
        .find_map(|rule| rule.fires(&method, key.as_deref(), query.as_deref(), operation));
    let mut record = RequestRecord {
        method: method.to_string(),
        key: key.clone(),
        query,
        operation,
        range,
        if_match,
        digests,
        status: 0,
        fault: fault.as_ref().map(|f| f.name().to_string()),
    };
    let (parts, mut body) = request.into_parts();

    // Faults that answer in place of the service read the request's body first: a client
    // still sending an upload must see the answer, not a broken pipe.
    let answers_early = match &fault {
        Some(
            Fault::SlowDown
            | Fault::Status { .. }
            | Fault::HugeBody { .. }
            | Fault::Reset { processed: false },
        ) => true,
        Some(Fault::RepeatListingToken | Fault::EndlessListing | Fault::JunkListing { .. }) => {
            listing
        }
        _ => false,
    };
    if answers_early {
        drain(&mut body).await;
    }
    let mut body_fault = BodyFault::None;
    let mut corrupt_request_at = None;
    let mut replace_with = None;
    let response = match &fault {
        Some(Fault::SlowDown) => Some(error_response(503, "SlowDown", &method)),
        Some(Fault::Status { status, code }) => Some(error_response(*status, code, &method)),
        Some(Fault::DelayResponse { millis }) => {
            tokio::time::sleep(Duration::from_millis(*millis)).await;
            None
        }
        Some(Fault::ResetMidBody { after_bytes }) => {
            body_fault = BodyFault::Reset(*after_bytes);
            None
        }
        Some(Fault::TruncateBody { after_bytes }) => {
            body_fault = BodyFault::Truncate(*after_bytes);
            None
        }
        Some(Fault::StallBody { after_bytes }) => {
            body_fault = BodyFault::Stall(*after_bytes);
            None
        }
        Some(Fault::SlowBody { bytes_per_sec }) => {
            body_fault = BodyFault::Slow(*bytes_per_sec);
            None
        }
        // On an upload, the request's body is corrupted on its way in, as a bad link would.
        Some(Fault::CorruptBody { at }) if operation.is_upload() => {
            corrupt_request_at = Some(*at);
            None
        }
        Some(Fault::CorruptBody { at }) => {
            body_fault = BodyFault::Corrupt(*at);
            None
        }
        Some(Fault::ReplaceAfterResponse { data }) => {
            replace_with = Some(data.clone());
            None
        }
        Some(Fault::RepeatListingToken) if listing => {
            let token = list_token.clone().unwrap_or_else(|| "again".into());
            let page = empty_listing_page(&shared.store.bucket, &list_prefix, &token);
            Some(xml_response(page))
        }
        Some(Fault::EndlessListing) if listing => {
            let n = shared.endless_tokens.fetch_add(1, Ordering::Relaxed);
            let page = empty_listing_page(&shared.store.bucket, &list_prefix, &format!("t{n}"));
            Some(xml_response(page))
        }
        Some(Fault::JunkListing {
            keys_per_page,
            key_bytes,
        }) if listing => {
            let n = shared.endless_tokens.fetch_add(1, Ordering::Relaxed);
            let page = junk_listing_page(
                &shared.store.bucket,
                &list_prefix,
                &format!("j{n}"),
                *keys_per_page,
                *key_bytes,
            );
            Some(xml_response(page))
        }
        Some(Fault::HugeBody {
            status,
            bytes,
            chunked,
        }) => {
            let mut response = Response::builder()
                .status(StatusCode::from_u16(*status).unwrap_or(StatusCode::OK))
                .header("content-type", "application/xml");
            if !chunked {
                response = response.header("content-length", bytes.to_string());
            }
            let body = FaultBody::new(
                HugeBody::new(*bytes),
                BodyFault::None,
                shared.stats.clone(),
                false,
                None,
            );
            Some(response.body(body.boxed()).unwrap_or_default())
        }
        Some(Fault::Reset { processed }) => {
            if *processed {
                // Carried out, answer dropped: the write is in the store, the client never
                // hears of it.
                let _ = service
                    .call(Request::from_parts(parts, s3s::Body::from(body)))
                    .await;
            }
            lock(&shared.requests).push(record);
            reset.notify_one();
            // The connection task resets the socket and drops this handler with it.
            return std::future::pending().await;
        }
        // Listing faults on a request that is not a listing, WrongEtag (applied to the
        // service's answer below), or no fault: served normally.
        Some(
            Fault::RepeatListingToken
            | Fault::EndlessListing
            | Fault::JunkListing { .. }
            | Fault::WrongEtag,
        )
        | None => None,
    };
    let response = if let Some(response) = response {
        response
    } else {
        let body = match corrupt_request_at {
            Some(at) => s3s::Body::from(corrupted(&mut body, at).await),
            None => s3s::Body::from(body),
        };
        let request = Request::from_parts(parts, body);
        let mut response = match service.call(request).await {
            Ok(response) => response,
            Err(error) => {
                tracing::warn!(?error, "s3s failed");
                Response::builder()
                    .status(StatusCode::INTERNAL_SERVER_ERROR)
                    .body(s3s::Body::from(Bytes::from_static(b"")))
                    .unwrap_or_default()
            }
        };
        if matches!(fault, Some(Fault::WrongEtag)) && response.status().is_success() {
            response = with_wrong_etag(response).await;
        }
        let is_get = operation == Operation::GetObject && response.status().is_success();
        let (parts, body) = response.into_parts();
        let body = FaultBody::new(body, body_fault, shared.stats.clone(), is_get, Some(reset));
        Response::from_parts(parts, body.boxed())
    };
    if let (Some(data), Some(key)) = (replace_with, &key) {
        let object = StoredObject::new(data, &PutOptions::default());
        lock(&shared.store.objects).insert(key.clone(), object);
    }
    record.status = response.status().as_u16();
    lock(&shared.requests).push(record);
    response
}

fn xml_response(body: Bytes) -> Response<ResponseBody> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/xml")
        .body(Full::new(body).map_err(|never| match never {}).boxed())
        .unwrap_or_default()
}

fn error_response(status: u16, code: &str, method: &http::Method) -> Response<ResponseBody> {
    let body = if *method == http::Method::HEAD {
        Bytes::new()
    } else {
        error_body(code)
    };
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/xml")
        .body(Full::new(body).map_err(|never| match never {}).boxed())
        .unwrap_or_default()
}
