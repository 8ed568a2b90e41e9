//! Checks of the test S3 server, its fault layer and the counting proxy over real sockets,
//! with a minimal blocking HTTP/1.1 client so every byte, reset and stall is visible.
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
