//! Checks of the test S3 server, its fault layer and the counting proxy over real sockets,
//! with a minimal blocking HTTP/1.1 client so every byte, reset and stall is visible; and of
//! its upload side with aws-sdk-s3, the client the mirror uploads with (module `uploads`).
//! Nothing sleeps and hopes: waits poll a condition against a deadline.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use md5::{Digest, Md5};
use sha2::Digest as _;
use tests::faults::{Fault, FaultRule};
use tests::proxy::CountingProxy;
use tests::s3_server::{ACCESS_KEY, ChecksumAlgo, PutOptions, SECRET_KEY, TestS3};

const BUCKET: &str = "nsf-ncar-era5";
const DEADLINE: Duration = Duration::from_secs(10);

/// Deterministic, incompressible test bytes.
fn data(size: usize) -> Bytes {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn rule(fault: Fault) -> FaultRule {
    FaultRule::new(fault)
}

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client
// ---------------------------------------------------------------------------------------------

struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn content_length(&self) -> usize {
        self.header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

struct Reply {
    head: Head,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

struct Connection {
    reader: BufReader<TcpStream>,
    host: String,
}

impl Connection {
    fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
        Self {
            reader: BufReader::new(stream),
            host: addr.to_string(),
        }
    }

    fn send(&mut self, method: &str, target: &str, headers: &[(&str, &str)]) {
        let mut request = format!("{method} {target} HTTP/1.1\r\nhost: {}\r\n", self.host);
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        self.reader
            .get_mut()
            .write_all(request.as_bytes())
            .expect("send");
    }

    fn read_head(&mut self) -> Head {
        let mut status_line = String::new();
        self.reader
            .read_line(&mut status_line)
            .expect("status line");
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("header line");
            let line = line.trim_end();
            if line.is_empty() {
                return Head { status, headers };
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
    }

    /// Reads up to `limit` body bytes; stops early at EOF or an error, which it returns.
    fn read_body(&mut self, limit: usize) -> (Vec<u8>, Option<std::io::Error>) {
        let mut body = Vec::with_capacity(limit);
        let mut buffer = [0u8; 16 << 10];
        while body.len() < limit {
            let want = buffer.len().min(limit - body.len());
            match self.reader.read(&mut buffer[..want]) {
                Ok(0) => return (body, None),
                Ok(n) => body.extend_from_slice(&buffer[..n]),
                Err(e) => return (body, Some(e)),
            }
        }
        (body, None)
    }

    fn request(&mut self, method: &str, target: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(method, target, headers);
        let head = self.read_head();
        let length = if method == "HEAD" || head.status == 304 {
            0
        } else {
            head.content_length()
        };
        let (body, error) = self.read_body(length);
        assert!(
            error.is_none() && body.len() == length,
            "short body: {error:?}"
        );
        Reply { head, body }
    }
}

fn request(s3: &TestS3, method: &str, target: &str, headers: &[(&str, &str)]) -> Reply {
    Connection::open(s3.addr()).request(method, target, headers)
}

fn object_path(key: &str) -> String {
    format!("/{BUCKET}/{key}")
}

/// Every `<tag>value</tag>` of an XML document, in order.
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split_once(&close).map(|(value, _)| value.to_string()))
        .collect()
}

fn query_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// SigV4, just enough for a GET with no query
// ---------------------------------------------------------------------------------------------

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    use sha2::Sha256;
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::digest([pad(0x36).as_slice(), message].concat());
    Sha256::digest([pad(0x5c).as_slice(), inner.as_slice()].concat()).to_vec()
}

fn sigv4_headers(host: &str, path: &str, access_key: &str, secret: &str) -> Vec<(String, String)> {
    let now = jiff::Timestamp::now();
    let amz_date = now.strftime("%Y%m%dT%H%M%SZ").to_string();
    let date = &amz_date[..8];
    let scope = format!("{date}/us-east-1/s3/aws4_request");
    let payload = "UNSIGNED-PAYLOAD";
    let canonical = format!(
        "GET\n{path}\n\nhost:{host}\nx-amz-content-sha256:{payload}\nx-amz-date:{amz_date}\n\nhost;x-amz-content-sha256;x-amz-date\n{payload}"
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(sha2::Sha256::digest(canonical.as_bytes()))
    );
    let mut key = format!("AWS4{secret}").into_bytes();
    for part in [date, "us-east-1", "s3", "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let signature = hex::encode(hmac_sha256(&key, to_sign.as_bytes()));
    vec![
        ("x-amz-content-sha256".into(), payload.into()),
        ("x-amz-date".into(), amz_date.clone()),
        (
            "authorization".into(),
            format!(
                "AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={signature}"
            ),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Protocol
// ---------------------------------------------------------------------------------------------

#[test]
fn listing_pages_return_every_key_once_in_order() {
    let s3 = TestS3::start(BUCKET);
    let mut keys: Vec<String> = (0..7)
        .map(|i| format!("month/20240{}/k{i}", i % 3))
        .collect();
    for key in &keys {
        s3.put_object(key, Bytes::from_static(b"x"));
    }
    s3.put_object("other/k", Bytes::from_static(b"x"));
    keys.sort();
    s3.set_list_max_keys(Some(2));

    let (mut listed, mut pages, mut token) = (Vec::new(), 0, None::<String>);
    loop {
        let mut target = format!("/{BUCKET}?list-type=2&prefix=month%2F&max-keys=1000");
        if let Some(token) = &token {
            target.push_str(&format!("&continuation-token={}", query_encode(token)));
        }
        let reply = request(&s3, "GET", &target, &[]);
        assert_eq!(reply.head.status, 200, "{}", reply.text());
        let xml = reply.text();
        let page_keys = xml_values(&xml, "Key");
        assert!(page_keys.len() <= 2);
        assert_eq!(xml_values(&xml, "KeyCount"), [page_keys.len().to_string()]);
        assert_eq!(xml_values(&xml, "ETag").len(), page_keys.len());
        assert_eq!(xml_values(&xml, "LastModified").len(), page_keys.len());
        listed.extend(page_keys);
        pages += 1;
        token = xml_values(&xml, "NextContinuationToken").pop();
        let truncated = xml_values(&xml, "IsTruncated") == ["true"];
        assert_eq!(truncated, token.is_some());
        if token.is_none() {
            break;
        }
    }
    assert_eq!(listed, keys);
    assert_eq!(pages, 4);
    assert_eq!(s3.listed_prefixes(), vec!["month/"; 4]);
}

#[test]
fn listing_groups_by_delimiter_and_can_omit_etags() {
    let s3 = TestS3::start(BUCKET);
    for key in ["a/1", "a/2", "b", "c/x/1"] {
        s3.put_object(key, Bytes::from_static(b"x"));
    }
    s3.set_list_omits_etag(true);
    let reply = request(
        &s3,
        "GET",
        &format!("/{BUCKET}?list-type=2&delimiter=%2F"),
        &[],
    );
    let xml = reply.text();
    assert_eq!(xml_values(&xml, "Key"), ["b"]);
    assert_eq!(
        xml_values(&xml, "Prefix")
            .iter()
            .filter(|p| !p.is_empty())
            .count(),
        2
    );
    assert!(xml.contains("<Prefix>a/</Prefix>") && xml.contains("<Prefix>c/</Prefix>"));
    assert!(xml_values(&xml, "ETag").is_empty());
    let reply = request(
        &s3,
        "GET",
        &format!("/{BUCKET}?list-type=2&start-after=a%2F2"),
        &[],
    );
    assert_eq!(xml_values(&reply.text(), "Key"), ["b", "c/x/1"]);
}

#[test]
fn delimited_pages_never_repeat_a_common_prefix() {
    let s3 = TestS3::start(BUCKET);
    for key in ["a/1", "a/2", "a/3", "b", "c/1", "c/2"] {
        s3.put_object(key, Bytes::from_static(b"x"));
    }
    let (mut entries, mut token) = (Vec::new(), None::<String>);
    loop {
        let mut target = format!("/{BUCKET}?list-type=2&delimiter=%2F&max-keys=1");
        if let Some(token) = &token {
            target.push_str(&format!("&continuation-token={}", query_encode(token)));
        }
        let xml = request(&s3, "GET", &target, &[]).text();
        entries.extend(xml_values(&xml, "Key"));
        entries.extend(
            xml_values(&xml, "Prefix")
                .into_iter()
                .filter(|p| !p.is_empty()),
        );
        token = xml_values(&xml, "NextContinuationToken").pop();
        if token.is_none() {
            break;
        }
    }
    assert_eq!(entries, ["a/", "b", "c/"]);
}

#[test]
fn multipart_etag_is_the_md5_of_the_part_md5s() {
    let s3 = TestS3::start(BUCKET);
    let body = data((5 << 20) / 2);
    let part = 1 << 20;
    s3.put_object_with(
        "mp",
        body.clone(),
        PutOptions {
            part_size: Some(part),
            ..PutOptions::default()
        },
    );
    let digests: Vec<u8> = body
        .chunks(part)
        .flat_map(|c| Md5::digest(c).to_vec())
        .collect();
    let expected = format!("\"{}-3\"", hex::encode(Md5::digest(&digests)));
    let reply = request(&s3, "HEAD", &object_path("mp"), &[]);
    assert_eq!(reply.head.header("etag"), Some(expected.as_str()));
    assert_eq!(s3.object("mp").expect("stored").etag, expected);

    s3.put_object("single", body.clone());
    let single = format!("\"{}\"", hex::encode(Md5::digest(&body)));
    assert_eq!(s3.object("single").expect("stored").etag, single);
}

#[test]
fn ranges_return_206_and_unsatisfiable_ones_416() {
    let s3 = TestS3::start(BUCKET);
    let body = data(1000);
    s3.put_object("r", body.clone());
    let cases = [
        ("bytes=10-19", 10..20),
        ("bytes=990-", 990..1000),
        ("bytes=-5", 995..1000),
    ];
    for (range, expected) in cases {
        let reply = request(&s3, "GET", &object_path("r"), &[("range", range)]);
        assert_eq!(reply.head.status, 206, "{range}");
        let content_range = format!("bytes {}-{}/1000", expected.start, expected.end - 1);
        assert_eq!(
            reply.head.header("content-range"),
            Some(content_range.as_str())
        );
        assert_eq!(reply.body, &body[expected]);
    }
    let reply = request(&s3, "GET", &object_path("r"), &[("range", "bytes=1000-")]);
    assert_eq!(reply.head.status, 416);
    assert_eq!(xml_values(&reply.text(), "Code"), ["InvalidRange"]);
}

#[test]
fn conditions_give_412_and_304() {
    let s3 = TestS3::start(BUCKET);
    s3.put_object("c", data(100));
    let etag = s3.object("c").expect("stored").etag;
    let reply = request(&s3, "GET", &object_path("c"), &[("if-match", "\"0000\"")]);
    assert_eq!(reply.head.status, 412);
    assert_eq!(xml_values(&reply.text(), "Code"), ["PreconditionFailed"]);
    let reply = request(
        &s3,
        "GET",
        &object_path("c"),
        &[("if-match", &etag), ("range", "bytes=0-9")],
    );
    assert_eq!(reply.head.status, 206);
    let reply = request(&s3, "HEAD", &object_path("c"), &[("if-match", "\"0000\"")]);
    assert_eq!(reply.head.status, 412);
    let reply = request(&s3, "GET", &object_path("c"), &[("if-none-match", &etag)]);
    assert_eq!(reply.head.status, 304);
}

#[test]
fn checksums_are_sent_for_whole_objects_in_checksum_mode() {
    let s3 = TestS3::start(BUCKET);
    let body = data(70_000);
    s3.put_object_with(
        "k",
        body.clone(),
        PutOptions {
            checksum: Some(ChecksumAlgo::Crc64nvme),
            ..PutOptions::default()
        },
    );
    let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, &body);
    let expected = BASE64.encode(crc.to_be_bytes());
    let mode = ("x-amz-checksum-mode", "ENABLED");
    for method in ["HEAD", "GET"] {
        let reply = request(&s3, method, &object_path("k"), &[mode]);
        assert_eq!(
            reply.head.header("x-amz-checksum-crc64nvme"),
            Some(expected.as_str())
        );
        assert_eq!(
            reply.head.header("x-amz-checksum-type"),
            Some("FULL_OBJECT")
        );
    }
    let ranged = request(
        &s3,
        "GET",
        &object_path("k"),
        &[mode, ("range", "bytes=0-9")],
    );
    assert_eq!(ranged.head.header("x-amz-checksum-crc64nvme"), None);
    let not_asked = request(&s3, "GET", &object_path("k"), &[]);
    assert_eq!(not_asked.head.header("x-amz-checksum-crc64nvme"), None);

    let sha = BASE64.encode(sha2::Sha256::digest(&body));
    s3.put_object_with(
        "s",
        body.clone(),
        PutOptions {
            checksum: Some(ChecksumAlgo::Sha256),
            checksum_override: Some("d3Jvbmc=".into()),
            ..PutOptions::default()
        },
    );
    let reply = request(&s3, "HEAD", &object_path("s"), &[mode]);
    assert_eq!(reply.head.header("x-amz-checksum-sha256"), Some("d3Jvbmc="));
    assert_ne!(sha, "d3Jvbmc=");
}

#[test]
fn missing_keys_and_buckets_have_their_codes() {
    let s3 = TestS3::start(BUCKET);
    let reply = request(&s3, "GET", &object_path("nope"), &[]);
    assert_eq!(
        (reply.head.status, xml_values(&reply.text(), "Code")),
        (404, vec!["NoSuchKey".into()])
    );
    let reply = request(&s3, "GET", "/another-bucket/k", &[]);
    assert_eq!(
        (reply.head.status, xml_values(&reply.text(), "Code")),
        (404, vec!["NoSuchBucket".into()])
    );
}

#[test]
fn signed_and_anonymous_requests_are_both_served() {
    let s3 = TestS3::start(BUCKET);
    s3.put_object("k", data(10));
    let path = object_path("k");
    let host = s3.addr().to_string();
    let signed = sigv4_headers(&host, &path, ACCESS_KEY, SECRET_KEY);
    let headers: Vec<(&str, &str)> = signed
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let reply = request(&s3, "GET", &path, &headers);
    assert_eq!(reply.head.status, 200, "{}", reply.text());
    assert_eq!(reply.body, &data(10)[..]);
    assert_eq!(request(&s3, "GET", &path, &[]).head.status, 200);
}

#[test]
fn keep_alive_serves_several_requests_and_records_them() {
    let s3 = TestS3::start(BUCKET);
    s3.put_object("k", data(300_000));
    let mut connection = Connection::open(s3.addr());
    for range in ["bytes=0-99", "bytes=100-"] {
        let reply = connection.request(
            "GET",
            &object_path("k"),
            &[("range", range), ("if-match", "*")],
        );
        assert_eq!(reply.head.status, 206);
    }
    let records = s3.requests();
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].range.as_deref(), Some("bytes=100-"));
    assert_eq!(records[1].if_match.as_deref(), Some("*"));
    assert_eq!(records[1].key.as_deref(), Some("k"));
    assert_eq!(s3.get_count("k"), 2);
    assert_eq!(s3.body_bytes_sent(), 300_000);
    s3.clear_requests();
    assert!(s3.requests().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------------

#[test]
fn slowdown_and_status_faults_answer_s3_errors() {
    let s3 = TestS3::start(BUCKET);
    s3.put_object("k", data(10));
    s3.set_faults(vec![rule(Fault::SlowDown)]);
    let reply = request(&s3, "GET", &object_path("k"), &[]);
    assert_eq!(reply.head.status, 503);
    assert_eq!(xml_values(&reply.text(), "Code"), ["SlowDown"]);
    s3.set_faults(vec![rule(Fault::Status {
        status: 500,
        code: "InternalError".into(),
    })]);
    let reply = request(&s3, "GET", &object_path("k"), &[]);
    assert_eq!(
        (reply.head.status, xml_values(&reply.text(), "Code")),
        (500, vec!["InternalError".into()])
    );
    assert_eq!(
        s3.requests()
            .last()
            .and_then(|r| r.fault.clone())
            .as_deref(),
        Some("status")
    );
    s3.clear_faults();
    assert_eq!(request(&s3, "GET", &object_path("k"), &[]).head.status, 200);
}

#[test]
fn rules_fire_after_skip_for_times_on_matching_requests_only() {
    let s3 = TestS3::start(BUCKET);
    s3.put_object("a.nc", data(10));
    s3.put_object("b.nc", data(10));
    s3.set_faults(vec![FaultRule {
        method: Some(http::Method::GET),
        key_contains: Some("a.".into()),
        object_gets_only: true,
        query_contains: None,
        operation: None,
        skip: 1,
        times: Some(2),
        fault: Fault::SlowDown,
    }]);
    let ranged = [("range", "bytes=0-1")];
    let requests = [
        ("GET", "a.nc", &ranged[..]),
        ("GET", "a.nc", &[][..]),
        ("HEAD", "a.nc", &ranged[..]),
        ("GET", "b.nc", &ranged[..]),
        ("GET", "a.nc", &ranged[..]),
        ("GET", "a.nc", &ranged[..]),
        ("GET", "a.nc", &ranged[..]),
    ];
    for (method, key, headers) in requests {
        request(&s3, method, &object_path(key), headers);
    }
    let faulted: Vec<bool> = s3.requests().iter().map(|r| r.fault.is_some()).collect();
    // Object GETs, ranged or whole, count; the HEAD and the other key do not.
    assert_eq!(faulted, [false, true, false, false, true, false, false]);
    let statuses: Vec<u16> = s3.requests().iter().map(|r| r.status).collect();
    assert_eq!([statuses[1], statuses[4]], [503, 503]);
}

#[test]
fn reset_mid_body_resets_after_exactly_n_bytes() {
    let s3 = TestS3::start(BUCKET);
    let body = data(1 << 20);
    s3.put_object("k", body.clone());
    s3.set_faults(vec![rule(Fault::ResetMidBody {
        after_bytes: 100_000,
    })]);
    let mut connection = Connection::open(s3.addr());
    connection.send("GET", &object_path("k"), &[]);
    let head = connection.read_head();
    assert_eq!((head.status, head.content_length()), (200, 1 << 20));
    let (received, error) = connection.read_body(1 << 20);
    assert_eq!(received.len(), 100_000);
    assert_eq!(received, &body[..100_000]);
    assert_eq!(error.map(|e| e.kind()), Some(ErrorKind::ConnectionReset));
    assert_eq!(s3.requests()[0].fault.as_deref(), Some("reset"));
}

#[test]
fn truncate_body_closes_cleanly_short_of_content_length() {
    let s3 = TestS3::start(BUCKET);
    s3.put_object("k", data(500_000));
    s3.set_faults(vec![rule(Fault::TruncateBody {
        after_bytes: 70_000,
    })]);
    let mut connection = Connection::open(s3.addr());
    connection.send("GET", &object_path("k"), &[]);
    assert_eq!(connection.read_head().content_length(), 500_000);
    let (received, error) = connection.read_body(500_000);
    assert_eq!(received.len(), 70_000);
    assert!(error.is_none(), "a clean EOF, not {error:?}");
}

#[test]
fn stall_body_sends_nothing_after_n_bytes() {
    let s3 = TestS3::start(BUCKET);
    s3.put_object("k", data(200_000));
    s3.set_faults(vec![rule(Fault::StallBody { after_bytes: 1000 })]);
    let mut connection = Connection::open(s3.addr());
    connection.send("GET", &object_path("k"), &[]);
    connection.read_head();
    let (first, _) = connection.read_body(1000);
    assert_eq!(first.len(), 1000);
    connection
        .reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let (more, error) = connection.read_body(1);
    assert!(more.is_empty());
    let kind = error.map(|e| e.kind());
    assert!(
        matches!(kind, Some(ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "{kind:?}"
    );
    // The stalled response counts as in progress until the client leaves.
    assert_eq!(s3.max_concurrent_gets(), 1);
    drop(connection);
    wait_until("the stalled response to end", || {
        s3.reset_max_concurrent_gets();
        s3.max_concurrent_gets() == 0
    });
}

#[test]
fn corrupt_body_flips_one_byte() {
    let s3 = TestS3::start(BUCKET);
    let body = data(300_000);
    s3.put_object("k", body.clone());
    s3.set_faults(vec![rule(Fault::CorruptBody { at: 200_001 })]);
    let reply = request(&s3, "GET", &object_path("k"), &[]);
    let differing: Vec<usize> = (0..body.len())
        .filter(|&i| reply.body[i] != body[i])
        .collect();
    assert_eq!(differing, [200_001]);
}

#[test]
fn slow_body_and_delayed_response_take_at_least_their_time() {
    let s3 = TestS3::start(BUCKET);
    s3.put_object("k", data(40_000));
    s3.set_faults(vec![rule(Fault::SlowBody {
        bytes_per_sec: 100_000,
    })]);
    let started = Instant::now();
    assert_eq!(
        request(&s3, "GET", &object_path("k"), &[]).body.len(),
        40_000
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );

    s3.set_faults(vec![rule(Fault::DelayResponse { millis: 300 })]);
    let started = Instant::now();
    assert_eq!(
        request(&s3, "HEAD", &object_path("k"), &[]).head.status,
        200
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[test]
fn replace_after_response_serves_the_old_bytes_then_a_new_etag() {
    let s3 = TestS3::start(BUCKET);
    let (old, new) = (data(200_000), Bytes::from_static(b"the new version"));
    s3.put_object("k", old.clone());
    let old_etag = s3.object("k").expect("stored").etag;
    s3.set_faults(vec![FaultRule {
        times: Some(1),
        ..rule(Fault::ReplaceAfterResponse { data: new.clone() })
    }]);
    let reply = request(&s3, "GET", &object_path("k"), &[]);
    assert_eq!(reply.body, &old[..]);
    assert_eq!(reply.head.header("etag"), Some(old_etag.as_str()));
    let head = request(&s3, "HEAD", &object_path("k"), &[]);
    let new_etag = format!("\"{}\"", hex::encode(Md5::digest(&new)));
    assert_eq!(head.head.header("etag"), Some(new_etag.as_str()));
    let stale = request(&s3, "GET", &object_path("k"), &[("if-match", &old_etag)]);
    assert_eq!(stale.head.status, 412);
}

// ---------------------------------------------------------------------------------------------
// Concurrency and the proxy
// ---------------------------------------------------------------------------------------------

/// Three GETs whose bodies stall, each on its own connection.
fn three_stalled_gets(s3: &TestS3, addr: SocketAddr) -> Vec<Connection> {
    s3.put_object("big", data(100_000));
    s3.set_faults(vec![rule(Fault::StallBody { after_bytes: 10 })]);
    (0..3)
        .map(|_| {
            let mut connection = Connection::open(addr);
            connection.send("GET", &object_path("big"), &[]);
            assert_eq!(connection.read_head().status, 200);
            connection
        })
        .collect()
}

#[test]
fn concurrent_gets_are_counted() {
    let s3 = TestS3::start(BUCKET);
    let connections = three_stalled_gets(&s3, s3.addr());
    assert_eq!(s3.max_concurrent_gets(), 3);
    drop(connections);
    wait_until("the responses to end", || {
        s3.reset_max_concurrent_gets();
        s3.max_concurrent_gets() == 0
    });
}

#[test]
fn proxy_counts_concurrent_connections() {
    let s3 = TestS3::start(BUCKET);
    let proxy = CountingProxy::start(s3.addr());
    let proxy_addr: SocketAddr = proxy
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .expect("addr");
    let connections = three_stalled_gets(&s3, proxy_addr);
    assert_eq!(proxy.open(), 3);
    wait_until("the peak to count 3", || proxy.max_open() == 3);
    assert_eq!(proxy.total_accepted(), 3);
    drop(connections);
    wait_until("the proxy to see the closes", || proxy.open() == 0);
    proxy.reset_max();
    assert_eq!(proxy.max_open(), 0);

    // Sequential connections never overlap.
    s3.clear_faults();
    for _ in 0..5 {
        let reply = Connection::open(proxy_addr).request("HEAD", &object_path("big"), &[]);
        assert_eq!(reply.head.status, 200);
        wait_until("the close", || proxy.open() == 0);
    }
    assert_eq!(proxy.max_open(), 1);
    assert_eq!(proxy.total_accepted(), 8);
}

// ---------------------------------------------------------------------------------------------
// Uploads, through aws-sdk-s3 (its default checksums, aws-chunked bodies and multipart calls)
// over the mirror's own HTTP client
// ---------------------------------------------------------------------------------------------

mod uploads {
    use super::{BUCKET, CountingProxy, data, object_path, request, rule};

    use std::time::{Duration, SystemTime};

    use aws_sdk_s3::Client;
    use aws_sdk_s3::config::retry::RetryConfig;
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
    use aws_sdk_s3::primitives::ByteStream;
    use aws_sdk_s3::types::{
        ChecksumAlgorithm, ChecksumMode, ChecksumType, CompletedMultipartUpload, CompletedPart,
    };
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use bytes::Bytes;
    use md5::{Digest, Md5};
    use tests::faults::{Fault, FaultRule};
    use tests::s3_server::{
        ACCESS_KEY, ChecksumAlgo, MIN_PART_SIZE, Operation, SECRET_KEY, TestS3,
    };

    const MIB: usize = 1 << 20;

    /// A signed client of `s3` without retries, so every request a test makes is one request
    /// the server sees.
    fn client(s3: &TestS3) -> Client {
        client_at(&s3.endpoint())
    }

    fn client_at(endpoint: &str) -> Client {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(transport::BoundedHttpClient::new(
                transport::PoolConfig::new(4),
            ))
            .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
            .region(Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .force_path_style(true)
            .retry_config(RetryConfig::disabled())
            .build();
        Client::from_conf(config)
    }

    /// The status and S3 error code of a failed call.
    fn failure<T: std::fmt::Debug, E: ProvideErrorMetadata + std::fmt::Debug>(
        result: Result<T, SdkError<E>>,
    ) -> (u16, String) {
        let error = result.expect_err("the call should fail");
        let status = error.raw_response().map_or(0, |r| r.status().as_u16());
        (status, error.code().unwrap_or_default().to_string())
    }

    fn quoted_md5(data: &[u8]) -> String {
        format!("\"{}\"", hex::encode(Md5::digest(data)))
    }

    fn base64_md5(data: &[u8]) -> String {
        BASE64.encode(Md5::digest(data))
    }

    /// The ETag AWS gives an object uploaded in these parts.
    fn multipart_etag(parts: &[Bytes]) -> String {
        let digests: Vec<u8> = parts.iter().flat_map(|p| Md5::digest(p).to_vec()).collect();
        format!("\"{}-{}\"", hex::encode(Md5::digest(&digests)), parts.len())
    }

    async fn create(client: &Client, key: &str) -> String {
        client
            .create_multipart_upload()
            .bucket(BUCKET)
            .key(key)
            .send()
            .await
            .expect("create")
            .upload_id()
            .expect("an upload id")
            .to_string()
    }

    async fn upload_part(
        client: &Client,
        key: &str,
        id: &str,
        number: i32,
        part: &Bytes,
    ) -> String {
        client
            .upload_part()
            .bucket(BUCKET)
            .key(key)
            .upload_id(id)
            .part_number(number)
            .body(ByteStream::from(part.clone()))
            .send()
            .await
            .expect("upload part")
            .e_tag()
            .expect("a part ETag")
            .to_string()
    }

    fn completed(parts: &[(i32, &str)]) -> CompletedMultipartUpload {
        CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .iter()
                    .map(|(number, etag)| {
                        CompletedPart::builder()
                            .part_number(*number)
                            .e_tag(*etag)
                            .build()
                    })
                    .collect(),
            ))
            .build()
    }

    #[tokio::test]
    async fn a_multipart_upload_appears_only_at_completion_with_the_aws_etag() {
        let s3 = TestS3::start(BUCKET);
        let client = client(&s3);
        let key = "e5.oper.an.sfc/202401/x.nc";
        let parts = [data(5 * MIB), data(5 * MIB + 1).slice(1..), data(MIB / 2)];
        assert_ne!(parts[0], parts[1]);
        let id = client
            .create_multipart_upload()
            .bucket(BUCKET)
            .key(key)
            .metadata("era5-source-etag", "\"abc-2\"")
            .send()
            .await
            .expect("create")
            .upload_id()
            .expect("an upload id")
            .to_string();
        let mut etags = Vec::new();
        for (number, part) in (1..).zip(&parts) {
            let etag = upload_part(&client, key, &id, number, part).await;
            assert_eq!(etag, quoted_md5(part));
            etags.push(etag);
        }
        // Not visible before completion, to the server's store or to a client.
        assert!(s3.object(key).is_none());
        let head = client.head_object().bucket(BUCKET).key(key).send().await;
        assert_eq!(failure(head).0, 404);
        let open = s3.uploads();
        assert_eq!(open.len(), 1);
        assert_eq!(
            (open[0].key.as_str(), open[0].upload_id.as_str()),
            (key, id.as_str())
        );
        let sizes: Vec<(i32, u64)> = open[0].parts.iter().map(|p| (p.number, p.size)).collect();
        assert_eq!(sizes, [(1, 5 << 20), (2, 5 << 20), (3, 1 << 19)]);

        let listed: Vec<(i32, &str)> = (1..).zip(etags.iter().map(String::as_str)).collect();
        let done = client
            .complete_multipart_upload()
            .bucket(BUCKET)
            .key(key)
            .upload_id(&id)
            .multipart_upload(completed(&listed))
            .send()
            .await
            .expect("complete");
        let expected = multipart_etag(&parts);
        assert_eq!(done.e_tag(), Some(expected.as_str()));
        assert_eq!(s3.object(key).expect("stored").etag, expected);
        assert!(s3.uploads().is_empty());

        let got = client
            .get_object()
            .bucket(BUCKET)
            .key(key)
            .send()
            .await
            .expect("get");
        assert_eq!(got.e_tag(), Some(expected.as_str()));
        let metadata = got.metadata().cloned().unwrap_or_default();
        assert_eq!(
            metadata.get("era5-source-etag").map(String::as_str),
            Some("\"abc-2\"")
        );
        let body = got.body.collect().await.expect("body").into_bytes();
        assert_eq!(body, [&parts[0][..], &parts[1][..], &parts[2][..]].concat());

        let again = client
            .list_parts()
            .bucket(BUCKET)
            .key(key)
            .upload_id(&id)
            .send()
            .await;
        assert_eq!(failure(again), (404, "NoSuchUpload".into()));
        assert_eq!(
            [
                Operation::CreateMultipartUpload,
                Operation::UploadPart,
                Operation::CompleteMultipartUpload,
                Operation::ListParts,
                Operation::GetObject,
                Operation::HeadObject,
            ]
            .map(|op| s3.count(op)),
            [1, 3, 1, 1, 1, 1]
        );
        let part_queries: Vec<String> = s3
            .requests()
            .into_iter()
            .filter(|r| r.operation == Operation::UploadPart)
            .map(|r| r.query.unwrap_or_default())
            .collect();
        for (number, query) in (1..).zip(&part_queries) {
            assert!(query.contains(&format!("partNumber={number}")), "{query}");
            assert!(query.contains(&format!("uploadId={id}")), "{query}");
        }
    }

    #[tokio::test]
    async fn put_object_checks_content_md5_and_checksums_and_keeps_metadata() {
        let s3 = TestS3::start(BUCKET);
        let client = client(&s3);
        let body = data(100_000);
        let put = client
            .put_object()
            .bucket(BUCKET)
            .key("k")
            .content_md5(base64_md5(&body))
            .metadata("era5-sha256", "x")
            .body(ByteStream::from(body.clone()))
            .send()
            .await
            .expect("put");
        assert_eq!(put.e_tag(), Some(quoted_md5(&body).as_str()));
        let head = client
            .head_object()
            .bucket(BUCKET)
            .key("k")
            .send()
            .await
            .expect("head");
        assert_eq!(head.e_tag(), Some(quoted_md5(&body).as_str()));
        assert_eq!(head.content_length(), Some(100_000));
        let metadata = head.metadata().cloned().unwrap_or_default();
        assert_eq!(metadata.get("era5-sha256").map(String::as_str), Some("x"));
        // The SDK sent its default CRC32, which the server checked and kept.
        let crc = s3.object("k").expect("stored").checksum;
        assert_eq!(
            crc,
            Some((ChecksumAlgo::Crc32, ChecksumAlgo::Crc32.compute(&body)))
        );

        let other = data(99);
        let cases = [
            (Some(base64_md5(&other)), None, (400, "BadDigest")),
            (
                Some("not base64!".to_string()),
                None,
                (400, "InvalidDigest"),
            ),
            (Some(BASE64.encode([0u8; 8])), None, (400, "InvalidDigest")),
            (
                None,
                Some(ChecksumAlgo::Sha256.compute(&other)),
                (400, "BadDigest"),
            ),
        ];
        for (md5, sha256, expected) in cases {
            let result = client
                .put_object()
                .bucket(BUCKET)
                .key("bad")
                .set_content_md5(md5.clone())
                .set_checksum_sha256(sha256.clone())
                .body(ByteStream::from(body.clone()))
                .send()
                .await;
            let (status, code) = failure(result);
            assert_eq!((status, code.as_str()), expected, "{md5:?} {sha256:?}");
        }
        assert!(s3.object("bad").is_none());
        assert_eq!(s3.count(Operation::PutObject), 5);
    }

    #[tokio::test]
    async fn a_streamed_put_is_decoded_and_its_trailing_checksum_checked() {
        let s3 = TestS3::start(BUCKET);
        let client = client(&s3);
        let body = data(300_000);
        // A body the SDK cannot see whole goes out aws-chunked, its CRC32 in a trailer.
        let stream = ByteStream::from_body_1_x(http_body_util::Full::new(body.clone()));
        client
            .put_object()
            .bucket(BUCKET)
            .key("streamed")
            .content_length(body.len() as i64)
            .body(stream)
            .send()
            .await
            .expect("streamed put");
        let object = s3.object("streamed").expect("stored");
        assert_eq!(object.data, body);
        assert_eq!(
            object.checksum,
            Some((ChecksumAlgo::Crc32, ChecksumAlgo::Crc32.compute(&body)))
        );
    }

    #[tokio::test]
    async fn an_upload_with_a_checksum_algorithm_needs_it_on_every_part() {
        let s3 = TestS3::start(BUCKET);
        let client = client(&s3);
        s3.set_min_part_size(0);
        let parts = [data(3000), data(1000)];
        let whole = [&parts[0][..], &parts[1][..]].concat();

        // COMPOSITE: the parts' CRC32Cs, listed again at completion.
        let id = client
            .create_multipart_upload()
            .bucket(BUCKET)
            .key("composite")
            .checksum_algorithm(ChecksumAlgorithm::Crc32C)
            .send()
            .await
            .expect("create")
            .upload_id()
            .expect("an upload id")
            .to_string();
        let default_crc32 = client
            .upload_part()
            .bucket(BUCKET)
            .key("composite")
            .upload_id(&id)
            .part_number(1)
            .body(ByteStream::from(parts[0].clone()))
            .send()
            .await;
        assert_eq!(failure(default_crc32), (400, "InvalidRequest".into()));
        let mut listed = Vec::new();
        for (number, part) in (1..).zip(&parts) {
            let out = client
                .upload_part()
                .bucket(BUCKET)
                .key("composite")
                .upload_id(&id)
                .part_number(number)
                .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                .body(ByteStream::from(part.clone()))
                .send()
                .await
                .expect("part");
            let crc = out
                .checksum_crc32_c()
                .expect("the part's CRC32C")
                .to_string();
            assert_eq!(crc, ChecksumAlgo::Crc32c.compute(part));
            listed.push(
                CompletedPart::builder()
                    .part_number(number)
                    .e_tag(out.e_tag().expect("ETag"))
                    .checksum_crc32_c(crc)
                    .build(),
            );
        }
        let without_checksums: Vec<CompletedPart> = listed
            .iter()
            .map(|p| {
                CompletedPart::builder()
                    .set_part_number(p.part_number())
                    .set_e_tag(p.e_tag().map(str::to_string))
                    .build()
            })
            .collect();
        let complete = |parts: Vec<CompletedPart>| {
            client
                .complete_multipart_upload()
                .bucket(BUCKET)
                .key("composite")
                .upload_id(&id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
        };
        assert_eq!(
            failure(complete(without_checksums).await),
            (400, "InvalidRequest".into())
        );
        let done = complete(listed).await.expect("complete");
        let composite = ChecksumAlgo::Crc32c.composite(&whole, 3000);
        assert!(composite.ends_with("-2"), "{composite}");
        assert_eq!(done.checksum_crc32_c(), Some(composite.as_str()));
        let head = client
            .head_object()
            .bucket(BUCKET)
            .key("composite")
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .expect("head");
        assert_eq!(head.checksum_crc32_c(), Some(composite.as_str()));
        assert_eq!(head.checksum_type(), Some(&ChecksumType::Composite));

        // FULL_OBJECT: one CRC64NVME over the whole object, no part checksums to list.
        let id = client
            .create_multipart_upload()
            .bucket(BUCKET)
            .key("full")
            .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
            .checksum_type(ChecksumType::FullObject)
            .send()
            .await
            .expect("create")
            .upload_id()
            .expect("an upload id")
            .to_string();
        let mut etags = Vec::new();
        for (number, part) in (1..).zip(&parts) {
            let out = client
                .upload_part()
                .bucket(BUCKET)
                .key("full")
                .upload_id(&id)
                .part_number(number)
                .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
                .body(ByteStream::from(part.clone()))
                .send()
                .await
                .expect("part");
            etags.push(out.e_tag().expect("ETag").to_string());
        }
        let full = ChecksumAlgo::Crc64nvme.compute(&whole);
        let wrong = ChecksumAlgo::Crc64nvme.compute(b"other");
        let listed: Vec<(i32, &str)> = (1..).zip(etags.iter().map(String::as_str)).collect();
        let complete = |crc: &str| {
            client
                .complete_multipart_upload()
                .bucket(BUCKET)
                .key("full")
                .upload_id(&id)
                .checksum_crc64_nvme(crc)
                .checksum_type(ChecksumType::FullObject)
                .multipart_upload(completed(&listed))
                .send()
        };
        assert_eq!(failure(complete(&wrong).await), (400, "BadDigest".into()));
        let done = complete(&full).await.expect("complete");
        assert_eq!(done.checksum_crc64_nvme(), Some(full.as_str()));
        let object = s3.object("full").expect("stored");
        assert_eq!(object.checksum, Some((ChecksumAlgo::Crc64nvme, full)));
        assert!(!object.composite_checksum);
    }

    #[tokio::test]
    async fn upload_part_checks_content_md5_and_a_new_part_replaces_the_old() {
        let s3 = TestS3::start(BUCKET);
        let client = client(&s3);
        let id = create(&client, "k").await;
        let part = data(1000);
        let wrong = client
            .upload_part()
            .bucket(BUCKET)
            .key("k")
            .upload_id(&id)
            .part_number(1)
            .content_md5(base64_md5(b"something else"))
            .body(ByteStream::from(part.clone()))
            .send()
            .await;
        assert_eq!(failure(wrong), (400, "BadDigest".into()));
        assert!(s3.uploads()[0].parts.is_empty());

        let first = client
            .upload_part()
            .bucket(BUCKET)
            .key("k")
            .upload_id(&id)
            .part_number(1)
            .content_md5(base64_md5(&part))
            .body(ByteStream::from(part.clone()))
            .send()
            .await
            .expect("part 1");
        assert_eq!(first.e_tag(), Some(quoted_md5(&part).as_str()));
        let replacement = data(2000);
        let etag = upload_part(&client, "k", &id, 1, &replacement).await;
        let parts = &s3.uploads()[0].parts;
        assert_eq!(parts.len(), 1);
        assert_eq!((parts[0].size, &parts[0].etag), (2000, &etag));
        assert_eq!(etag, quoted_md5(&replacement));

        for number in [0, 10_001] {
            let out_of_range = client
                .upload_part()
                .bucket(BUCKET)
                .key("k")
                .upload_id(&id)
                .part_number(number)
                .body(ByteStream::from(part.clone()))
                .send()
                .await;
            assert_eq!(failure(out_of_range), (400, "InvalidArgument".into()));
        }
        // An upload id is bound to its key.
        let other_key = client
            .upload_part()
            .bucket(BUCKET)
            .key("other")
            .upload_id(&id)
            .part_number(1)
            .body(ByteStream::from(part.clone()))
            .send()
            .await;
        assert_eq!(failure(other_key), (404, "NoSuchUpload".into()));
    }

    #[tokio::test]
    async fn list_parts_pages_by_max_parts_and_marker() {
        let s3 = TestS3::start(BUCKET);
        let client = client(&s3);
        let parts: Vec<Bytes> = (1..=5).map(|n| data(100 * n)).collect();
        let id = s3.create_upload("k", parts.clone());
        let (mut seen, mut pages, mut marker) = (Vec::new(), Vec::new(), None::<String>);
        loop {
            let page = client
                .list_parts()
                .bucket(BUCKET)
                .key("k")
                .upload_id(&id)
                .max_parts(2)
                .set_part_number_marker(marker.clone())
                .send()
                .await
                .expect("list parts");
            for part in page.parts() {
                let number = part.part_number().expect("number");
                let expected = &parts[number as usize - 1];
                assert_eq!(part.size(), Some(expected.len() as i64));
                assert_eq!(part.e_tag(), Some(quoted_md5(expected).as_str()));
                assert!(part.last_modified().is_some());
                seen.push(number);
            }
            let truncated = page.is_truncated() == Some(true);
            pages.push((
                page.parts().len(),
                truncated,
                page.next_part_number_marker().map(str::to_string),
            ));
            if !truncated {
                break;
            }
            marker = page.next_part_number_marker().map(str::to_string);
        }
        assert_eq!(seen, [1, 2, 3, 4, 5]);
        assert_eq!(
            pages,
            [
                (2, true, Some("2".to_string())),
                (2, true, Some("4".to_string())),
                (1, false, Some("5".to_string())),
            ]
        );
        assert_eq!(s3.count(Operation::ListParts), 3);
    }

    #[tokio::test]
    async fn list_multipart_uploads_filters_by_prefix_pages_and_shows_the_initiated_time() {
        let s3 = TestS3::start(BUCKET);
        let client = client(&s3);
        let a1 = create(&client, "a/1").await;
        let a2 = create(&client, "a/2").await;
        let a2_again = create(&client, "a/2").await;
        let b1 = create(&client, "b/1").await;
        let week_ago = SystemTime::now() - Duration::from_secs(7 * 86_400);
        assert!(s3.set_upload_initiated(&a2, week_ago));
        assert!(!s3.set_upload_initiated("no-such-upload", week_ago));

        let all = client
            .list_multipart_uploads()
            .bucket(BUCKET)
            .prefix("a/")
            .send()
            .await
            .expect("list uploads");
        let listed: Vec<(&str, &str)> = all
            .uploads()
            .iter()
            .map(|u| {
                (
                    u.key().unwrap_or_default(),
                    u.upload_id().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            listed,
            [
                ("a/1", a1.as_str()),
                ("a/2", a2.as_str()),
                ("a/2", a2_again.as_str())
            ]
        );
        assert_eq!(all.is_truncated(), Some(false));
        let initiated = all.uploads()[1].initiated().expect("initiated").secs();
        let week_ago_secs = week_ago
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs() as i64;
        assert!(
            (initiated - week_ago_secs).abs() <= 1,
            "{initiated} vs {week_ago_secs}"
        );
        let fresh = all.uploads()[0].initiated().expect("initiated").secs();
        assert!(fresh > week_ago_secs + 86_400);

        let first = client
            .list_multipart_uploads()
            .bucket(BUCKET)
            .max_uploads(2)
            .send()
            .await
            .expect("page 1");
        assert_eq!(first.uploads().len(), 2);
        assert_eq!(first.is_truncated(), Some(true));
        assert_eq!(
            (first.next_key_marker(), first.next_upload_id_marker()),
            (Some("a/2"), Some(a2.as_str()))
        );
        let second = client
            .list_multipart_uploads()
            .bucket(BUCKET)
            .max_uploads(2)
            .key_marker("a/2")
            .upload_id_marker(&a2)
            .send()
            .await
            .expect("page 2");
        let rest: Vec<&str> = second
            .uploads()
            .iter()
            .filter_map(|u| u.upload_id())
            .collect();
        assert_eq!(rest, [a2_again.as_str(), b1.as_str()]);
        assert_eq!(second.is_truncated(), Some(false));
        assert_eq!(s3.count(Operation::ListMultipartUploads), 3);
        // Not listings of objects.
        assert_eq!(s3.list_count(), 0);
    }

    #[tokio::test]
    async fn abort_ends_an_upload_and_unknown_ids_are_no_such_upload() {
        let s3 = TestS3::start(BUCKET);
        let client = client(&s3);
        let id = create(&client, "k").await;
        let etag = upload_part(&client, "k", &id, 1, &data(10)).await;
        client
            .abort_multipart_upload()
            .bucket(BUCKET)
            .key("k")
            .upload_id(&id)
            .send()
            .await
            .expect("abort");
        assert!(s3.uploads().is_empty());
        assert!(s3.object("k").is_none());
        let abort = client
            .abort_multipart_upload()
            .bucket(BUCKET)
            .key("k")
            .upload_id(&id)
            .send()
            .await;
        assert_eq!(failure(abort), (404, "NoSuchUpload".into()));
        let part = client
            .upload_part()
            .bucket(BUCKET)
            .key("k")
            .upload_id(&id)
            .part_number(1)
            .body(ByteStream::from(data(10)))
            .send()
            .await;
        assert_eq!(failure(part), (404, "NoSuchUpload".into()));
        let list = client
            .list_parts()
            .bucket(BUCKET)
            .key("k")
            .upload_id(&id)
            .send()
            .await;
        assert_eq!(failure(list), (404, "NoSuchUpload".into()));
        let complete = client
            .complete_multipart_upload()
            .bucket(BUCKET)
            .key("k")
            .upload_id(&id)
            .multipart_upload(completed(&[(1, &etag)]))
            .send()
            .await;
        assert_eq!(failure(complete), (404, "NoSuchUpload".into()));
        assert_eq!(s3.count(Operation::AbortMultipartUpload), 2);
    }

    #[tokio::test]
    async fn complete_refuses_small_parts_disorder_and_unknown_parts() {
        let s3 = TestS3::start(BUCKET);
        let client = client(&s3);
        let id = create(&client, "k").await;
        let (one, two) = (data(MIB), data(MIB + 7));
        let e1 = upload_part(&client, "k", &id, 1, &one).await;
        let e2 = upload_part(&client, "k", &id, 2, &two).await;
        let complete = |parts: Vec<(i32, String)>| {
            let listed: Vec<(i32, &str)> = parts.iter().map(|(n, e)| (*n, e.as_str())).collect();
            client
                .complete_multipart_upload()
                .bucket(BUCKET)
                .key("k")
                .upload_id(&id)
                .multipart_upload(completed(&listed))
                .send()
        };
        let small = complete(vec![(1, e1.clone()), (2, e2.clone())]).await;
        assert_eq!(failure(small), (400, "EntityTooSmall".into()));
        // What a failed completion leaves is still open.
        assert_eq!(s3.uploads().len(), 1);

        s3.set_min_part_size(MIB as u64);
        let disorder = complete(vec![(2, e2.clone()), (1, e1.clone())]).await;
        assert_eq!(failure(disorder), (400, "InvalidPartOrder".into()));
        let repeated = complete(vec![(1, e1.clone()), (1, e1.clone())]).await;
        assert_eq!(failure(repeated), (400, "InvalidPartOrder".into()));
        let wrong_etag = complete(vec![(1, quoted_md5(b"x")), (2, e2.clone())]).await;
        assert_eq!(failure(wrong_etag), (400, "InvalidPart".into()));
        let missing = complete(vec![(1, e1.clone()), (2, e2.clone()), (3, e2.clone())]).await;
        assert_eq!(failure(missing), (400, "InvalidPart".into()));
        assert!(s3.object("k").is_none());

        let done = complete(vec![(1, e1), (2, e2)]).await.expect("complete");
        let expected = multipart_etag(&[one, two]);
        assert_eq!(done.e_tag(), Some(expected.as_str()));
        assert_eq!(MIN_PART_SIZE, 5 << 20);
    }

    #[tokio::test]
    async fn conditional_writes_refuse_with_412() {
        let s3 = TestS3::start(BUCKET);
        let client = client(&s3);
        let put = |body: Bytes, if_none_match: Option<&str>, if_match: Option<&str>| {
            client
                .put_object()
                .bucket(BUCKET)
                .key("k")
                .set_if_none_match(if_none_match.map(str::to_string))
                .set_if_match(if_match.map(str::to_string))
                .body(ByteStream::from(body))
                .send()
        };
        let (first, second) = (data(10), data(20));
        let absent_if_match = put(first.clone(), None, Some(&quoted_md5(&first))).await;
        assert_eq!(failure(absent_if_match), (412, "PreconditionFailed".into()));
        assert!(s3.object("k").is_none());
        put(first.clone(), Some("*"), None)
            .await
            .expect("create only");
        let exists = put(second.clone(), Some("*"), None).await;
        assert_eq!(failure(exists), (412, "PreconditionFailed".into()));
        let stale = put(second.clone(), None, Some(&quoted_md5(&second))).await;
        assert_eq!(failure(stale), (412, "PreconditionFailed".into()));
        assert_eq!(s3.object("k").expect("stored").data, first);
        put(second.clone(), None, Some(&quoted_md5(&first)))
            .await
            .expect("replace that version");
        assert_eq!(s3.object("k").expect("stored").data, second);

        // The same on completion; the refused upload stays open for another try.
        let id = create(&client, "k").await;
        let part = data(30);
        let etag = upload_part(&client, "k", &id, 1, &part).await;
        let complete = |if_none_match: Option<&str>, if_match: Option<&str>| {
            client
                .complete_multipart_upload()
                .bucket(BUCKET)
                .key("k")
                .upload_id(&id)
                .set_if_none_match(if_none_match.map(str::to_string))
                .set_if_match(if_match.map(str::to_string))
                .multipart_upload(completed(&[(1, &etag)]))
                .send()
        };
        assert_eq!(
            failure(complete(Some("*"), None).await),
            (412, "PreconditionFailed".into())
        );
        let stale = complete(None, Some(&quoted_md5(&first))).await;
        assert_eq!(failure(stale), (412, "PreconditionFailed".into()));
        assert_eq!(s3.uploads().len(), 1);
        assert_eq!(s3.object("k").expect("kept").data, second);
        s3.delete_object("k");
        let done = complete(Some("*"), None)
            .await
            .expect("created at completion");
        assert_eq!(done.e_tag(), Some(multipart_etag(&[part]).as_str()));
    }

    #[tokio::test]
    async fn every_operation_on_another_bucket_is_no_such_bucket() {
        let s3 = TestS3::start(BUCKET);
        let client = client(&s3);
        let id = create(&client, "k").await;
        let etag = upload_part(&client, "k", &id, 1, &data(10)).await;
        let other = "another-bucket";
        let body = || ByteStream::from(data(10));
        let no_such_bucket = (404, "NoSuchBucket".to_string());
        let results = [
            failure(
                client
                    .put_object()
                    .bucket(other)
                    .key("k")
                    .body(body())
                    .send()
                    .await,
            ),
            failure(
                client
                    .create_multipart_upload()
                    .bucket(other)
                    .key("k")
                    .send()
                    .await,
            ),
            failure(
                client
                    .upload_part()
                    .bucket(other)
                    .key("k")
                    .upload_id(&id)
                    .part_number(1)
                    .body(body())
                    .send()
                    .await,
            ),
            failure(
                client
                    .list_parts()
                    .bucket(other)
                    .key("k")
                    .upload_id(&id)
                    .send()
                    .await,
            ),
            failure(
                client
                    .complete_multipart_upload()
                    .bucket(other)
                    .key("k")
                    .upload_id(&id)
                    .multipart_upload(completed(&[(1, &etag)]))
                    .send()
                    .await,
            ),
            failure(
                client
                    .abort_multipart_upload()
                    .bucket(other)
                    .key("k")
                    .upload_id(&id)
                    .send()
                    .await,
            ),
            failure(client.list_multipart_uploads().bucket(other).send().await),
            failure(client.get_object().bucket(other).key("k").send().await),
            failure(client.list_objects_v2().bucket(other).send().await),
            failure(client.delete_object().bucket(other).key("k").send().await),
        ];
        for (n, result) in results.into_iter().enumerate() {
            assert_eq!(result, no_such_bucket, "call {n}");
        }
        // A HEAD has no body to name the code in.
        let head = client.head_object().bucket(other).key("k").send().await;
        assert_eq!(failure(head).0, 404);
        // Nothing happened to the real bucket.
        assert_eq!(s3.uploads().len(), 1);
        assert_eq!(s3.uploads()[0].parts.len(), 1);
    }

    #[tokio::test]
    async fn fault_rules_fire_on_their_operation_and_query_only() {
        let s3 = TestS3::start(BUCKET);
        let client = client(&s3);
        s3.set_faults(vec![
            FaultRule {
                operation: Some(Operation::UploadPart),
                query_contains: Some("partNumber=2".into()),
                times: Some(1),
                ..rule(Fault::SlowDown)
            },
            FaultRule {
                operation: Some(Operation::CompleteMultipartUpload),
                times: Some(1),
                ..rule(Fault::Status {
                    status: 500,
                    code: "InternalError".into(),
                })
            },
        ]);
        client
            .put_object()
            .bucket(BUCKET)
            .key("plain")
            .body(ByteStream::from(data(10)))
            .send()
            .await
            .expect("a PutObject is no UploadPart");
        let id = create(&client, "k").await;
        let parts = [data(100), data(200), data(300)];
        let e1 = upload_part(&client, "k", &id, 1, &parts[0]).await;
        let second = client
            .upload_part()
            .bucket(BUCKET)
            .key("k")
            .upload_id(&id)
            .part_number(2)
            .body(ByteStream::from(parts[1].clone()))
            .send()
            .await;
        assert_eq!(failure(second), (503, "SlowDown".into()));
        let e2 = upload_part(&client, "k", &id, 2, &parts[1]).await;
        let e3 = upload_part(&client, "k", &id, 3, &parts[2]).await;
        s3.set_min_part_size(0);
        let listed = [(1, e1.as_str()), (2, e2.as_str()), (3, e3.as_str())];
        let complete = || {
            client
                .complete_multipart_upload()
                .bucket(BUCKET)
                .key("k")
                .upload_id(&id)
                .multipart_upload(completed(&listed))
                .send()
        };
        assert_eq!(failure(complete().await), (500, "InternalError".into()));
        assert!(s3.object("k").is_none());
        complete().await.expect("the second completion");
        assert_eq!(s3.object("k").expect("stored").etag, multipart_etag(&parts));

        let faulted: Vec<(Operation, Option<String>, u16)> = s3
            .requests()
            .into_iter()
            .filter(|r| r.fault.is_some())
            .map(|r| (r.operation, r.fault, r.status))
            .collect();
        assert_eq!(
            faulted,
            [
                (Operation::UploadPart, Some("slowdown".into()), 503),
                (
                    Operation::CompleteMultipartUpload,
                    Some("status".into()),
                    500
                ),
            ]
        );
    }

    #[tokio::test]
    async fn an_error_status_answers_a_large_upload_after_its_body() {
        let s3 = TestS3::start(BUCKET);
        let proxy = CountingProxy::start(s3.addr());
        let client = client_at(&proxy.endpoint());
        s3.set_faults(vec![FaultRule {
            operation: Some(Operation::PutObject),
            ..rule(Fault::Status {
                status: 400,
                code: "BadDigest".into(),
            })
        }]);
        for key in ["big", "bigger"] {
            let put = client
                .put_object()
                .bucket(BUCKET)
                .key(key)
                .body(ByteStream::from(data(6 * MIB)))
                .send()
                .await;
            assert_eq!(failure(put), (400, "BadDigest".into()));
            assert!(s3.object(key).is_none());
        }
        // The server read each body before answering, so the connection stayed in step and
        // served the second upload too.
        assert_eq!(proxy.total_accepted(), 1);
    }

    #[tokio::test]
    async fn a_reset_drops_the_answer_before_or_after_the_write() {
        let s3 = TestS3::start(BUCKET);
        let client = client(&s3);
        let body = data(2 * MIB);
        let put = |key: &'static str| {
            client
                .put_object()
                .bucket(BUCKET)
                .key(key)
                .body(ByteStream::from(body.clone()))
                .send()
        };
        let reset_once = |processed| FaultRule {
            operation: Some(Operation::PutObject),
            times: Some(1),
            ..rule(Fault::Reset { processed })
        };

        s3.set_faults(vec![reset_once(false)]);
        let error = put("lost").await.expect_err("no answer");
        assert!(matches!(error, SdkError::DispatchFailure(_)), "{error:?}");
        assert!(s3.object("lost").is_none());

        s3.set_faults(vec![reset_once(true)]);
        let error = put("kept").await.expect_err("no answer");
        assert!(matches!(error, SdkError::DispatchFailure(_)), "{error:?}");
        assert_eq!(s3.object("kept").expect("stored").etag, quoted_md5(&body));

        let records: Vec<(Option<String>, u16)> = s3
            .requests()
            .into_iter()
            .map(|r| (r.fault, r.status))
            .collect();
        assert_eq!(
            records,
            [
                (Some("reset_unprocessed".into()), 0),
                (Some("reset_processed".into()), 0)
            ]
        );
        // Only once each: the next upload is answered.
        put("lost").await.expect("answered");
        assert!(s3.object("lost").is_some());
    }

    #[tokio::test]
    async fn wrong_etag_reports_another_etag_and_stores_the_object() {
        let s3 = TestS3::start(BUCKET);
        let client = client(&s3);
        s3.set_faults(vec![
            FaultRule {
                operation: Some(Operation::PutObject),
                ..rule(Fault::WrongEtag)
            },
            FaultRule {
                operation: Some(Operation::CompleteMultipartUpload),
                ..rule(Fault::WrongEtag)
            },
        ]);
        let body = data(1000);
        let put = client
            .put_object()
            .bucket(BUCKET)
            .key("single")
            .body(ByteStream::from(body.clone()))
            .send()
            .await
            .expect("put");
        let real = quoted_md5(&body);
        let reported = put.e_tag().expect("an ETag").to_string();
        assert_ne!(reported, real);
        assert_eq!(
            (reported.len(), reported.starts_with('"')),
            (real.len(), true)
        );
        assert_eq!(s3.object("single").expect("stored").etag, real);

        let id = create(&client, "multi").await;
        let part = data(2000);
        // UploadPart is not the rule's operation: its ETag is the true one.
        let etag = upload_part(&client, "multi", &id, 1, &part).await;
        assert_eq!(etag, quoted_md5(&part));
        let done = client
            .complete_multipart_upload()
            .bucket(BUCKET)
            .key("multi")
            .upload_id(&id)
            .multipart_upload(completed(&[(1, &etag)]))
            .send()
            .await
            .expect("complete");
        let real = multipart_etag(&[part]);
        let reported = done.e_tag().expect("an ETag");
        assert_ne!(reported, real);
        assert!(reported.ends_with("-1\""), "{reported}");
        assert_eq!(s3.object("multi").expect("stored").etag, real);
        // A HEAD, outside the rules, tells the truth.
        let head = request(&s3, "HEAD", &object_path("multi"), &[]);
        assert_eq!(head.head.header("etag"), Some(real.as_str()));
    }
}
