//! `era5-bench-server`: a read-only S3 endpoint that costs almost no CPU, so benchmarks measure
//! the clients and not the server. It serves one bucket: ListObjectsV2 (with pagination and
//! delimiters), HEAD, GET with a byte range, GetBucketLocation and HeadBucket. One thread per
//! connection, HTTP/1.1 keep-alive, no authentication (signatures are accepted and ignored).
//!
//! Two sources of objects:
//! - `--dir DIR`: the files of a directory, sent with `sendfile(2)` (the bytes never enter user
//!   space). ETags are computed once per file and cached next to the data: plain MD5s (as a
//!   single PUT gives, the default) or, with `--part-mib N`, multipart ETags of N MiB parts.
//! - `--archive`: the whole ERA5 key space generated from the catalog (see `archive.rs`),
//!   about 0.8 M keys from 1940 to 2025, with deterministic bodies that are tiny or, with
//!   `--scale F`, the modelled real sizes times F. Nothing is stored.
//!
//! It can model a remote S3 over a wide-area network (see `wan.rs`): `--first-byte-ms MS` delays
//! every answer (the time to first byte, default 0); `--conn-rate BYTES/S` caps each
//! connection's body bytes; `--link-rate BYTES/S` is one link shared by all connections;
//! `--tail-fraction F --tail-delay-ms MS` make a fraction of object GETs (picked by `--seed`)
//! wait longer before their first byte. `--listen` may be given several times (or with commas):
//! every address is a front-end, `--slow-address ADDR` is one whose connections get
//! `--slow-factor` (default 0.25) times the connection ceiling, and `--round-robin ADDR` is one
//! more listener whose i-th connection is served as if accepted on front-end i mod n (DNS
//! rotation, for clients that take one URL).
//!
//! `GET /_stats` returns the connection counters (`open`, `max_open` = `peak_open`, `accepted`),
//! the requests served by kind (`list`, `head`, `get`, and `body_bytes`), `tail_delayed`, and
//! per front-end address `{accepted, get, body_bytes, slow}` under `frontends`; `POST /_stats`
//! restarts the peak, the request counts, the per-address counts and the tail's sequence, so a
//! benchmark can read each client's figures from the server side (`accepted` keeps counting).

mod archive;
mod wan;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use archive::{Archive, ArchiveOptions, Listed};
use common::dates::YearMonth;
use md5::{Digest, Md5};
use wan::{Frontend, Link, Pacer, Route, Tail};

struct Entry {
    path: PathBuf,
    size: u64,
    etag: String,
    modified: String,
}

/// Where the objects come from.
enum Backend {
    /// Files of a directory, by key.
    Dir(BTreeMap<String, Entry>),
    /// The generated archive.
    Archive(Archive),
}

/// Requests served, by kind.
#[derive(Default)]
struct Requests {
    list: AtomicU64,
    head: AtomicU64,
    get: AtomicU64,
    body_bytes: AtomicU64,
}

/// The modelled network between the clients and the server.
struct Model {
    /// Delay before every S3 answer.
    first_byte: Duration,
    /// Body bytes per second per connection (0: unpaced).
    conn_rate: u64,
    /// Body bytes per second of the link all connections share (0: none).
    link_rate: u64,
    /// The slow front-end's share of the connection ceiling.
    slow_factor: f64,
    /// Which object GETs wait longer.
    tail: Tail,
}

#[cfg(test)]
impl Model {
    /// A remote S3 with a time to first byte and a ceiling per connection, and nothing else.
    fn simple(first_byte: Duration, conn_rate: u64) -> Self {
        Self {
            first_byte,
            conn_rate,
            link_rate: 0,
            slow_factor: 1.0,
            tail: Tail::none(),
        }
    }
}

struct Server {
    bucket: String,
    backend: Backend,
    model: Model,
    link: Option<Link>,
    /// The listen addresses, in `--listen` order.
    frontends: Vec<Frontend>,
    open: AtomicUsize,
    max_open: AtomicUsize,
    accepted: AtomicUsize,
    requests: Requests,
}

/// Last-Modified of every generated object.
const ARCHIVE_MODIFIED: &str = "Mon, 01 Sep 2025 00:00:00 GMT";

const USAGE: &str = "usage: era5-bench-server (--dir DIR [--part-mib N] | --archive [--scale F] [--unconfirmed] [--first-month YYYY-MM] [--last-month YYYY-MM]) [--listen ADDR[,ADDR..]].. [--bucket B] [--first-byte-ms MS] [--conn-rate BYTES/S] [--link-rate BYTES/S] [--tail-fraction F --tail-delay-ms MS] [--seed N] [--slow-address ADDR [--slow-factor F]] [--round-robin ADDR]";

fn main() {
    let mut args = std::env::args().skip(1);
    let mut listen: Vec<SocketAddr> = Vec::new();
    let mut dir = None;
    let mut bucket = "nsf-ncar-era5".to_string();
    let mut part_mib: u64 = 0;
    let mut archive: Option<ArchiveOptions> = None;
    let mut first_byte_ms: u64 = 0;
    let mut conn_rate: u64 = 0;
    let mut link_rate: u64 = 0;
    let mut tail_fraction = 0.0;
    let mut tail_delay_ms: u64 = 0;
    let mut seed: u64 = 1;
    let mut slow_address: Option<SocketAddr> = None;
    let mut slow_factor = 0.25;
    let mut round_robin: Option<SocketAddr> = None;
    while let Some(flag) = args.next() {
        if flag == "--archive" {
            archive.get_or_insert_with(ArchiveOptions::default);
            continue;
        }
        if flag == "--unconfirmed" {
            archive
                .get_or_insert_with(ArchiveOptions::default)
                .unconfirmed = true;
            continue;
        }
        let value = args.next().unwrap_or_default();
        let number = |flag: &str| -> u64 {
            value
                .parse()
                .unwrap_or_else(|_| fail(&format!("bad {flag} `{value}`")))
        };
        let month = |flag: &str| -> YearMonth {
            value
                .split_once('-')
                .and_then(|(y, m)| YearMonth::parse_compact(&format!("{y}{m}")))
                .unwrap_or_else(|| fail(&format!("bad {flag} `{value}`: expected YYYY-MM")))
        };
        let address = |flag: &str, text: &str| -> SocketAddr {
            text.trim()
                .parse()
                .unwrap_or_else(|_| fail(&format!("bad {flag} `{text}`: expected IP:PORT")))
        };
        let rate = |flag: &str| -> u64 {
            common::units::parse_size(&value)
                .filter(|rate| *rate > 0)
                .unwrap_or_else(|| {
                    fail(&format!(
                        "bad {flag} `{value}`: expected bytes per second, e.g. 8MiB"
                    ))
                })
        };
        let fraction = |flag: &str| -> f64 {
            value
                .parse()
                .ok()
                .filter(|f: &f64| (0.0..=1.0).contains(f))
                .unwrap_or_else(|| fail(&format!("bad {flag} `{value}`: expected 0 to 1")))
        };
        match flag.as_str() {
            "--listen" => listen.extend(value.split(',').map(|a| address("--listen", a))),
            "--dir" => dir = Some(PathBuf::from(value)),
            "--bucket" => bucket = value,
            "--part-mib" => part_mib = number("--part-mib"),
            "--first-byte-ms" => first_byte_ms = number("--first-byte-ms"),
            "--conn-rate" => conn_rate = rate("--conn-rate"),
            "--link-rate" => link_rate = rate("--link-rate"),
            "--tail-fraction" => tail_fraction = fraction("--tail-fraction"),
            "--tail-delay-ms" => tail_delay_ms = number("--tail-delay-ms"),
            "--seed" => seed = number("--seed"),
            "--slow-address" => slow_address = Some(address("--slow-address", &value)),
            "--slow-factor" => {
                slow_factor = fraction("--slow-factor");
                if slow_factor == 0.0 {
                    fail("bad --slow-factor `0`: a connection must move");
                }
            }
            "--round-robin" => round_robin = Some(address("--round-robin", &value)),
            "--scale" => {
                let scale: f64 = value
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0)
                    .unwrap_or_else(|| fail(&format!("bad --scale `{value}`: expected F > 0")));
                archive.get_or_insert_with(ArchiveOptions::default).scale = Some(scale);
            }
            "--first-month" => {
                archive.get_or_insert_with(ArchiveOptions::default).first = month("--first-month");
            }
            "--last-month" => {
                archive.get_or_insert_with(ArchiveOptions::default).last = month("--last-month");
            }
            other => fail(&format!("unknown flag `{other}`; {USAGE}")),
        }
    }
    let backend = match (dir, archive) {
        (Some(_), Some(_)) => fail(&format!("--dir and --archive exclude each other; {USAGE}")),
        (None, None) => fail(&format!("--dir or --archive is required; {USAGE}")),
        (Some(dir), None) => Backend::Dir(
            index(&dir, part_mib << 20)
                .unwrap_or_else(|e| fail(&format!("cannot index {}: {e}", dir.display()))),
        ),
        (None, Some(options)) => Backend::Archive(Archive::new(options)),
    };
    if listen.is_empty() {
        listen.push("127.0.0.1:9100".parse().expect("default address"));
    }
    if let Some(slow) = slow_address {
        if !listen.contains(&slow) {
            fail(&format!(
                "--slow-address {slow} is not one of the --listen addresses"
            ));
        }
        if conn_rate == 0 {
            fail("--slow-address needs --conn-rate: it slows the connection ceiling");
        }
    }
    if (tail_fraction > 0.0) != (tail_delay_ms > 0) {
        fail("--tail-fraction and --tail-delay-ms go together");
    }
    let bind = |addr: SocketAddr| {
        TcpListener::bind(addr).unwrap_or_else(|e| fail(&format!("cannot listen on {addr}: {e}")))
    };
    let listeners: Vec<TcpListener> = listen.iter().map(|addr| bind(*addr)).collect();
    let round_robin = round_robin.map(bind);
    let local = |listener: &TcpListener| {
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    };
    let frontends: Vec<Frontend> = listeners
        .iter()
        .zip(&listen)
        .map(|(listener, asked)| Frontend::new(local(listener), Some(*asked) == slow_address))
        .collect();
    let (count, modelled) = match &backend {
        Backend::Dir(objects) => (objects.len() as u64, String::new()),
        Backend::Archive(archive) => (
            archive.count(),
            format!(
                " (synthetic archive; the real one modelled at {:.2} PB)",
                archive.modelled_bytes() as f64 / 1e15
            ),
        ),
    };
    let urls: Vec<String> = frontends
        .iter()
        .map(|f| format!("http://{}", f.addr))
        .collect();
    let rotation = round_robin
        .as_ref()
        .map(|l| format!(", round robin at http://{}", local(l)))
        .unwrap_or_default();
    println!(
        "era5-bench-server: serving {count} objects of bucket {bucket} at {}{rotation}{modelled}",
        urls.join(", ")
    );
    let model = Model {
        first_byte: Duration::from_millis(first_byte_ms),
        conn_rate,
        link_rate,
        slow_factor,
        tail: Tail::new(tail_fraction, Duration::from_millis(tail_delay_ms), seed),
    };
    let server = Arc::new(Server::new(bucket, backend, model, frontends));
    let mut routes: Vec<(TcpListener, Route)> = listeners
        .into_iter()
        .enumerate()
        .map(|(index, listener)| (listener, Route::Fixed(index)))
        .collect();
    if let Some(listener) = round_robin {
        routes.push((listener, Route::RoundRobin(AtomicUsize::new(0))));
    }
    let (last, last_route) = routes.pop().expect("one listener at least");
    for (listener, route) in routes {
        let server = server.clone();
        std::thread::spawn(move || accept(listener, server, route));
    }
    accept(last, server, last_route);
}

impl Server {
    fn new(bucket: String, backend: Backend, model: Model, frontends: Vec<Frontend>) -> Self {
        let link = (model.link_rate > 0).then(|| Link::new(model.link_rate));
        Self {
            bucket,
            backend,
            model,
            link,
            frontends,
            open: AtomicUsize::new(0),
            max_open: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
            requests: Requests::default(),
        }
    }
}

/// Serves every connection of `listener` on a thread of its own, forever, as front-end
/// `route` says.
fn accept(listener: TcpListener, server: Arc<Server>, route: Route) {
    for stream in listener.incoming().flatten() {
        let open = server.open.fetch_add(1, Ordering::SeqCst) + 1;
        server.max_open.fetch_max(open, Ordering::SeqCst);
        server.accepted.fetch_add(1, Ordering::SeqCst);
        let frontend = route.next(server.frontends.len());
        if let Some(front) = server.frontends.get(frontend) {
            front.accepted.fetch_add(1, Ordering::Relaxed);
        }
        let server = server.clone();
        std::thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let _ = serve(&server, stream, frontend);
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
            .map_or_else(|| httpdate(std::time::SystemTime::UNIX_EPOCH), httpdate);
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
        .map_or_else(
            |_| "1970-01-01T00:00:00.000Z".into(),
            |dt| dt.strftime("%Y-%m-%dT%H:%M:%S.000Z").to_string(),
        )
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
                if let Some(value) = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    out.push(value);
                    i += 3;
                } else {
                    out.push(b'%');
                    i += 1;
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

/// What a connection needs to know about where it was accepted.
struct Connection<'a> {
    /// Its front-end, if the server has any (tests may have none).
    frontend: Option<&'a Frontend>,
    /// Its body ceiling in bytes per second (0: none).
    rate: u64,
}

fn serve(server: &Server, stream: TcpStream, frontend: usize) -> std::io::Result<()> {
    let frontend = server.frontends.get(frontend);
    let slow = frontend.is_some_and(|f| f.slow);
    let rate = if slow {
        ((server.model.conn_rate as f64 * server.model.slow_factor) as u64).max(1)
    } else {
        server.model.conn_rate
    };
    let connection = Connection { frontend, rate };
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while let Some(request) = read_request(&mut reader)? {
        respond(server, &connection, &request, &mut writer)?;
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

fn respond(
    server: &Server,
    connection: &Connection,
    request: &Request,
    out: &mut TcpStream,
) -> std::io::Result<()> {
    if request.path == "/_stats" {
        let requests = &server.requests;
        if request.method == "POST" {
            server
                .max_open
                .store(server.open.load(Ordering::SeqCst), Ordering::SeqCst);
            for counter in [
                &requests.list,
                &requests.head,
                &requests.get,
                &requests.body_bytes,
            ] {
                counter.store(0, Ordering::SeqCst);
            }
            server.model.tail.restart();
            for frontend in &server.frontends {
                frontend.restart();
            }
        }
        let peak = server.max_open.load(Ordering::SeqCst);
        let body = format!(
            "{{\"open\":{},\"max_open\":{peak},\"peak_open\":{peak},\"accepted\":{},\"list\":{},\"head\":{},\"get\":{},\"body_bytes\":{},\"tail_delayed\":{},\"frontends\":{}}}",
            server.open.load(Ordering::SeqCst),
            server.accepted.load(Ordering::SeqCst),
            requests.list.load(Ordering::SeqCst),
            requests.head.load(Ordering::SeqCst),
            requests.get.load(Ordering::SeqCst),
            requests.body_bytes.load(Ordering::SeqCst),
            server.model.tail.delayed(),
            wan::frontends_json(&server.frontends),
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
    // The modelled time to first byte of a remote S3.
    if !server.model.first_byte.is_zero() {
        std::thread::sleep(server.model.first_byte);
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
        ("GET", "") => {
            server.requests.list.fetch_add(1, Ordering::Relaxed);
            list(server, request, out)
        }
        ("HEAD", "") => send(out, "200 OK", "application/xml", &[], b"", false),
        ("GET" | "HEAD", key) => {
            if request.method == "HEAD" {
                server.requests.head.fetch_add(1, Ordering::Relaxed);
            } else {
                server.requests.get.fetch_add(1, Ordering::Relaxed);
                if let Some(frontend) = connection.frontend {
                    frontend.get.fetch_add(1, Ordering::Relaxed);
                }
                // The long tail: this GET's answer comes later still.
                if let Some(extra) = server.model.tail.pick() {
                    std::thread::sleep(extra);
                }
            }
            object(server, connection, key, request, out)
        }
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
    match &server.backend {
        Backend::Dir(objects) => {
            for (key, entry) in objects
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
                contents.push_str(&contents_xml(
                    key,
                    &iso8601(&entry.modified),
                    &entry.etag,
                    entry.size,
                ));
            }
        }
        Backend::Archive(archive) => {
            let (page, more) = archive.list(prefix, after, delimiter, max_keys);
            truncated = more;
            count = page.len();
            let modified = iso8601(ARCHIVE_MODIFIED);
            for entry in page {
                match entry {
                    Listed::Object { key, size } => {
                        contents.push_str(&contents_xml(
                            &key,
                            &modified,
                            &archive.etag(size),
                            size,
                        ));
                        last = Some(key);
                    }
                    Listed::Prefix(common) => {
                        last = Some(common.clone());
                        prefixes.push(common);
                    }
                }
            }
        }
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

fn contents_xml(key: &str, modified: &str, etag: &str, size: u64) -> String {
    format!(
        "<Contents><Key>{}</Key><LastModified>{modified}</LastModified><ETag>&quot;{etag}&quot;</ETag><Size>{size}</Size><StorageClass>STANDARD</StorageClass></Contents>",
        xml_escape(key),
    )
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
    connection: &Connection,
    key: &str,
    request: &Request,
    out: &mut TcpStream,
) -> std::io::Result<()> {
    let (size, etag, modified, file) = match &server.backend {
        Backend::Dir(objects) => match objects.get(key) {
            Some(entry) => (
                entry.size,
                entry.etag.clone(),
                entry.modified.as_str(),
                Some(&entry.path),
            ),
            None => return error(out, "404 Not Found", "NoSuchKey", &request.method),
        },
        Backend::Archive(archive) => match archive.lookup(key) {
            Some(size) => (size, archive.etag(size), ARCHIVE_MODIFIED, None),
            None => return error(out, "404 Not Found", "NoSuchKey", &request.method),
        },
    };
    let etag = format!("\"{etag}\"");
    let base = [
        ("ETag", etag.as_str()),
        ("Last-Modified", modified),
        ("Accept-Ranges", "bytes"),
    ];
    let (status, first, last, content_range) = match &request.range {
        Some(range) => match parse_range(range, size) {
            Some((first, last)) => (
                "206 Partial Content",
                first,
                last,
                Some(format!("bytes {first}-{last}/{size}")),
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
        None => ("200 OK", 0, size.saturating_sub(1), None),
    };
    let length = if size == 0 { 0 } else { last - first + 1 };
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
    server
        .requests
        .body_bytes
        .fetch_add(length, Ordering::Relaxed);
    if let Some(frontend) = connection.frontend {
        frontend.body_bytes.fetch_add(length, Ordering::Relaxed);
    }
    let mut pacer = Pacer::new(connection.rate, server.link.as_ref());
    match (&server.backend, file) {
        (Backend::Archive(archive), _) => {
            let mut offset = first;
            let end = last + 1;
            while offset < end {
                let chunk = archive.body_chunk(offset, pacer.chunk((end - offset) as usize));
                pacer.wait(chunk.len());
                out.write_all(chunk)?;
                offset += chunk.len() as u64;
            }
            Ok(())
        }
        (Backend::Dir(_), Some(path)) => send_file(path, first, length, out, &mut pacer),
        (Backend::Dir(_), None) => Ok(()),
    }
}

/// Sends `length` bytes of the file at `path` from `first` with `sendfile(2)`, paced.
fn send_file(
    path: &Path,
    first: u64,
    length: u64,
    out: &mut TcpStream,
    pacer: &mut Pacer,
) -> std::io::Result<()> {
    let file = File::open(path)?;
    let mut offset = first as libc::off_t;
    let mut remaining = length as usize;
    while remaining > 0 {
        let want = pacer.chunk(remaining.min(1 << 30));
        pacer.wait(want);
        // SAFETY: both descriptors are open for the duration of the call; offset is ours.
        let sent =
            unsafe { libc::sendfile(out.as_raw_fd(), file.as_raw_fd(), &raw mut offset, want) };
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A server on an ephemeral port, serving from a thread.
    fn start(backend: Backend, first_byte: Duration, conn_rate: u64) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Arc::new(Server::new(
            "nsf-ncar-era5".into(),
            backend,
            Model::simple(first_byte, conn_rate),
            Vec::new(),
        ));
        std::thread::spawn(move || accept(listener, server, Route::Fixed(0)));
        addr
    }

    /// January 1979 of the archive, bodies scaled by `scale` (tiny when `None`).
    fn january_1979_scaled(scale: Option<f64>) -> Backend {
        let month = YearMonth {
            year: 1979,
            month: 1,
        };
        Backend::Archive(Archive::new(ArchiveOptions {
            first: month,
            last: month,
            scale,
            ..ArchiveOptions::default()
        }))
    }

    fn january_1979() -> Backend {
        january_1979_scaled(None)
    }

    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
    }

    /// One request on a fresh connection, read to the end of its body.
    fn call(addr: SocketAddr, method: &str, target: &str, range: Option<&str>) -> Reply {
        let mut stream = TcpStream::connect(addr).unwrap();
        let range = range.map_or(String::new(), |r| format!("Range: {r}\r\n"));
        write!(
            stream,
            "{method} {target} HTTP/1.1\r\nHost: x\r\n{range}\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            if header.trim().is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap();
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0; if method == "HEAD" { 0 } else { length }];
        reader.read_exact(&mut body).unwrap();
        Reply {
            status,
            headers,
            body,
        }
    }

    /// The values of `<tag>` in an XML text, in order.
    fn values(xml: &str, tag: &str) -> Vec<String> {
        xml.split(&format!("<{tag}>"))
            .skip(1)
            .map(|rest| rest.split(&format!("</{tag}>")).next().unwrap().to_string())
            .collect()
    }

    #[test]
    fn archive_mode_lists_pages_and_serves_head_get_and_ranges() {
        let addr = start(january_1979(), Duration::ZERO, 0);
        // A month of pressure levels in pages of 100, continuation tokens followed.
        let mut keys = Vec::new();
        let mut token = String::new();
        loop {
            let mut target =
                "/nsf-ncar-era5?list-type=2&prefix=e5.oper.an.pl%2F197901%2F&max-keys=100"
                    .to_string();
            if !token.is_empty() {
                target.push_str(&format!("&continuation-token={token}"));
            }
            let reply = call(addr, "GET", &target, None);
            assert_eq!(reply.status, 200);
            let xml = reply.text();
            let page = values(&xml, "Key");
            assert!(page.len() <= 100);
            keys.extend(page);
            match values(&xml, "NextContinuationToken").pop() {
                Some(next) => token = next,
                None => break,
            }
        }
        assert_eq!(keys.len(), 16 * 31);
        assert!(keys.windows(2).all(|w| w[0] < w[1]));

        // HEAD and GET agree with the listing; the body's MD5 is its ETag.
        let key =
            "e5.oper.an.sfc/197901/e5.oper.an.sfc.128_167_2t.ll025sc.1979010100_1979013123.nc";
        let listing = call(
            addr,
            "GET",
            &format!("/nsf-ncar-era5?list-type=2&prefix={key}"),
            None,
        )
        .text();
        let size: usize = values(&listing, "Size")[0].parse().unwrap();
        let etag = values(&listing, "ETag")[0].replace("&quot;", "\"");
        let head = call(addr, "HEAD", &format!("/nsf-ncar-era5/{key}"), None);
        assert_eq!(head.status, 200);
        assert_eq!(head.header("etag"), Some(etag.as_str()));
        assert_eq!(
            head.header("content-length"),
            Some(size.to_string().as_str())
        );
        let get = call(addr, "GET", &format!("/nsf-ncar-era5/{key}"), None);
        assert_eq!(get.body.len(), size);
        assert!(get.body.starts_with(b"\x89HDF\r\n\x1a\n"));
        assert_eq!(format!("\"{}\"", hex::encode(Md5::digest(&get.body))), etag);
        let range = call(
            addr,
            "GET",
            &format!("/nsf-ncar-era5/{key}"),
            Some("bytes=100-199"),
        );
        assert_eq!(range.status, 206);
        assert_eq!(range.body, get.body[100..200]);
        assert_eq!(
            range.header("content-range"),
            Some(format!("bytes 100-199/{size}").as_str())
        );

        // Keys the archive does not hold.
        for missing in [
            "e5.oper.an.sfc/197902/e5.oper.an.sfc.128_167_2t.ll025sc.1979020100_1979022823.nc",
            "index.html",
        ] {
            let reply = call(addr, "GET", &format!("/nsf-ncar-era5/{missing}"), None);
            assert_eq!(reply.status, 404, "{missing}");
        }

        // The request counters saw it all.
        let stats = call(addr, "GET", "/_stats", None).text();
        let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
        assert_eq!(stats["head"], 1);
        assert_eq!(stats["get"], 4);
        assert_eq!(stats["list"], 5 + 1);
        assert_eq!(stats["body_bytes"], size as u64 + 100);
    }

    #[test]
    fn first_byte_delay_and_connection_rate_hold_answers_back() {
        let first_byte = Duration::from_millis(120);
        let rate = 512 << 10;
        let addr = start(
            Backend::Archive(Archive::new(ArchiveOptions {
                scale: Some(1e-3),
                ..ArchiveOptions::default()
            })),
            first_byte,
            rate,
        );
        let key =
            "e5.oper.an.sfc/197901/e5.oper.an.sfc.128_167_2t.ll025sc.1979010100_1979013123.nc";
        let started = Instant::now();
        let head = call(addr, "HEAD", &format!("/nsf-ncar-era5/{key}"), None);
        assert_eq!(head.status, 200);
        assert!(started.elapsed() >= first_byte, "no first-byte delay");
        // 256 KiB at 512 KiB/s: never sooner than half a second after the first byte.
        let started = Instant::now();
        let get = call(
            addr,
            "GET",
            &format!("/nsf-ncar-era5/{key}"),
            Some("bytes=0-262143"),
        );
        assert_eq!(get.body.len(), 256 << 10);
        assert!(
            started.elapsed() >= first_byte + Duration::from_millis(500),
            "the body came faster than the connection rate: {:?}",
            started.elapsed()
        );
    }

    /// A server with `fronts` front-ends on ephemeral ports of 127.0.0.1 (the one at `slow`
    /// slow) and a round-robin listener: the front-ends' addresses, then the round robin's.
    fn start_wan(
        backend: Backend,
        model: Model,
        fronts: usize,
        slow: Option<usize>,
    ) -> (Vec<SocketAddr>, SocketAddr) {
        let listeners: Vec<TcpListener> = (0..fronts)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let frontends = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| Frontend::new(a.to_string(), Some(i) == slow))
            .collect();
        let server = Arc::new(Server::new(
            "nsf-ncar-era5".into(),
            backend,
            model,
            frontends,
        ));
        for (index, listener) in listeners.into_iter().enumerate() {
            let server = server.clone();
            std::thread::spawn(move || accept(listener, server, Route::Fixed(index)));
        }
        let rotation = TcpListener::bind("127.0.0.1:0").unwrap();
        let rotation_addr = rotation.local_addr().unwrap();
        std::thread::spawn(move || {
            accept(rotation, server, Route::RoundRobin(AtomicUsize::new(0)));
        });
        (addrs, rotation_addr)
    }

    /// The surface 2 m temperature of January 1979, an object of a few MiB at scale 1e-2.
    const MONTH_2T: &str = "/nsf-ncar-era5/e5.oper.an.sfc/197901/e5.oper.an.sfc.128_167_2t.ll025sc.1979010100_1979013123.nc";

    fn scaled_archive() -> Backend {
        january_1979_scaled(Some(1e-2))
    }

    fn stats(addr: SocketAddr, method: &str) -> serde_json::Value {
        serde_json::from_str(&call(addr, method, "/_stats", None).text()).unwrap()
    }

    #[test]
    fn the_shared_link_caps_the_connections_together() {
        let model = Model {
            link_rate: 2 << 20,
            ..Model::simple(Duration::ZERO, 0)
        };
        let (addrs, _) = start_wan(scaled_archive(), model, 1, None);
        let addr = addrs[0];
        // Four connections of 1 MiB each through a link of 2 MiB/s: about 2 s in all, and each
        // connection about as long, since they share the link fairly.
        let started = Instant::now();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    let started = Instant::now();
                    let reply = call(addr, "GET", MONTH_2T, Some("bytes=0-1048575"));
                    assert_eq!(reply.body.len(), 1 << 20);
                    started.elapsed()
                })
            })
            .collect();
        let each: Vec<Duration> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let all = started.elapsed();
        assert!(
            all >= Duration::from_millis(1500),
            "4 MiB crossed a 2 MiB/s link in {all:?}"
        );
        let fastest = each.iter().min().unwrap();
        assert!(
            *fastest >= Duration::from_secs(1),
            "one connection took the link for itself: {each:?}"
        );
        assert_eq!(stats(addr, "GET")["body_bytes"], 4 << 20);
    }

    #[test]
    fn the_tail_delays_only_its_fraction_of_object_gets() {
        let delay = Duration::from_millis(200);
        let model = Model {
            tail: Tail::new(0.25, delay, 1),
            ..Model::simple(Duration::ZERO, 0)
        };
        let (addrs, _) = start_wan(january_1979(), model, 1, None);
        let addr = addrs[0];
        let key = "/nsf-ncar-era5/e5.oper.an.pl/197901/e5.oper.an.pl.128_130_t.ll025sc.1979010100_1979010123.nc";
        let timed = |method: &str, target: &str| {
            let started = Instant::now();
            assert_eq!(call(addr, method, target, None).status, 200);
            started.elapsed() >= delay
        };
        let gets = |count| -> Vec<bool> { (0..count).map(|_| timed("GET", key)).collect() };
        let first = gets(40);
        let delayed = first.iter().filter(|d| **d).count();
        assert!((3..=20).contains(&delayed), "{delayed} of 40 delayed");
        // HEADs and listings never wait for the tail.
        for _ in 0..10 {
            assert!(!timed("HEAD", key));
            assert!(!timed(
                "GET",
                "/nsf-ncar-era5?list-type=2&prefix=e5.oper.an.pl%2F197901%2F&max-keys=5"
            ));
        }
        let counted = stats(addr, "GET");
        assert_eq!(counted["tail_delayed"], delayed as u64);
        assert_eq!(counted["get"], 40);
        // After a reset the same GETs are delayed again.
        assert_eq!(stats(addr, "POST")["tail_delayed"], 0);
        assert_eq!(gets(40), first);
    }

    #[test]
    fn the_slow_address_is_slower_and_every_address_is_counted() {
        let model = Model {
            slow_factor: 0.25,
            ..Model::simple(Duration::ZERO, 1 << 20)
        };
        let (addrs, rotation) = start_wan(scaled_archive(), model, 2, Some(1));
        let timed = |addr| {
            let started = Instant::now();
            let reply = call(addr, "GET", MONTH_2T, Some("bytes=0-262143"));
            assert_eq!(reply.body.len(), 256 << 10);
            started.elapsed()
        };
        // 256 KiB at 1 MiB/s (a quarter of a second), and at a quarter of that.
        let fast = timed(addrs[0]);
        let slow = timed(addrs[1]);
        assert!(fast >= Duration::from_millis(240), "{fast:?}");
        assert!(
            slow >= Duration::from_millis(900) && slow > fast,
            "slow {slow:?}, fast {fast:?}"
        );
        // The round robin hands its connections to the front-ends in turn: 0, 1, 0, 1.
        for _ in 0..4 {
            let reply = call(rotation, "GET", MONTH_2T, Some("bytes=0-1023"));
            assert_eq!(reply.body.len(), 1024);
        }
        let counted = stats(addrs[0], "GET");
        let front = |i: usize| &counted["frontends"][addrs[i].to_string()];
        for i in 0..2 {
            // One direct GET, two through the rotation; the stats call itself on front-end 0.
            assert_eq!(front(i)["get"], 3, "{counted}");
            assert_eq!(
                front(i)["accepted"],
                if i == 0 { 4 } else { 3 },
                "{counted}"
            );
            assert_eq!(front(i)["body_bytes"], (256 << 10) + 2048, "{counted}");
        }
        assert_eq!(front(1)["slow"], true);
        assert_eq!(counted["get"], 6);
        assert!(counted["peak_open"].as_u64().unwrap() >= 1);
        // A reset zeroes the per-address counts.
        stats(addrs[0], "POST");
        let counted = stats(addrs[0], "GET");
        assert_eq!(counted["frontends"][addrs[1].to_string()]["get"], 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sdk_discovers_a_selection_in_the_archive() {
        let addr = start(january_1979(), Duration::ZERO, 0);
        let config = transport::SourceConfig {
            endpoint: Some(format!("http://{addr}")),
            ..transport::SourceConfig::era5(4)
        };
        let source = transport::Source::connect(&config).await;
        let selection = common::selection::Selection::parse(
            &["e5.oper.an.pl".into(), "e5.oper.fc.sfc.accumu".into()],
            &["t".into(), "tp".into()],
            &[],
            "1979-01-01",
            "1979-01-10",
            jiff::civil::date(2025, 6, 1),
        )
        .unwrap();
        let found = transport::discover_detailed(
            &source,
            &selection,
            &transport::retry::RetryPolicy::default(),
        )
        .await
        .unwrap();
        // Ten days of t, and tp's first half-month file of January.
        assert_eq!(found.objects.len(), 10 + 1, "{:?}", found.objects);
        assert!(
            found
                .objects
                .iter()
                .all(|o| o.etag.is_some() && o.size >= 256)
        );
    }
}
