//! `era5-bench-server`: a read-only S3 endpoint that costs almost no CPU, so benchmarks measure
//! the clients and not the server. It serves the files of a directory as one bucket:
//! ListObjectsV2 (with pagination), HEAD, GET with a byte range (sent with `sendfile(2)`, the
//! bytes never enter user space), GetBucketLocation and HeadBucket. One thread per connection,
//! HTTP/1.1 keep-alive, no authentication (signatures are accepted and ignored).
//!
//! ETags are computed once per file and cached next to the data: plain MD5s (as a single PUT
//! gives, the default) or, with `--part-mib N`, multipart ETags of N MiB parts. `GET /_stats` returns the connection counters
//! (`open`, `max_open`, `accepted`) and `POST /_stats/reset` restarts the peak, so a benchmark
//! can read each client's peak connections from the server side.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use md5::{Digest, Md5};

struct Entry {
    path: PathBuf,
    size: u64,
    etag: String,
    modified: String,
}

struct Server {
    bucket: String,
    objects: BTreeMap<String, Entry>,
    open: AtomicUsize,
    max_open: AtomicUsize,
    accepted: AtomicUsize,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut listen: SocketAddr = "127.0.0.1:9100".parse().expect("default address");
    let mut dir = None;
    let mut bucket = "nsf-ncar-era5".to_string();
    let mut part_mib: u64 = 0;
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        match flag.as_str() {
            "--listen" => {
                listen = value
                    .parse()
                    .unwrap_or_else(|_| fail(&format!("bad --listen `{value}`")))
            }
            "--dir" => dir = Some(PathBuf::from(value)),
            "--bucket" => bucket = value,
            "--part-mib" => {
                part_mib = value
                    .parse()
                    .unwrap_or_else(|_| fail(&format!("bad --part-mib `{value}`")))
            }
            other => fail(&format!(
                "unknown flag `{other}`; usage: era5-bench-server --dir DIR [--listen ADDR] [--bucket B] [--part-mib N]"
            )),
        }
    }
    let dir = dir.unwrap_or_else(|| fail("--dir is required"));
    let objects = index(&dir, part_mib << 20)
        .unwrap_or_else(|e| fail(&format!("cannot index {}: {e}", dir.display())));
    let listener = TcpListener::bind(listen)
        .unwrap_or_else(|e| fail(&format!("cannot listen on {listen}: {e}")));
    println!(
        "era5-bench-server: serving {} objects of bucket {bucket} at http://{}",
        objects.len(),
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    let server = Arc::new(Server {
        bucket,
        objects,
        open: AtomicUsize::new(0),
        max_open: AtomicUsize::new(0),
        accepted: AtomicUsize::new(0),
    });
    for stream in listener.incoming().flatten() {
        let open = server.open.fetch_add(1, Ordering::SeqCst) + 1;
        server.max_open.fetch_max(open, Ordering::SeqCst);
        server.accepted.fetch_add(1, Ordering::SeqCst);
        let server = server.clone();
        std::thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let _ = serve(&server, stream);
            server.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

fn fail(message: &str) -> ! {
    eprintln!("era5-bench-server: {message}");
    std::process::exit(2);
}

/// Every regular file under `dir` (but the ETag cache), with its cached or computed ETag.
fn index(dir: &Path, part: u64) -> std::io::Result<BTreeMap<String, Entry>> {
    let cache_path = dir.join(format!(".era5-bench-etags-{part}.json"));
    let cache: BTreeMap<String, (u64, String)> = std::fs::read(&cache_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    let mut objects = BTreeMap::new();
    let mut fresh = BTreeMap::new();
    for path in files {
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(".era5-bench-etags"))
        {
            continue;
        }
        let key = path
            .strip_prefix(dir)
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        let meta = std::fs::metadata(&path)?;
        let etag = match cache.get(&key) {
            Some((size, etag)) if *size == meta.len() => etag.clone(),
            _ => etag_of(&path, part)?,
        };
        fresh.insert(key.clone(), (meta.len(), etag.clone()));
        let modified = meta
            .modified()
            .ok()
            .map(httpdate)
            .unwrap_or_else(|| httpdate(std::time::SystemTime::UNIX_EPOCH));
        objects.insert(
            key,
            Entry {
                path,
                size: meta.len(),
                etag,
                modified,
            },
        );
    }
    if fresh != cache {
        let _ = std::fs::write(&cache_path, serde_json::to_vec(&fresh).unwrap_or_default());
    }
    Ok(objects)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// The ETag S3 gives a file uploaded in parts of `part` bytes (0: a single PUT).
fn etag_of(path: &Path, part_size: u64) -> std::io::Result<String> {
    let part_size = if part_size == 0 { u64::MAX } else { part_size };
    let mut file = File::open(path)?;
    let mut parts = Vec::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let mut part = Md5::new();
        let mut in_part = 0u64;
        while in_part < part_size {
            let want = buffer.len().min((part_size - in_part) as usize);
            let read = file.read(&mut buffer[..want])?;
            if read == 0 {
                break;
            }
            part.update(&buffer[..read]);
            in_part += read as u64;
        }
        if in_part == 0 {
            break;
        }
        parts.push(part.finalize());
        if in_part < part_size {
            break;
        }
    }
    Ok(match parts.len() {
        0 => hex::encode(Md5::digest(b"")),
        1 => hex::encode(parts[0]),
        n => {
            let mut outer = Md5::new();
            for part in &parts {
                outer.update(part);
            }
            format!("{}-{n}", hex::encode(outer.finalize()))
        }
    })
}

fn httpdate(time: std::time::SystemTime) -> String {
    let timestamp = jiff::Timestamp::try_from(time).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    timestamp.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

fn iso8601(http_date: &str) -> String {
    jiff::fmt::strtime::parse("%a, %d %b %Y %H:%M:%S GMT", http_date)
        .and_then(|t| t.to_datetime())
        .map(|dt| dt.strftime("%Y-%m-%dT%H:%M:%S.000Z").to_string())
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".into())
}

struct Request {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    range: Option<String>,
}

fn read_request(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or("/").to_string();
    let mut range = None;
    let mut content_length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim().to_string();
            match name.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(value),
                "content-length" => content_length = value.parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    // Read-only: a request body (there should be none) is skipped.
    std::io::copy(
        &mut reader.by_ref().take(content_length as u64),
        &mut std::io::sink(),
    )?;
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect();
    Ok(Some(Request {
        method,
        path: decode(path),
        query,
        range,
    }))
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(value) => {
                        out.push(value);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn serve(server: &Server, stream: TcpStream) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while let Some(request) = read_request(&mut reader)? {
        respond(server, &request, &mut writer)?;
    }
    Ok(())
}

fn param<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request
        .query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn respond(server: &Server, request: &Request, out: &mut TcpStream) -> std::io::Result<()> {
    if request.path == "/_stats" {
        if request.method == "POST" {
            server
                .max_open
                .store(server.open.load(Ordering::SeqCst), Ordering::SeqCst);
        }
        let body = format!(
            "{{\"open\":{},\"max_open\":{},\"accepted\":{}}}",
            server.open.load(Ordering::SeqCst),
            server.max_open.load(Ordering::SeqCst),
            server.accepted.load(Ordering::SeqCst)
        );
        return send(
            out,
            "200 OK",
            "application/json",
            &[],
            body.as_bytes(),
            true,
        );
    }
    let rest = request.path.trim_start_matches('/');
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket != server.bucket {
        return error(out, "404 Not Found", "NoSuchBucket", &request.method);
    }
    match (request.method.as_str(), key) {
        ("GET", "") if param(request, "location").is_some() => send(
            out,
            "200 OK",
            "application/xml",
            &[],
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><LocationConstraint xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"/>",
            true,
        ),
        ("GET", "") => list(server, request, out),
        ("HEAD", "") => send(out, "200 OK", "application/xml", &[], b"", false),
        ("GET" | "HEAD", key) => object(server, key, request, out),
        _ => error(out, "405 Method Not Allowed", "MethodNotAllowed", &request.method),
    }
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn list(server: &Server, request: &Request, out: &mut TcpStream) -> std::io::Result<()> {
    let prefix = param(request, "prefix").unwrap_or("");
    let delimiter = param(request, "delimiter").filter(|d| !d.is_empty());
    let max_keys: usize = param(request, "max-keys")
        .and_then(|m| m.parse().ok())
        .unwrap_or(1000)
        .clamp(1, 1000);
    let after = param(request, "continuation-token")
        .or(param(request, "start-after"))
        .unwrap_or("");
    let mut contents = String::new();
    let mut prefixes: Vec<String> = Vec::new();
    let mut count = 0;
    let mut last = None;
    let mut truncated = false;
    for (key, entry) in server
        .objects
        .range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
    {
        if !key.starts_with(prefix) {
            if key.as_str() > prefix {
                break;
            }
            continue;
        }
        if count >= max_keys {
            truncated = true;
            break;
        }
        last = Some(key.clone());
        if let Some(delimiter) = delimiter
            && let Some(position) = key[prefix.len()..].find(delimiter)
        {
            let common = key[..prefix.len() + position + delimiter.len()].to_string();
            if prefixes.last() != Some(&common) {
                prefixes.push(common);
                count += 1;
            }
            continue;
        }
        count += 1;
        contents.push_str(&format!(
            "<Contents><Key>{}</Key><LastModified>{}</LastModified><ETag>&quot;{}&quot;</ETag><Size>{}</Size><StorageClass>STANDARD</StorageClass></Contents>",
            xml_escape(key),
            iso8601(&entry.modified),
            entry.etag,
            entry.size
        ));
    }
    let common: String = prefixes
        .iter()
        .map(|p| {
            format!(
                "<CommonPrefixes><Prefix>{}</Prefix></CommonPrefixes>",
                xml_escape(p)
            )
        })
        .collect();
    let next = match (truncated, last) {
        (true, Some(last)) => format!(
            "<NextContinuationToken>{}</NextContinuationToken>",
            xml_escape(&last)
        ),
        _ => String::new(),
    };
    let encoding = match param(request, "encoding-type") {
        Some(kind) => format!("<EncodingType>{}</EncodingType>", xml_escape(kind)),
        None => String::new(),
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>{}</Name><Prefix>{}</Prefix><KeyCount>{count}</KeyCount><MaxKeys>{max_keys}</MaxKeys>{encoding}<IsTruncated>{truncated}</IsTruncated>{next}{contents}{common}</ListBucketResult>",
        xml_escape(&server.bucket),
        xml_escape(prefix)
    );
    send(out, "200 OK", "application/xml", &[], body.as_bytes(), true)
}

fn parse_range(header: &str, size: u64) -> Option<(u64, u64)> {
    let spec = header.strip_prefix("bytes=")?;
    let (first, last) = spec.split_once('-')?;
    if first.is_empty() {
        let suffix: u64 = last.parse().ok()?;
        return (suffix > 0 && size > 0).then(|| (size.saturating_sub(suffix), size - 1));
    }
    let first: u64 = first.parse().ok()?;
    let last: u64 = if last.is_empty() {
        size.checked_sub(1)?
    } else {
        last.parse::<u64>().ok()?.min(size.checked_sub(1)?)
    };
    (first <= last).then_some((first, last))
}

fn object(
    server: &Server,
    key: &str,
    request: &Request,
    out: &mut TcpStream,
) -> std::io::Result<()> {
    let Some(entry) = server.objects.get(key) else {
        return error(out, "404 Not Found", "NoSuchKey", &request.method);
    };
    let etag = format!("\"{}\"", entry.etag);
    let base = [
        ("ETag", etag.as_str()),
        ("Last-Modified", entry.modified.as_str()),
        ("Accept-Ranges", "bytes"),
    ];
    let (status, first, last, content_range) = match &request.range {
        Some(range) => match parse_range(range, entry.size) {
            Some((first, last)) => (
                "206 Partial Content",
                first,
                last,
                Some(format!("bytes {first}-{last}/{}", entry.size)),
            ),
            None => {
                return error(
                    out,
                    "416 Requested Range Not Satisfiable",
                    "InvalidRange",
                    &request.method,
                );
            }
        },
        None => ("200 OK", 0, entry.size.saturating_sub(1), None),
    };
    let length = if entry.size == 0 { 0 } else { last - first + 1 };
    let mut headers: Vec<(&str, &str)> = base.to_vec();
    if let Some(content_range) = &content_range {
        headers.push(("Content-Range", content_range));
    }
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\nContent-Length: {length}\r\n{}\r\n",
        headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect::<String>()
    );
    out.write_all(head.as_bytes())?;
    if request.method == "HEAD" || length == 0 {
        return Ok(());
    }
    let file = File::open(&entry.path)?;
    let mut offset = first as libc::off_t;
    let mut remaining = length as usize;
    while remaining > 0 {
        // SAFETY: both descriptors are open for the duration of the call; offset is ours.
        let sent = unsafe {
            libc::sendfile(
                out.as_raw_fd(),
                file.as_raw_fd(),
                &mut offset,
                remaining.min(1 << 30),
            )
        };
        if sent <= 0 {
            let error = std::io::Error::last_os_error();
            if sent < 0 && error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(if sent == 0 {
                std::io::ErrorKind::UnexpectedEof.into()
            } else {
                error
            });
        }
        remaining -= sent as usize;
    }
    Ok(())
}

fn send(
    out: &mut TcpStream,
    status: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    with_body: bool,
) -> std::io::Result<()> {
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    );
    out.write_all(head.as_bytes())?;
    if with_body {
        out.write_all(body)?;
    }
    Ok(())
}

fn error(out: &mut TcpStream, status: &str, code: &str, method: &str) -> std::io::Result<()> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{code}</Message></Error>"
    );
    send(
        out,
        status,
        "application/xml",
        &[],
        body.as_bytes(),
        method != "HEAD",
    )
}
