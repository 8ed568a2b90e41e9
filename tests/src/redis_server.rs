//! A real `redis-server` per test, on an ephemeral port, killed on drop. With an AOF directory
//! it can be killed (SIGKILL) and restarted on the same port with its data. [`RedisOptions`]
//! add ACL users (from a config file, so passwords stay off the command line), a TLS port
//! beside the plaintext one, and a port chosen in advance (to start Redis after its client).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running redis-server.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    tls_port: Option<u16>,
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    options: RedisOptions,
}

/// TLS files of the server (its certificate must name 127.0.0.1).
#[derive(Clone, Debug)]
pub struct RedisTls {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM key.
    pub key: PathBuf,
    /// PEM CA (for client certificates, which are not required).
    pub ca: PathBuf,
}

/// How to start a server beyond the defaults.
#[derive(Clone, Debug, Default)]
pub struct RedisOptions {
    /// Keep an append-only file (fsync always) in this directory.
    pub aof_dir: Option<PathBuf>,
    /// With `aof_dir`: fsync the append-only file every second, as deployments do (a crash
    /// may lose the last second), instead of at every write.
    pub aof_everysec: bool,
    /// Password of the default user (the harness authenticates as it).
    pub password: Option<String>,
    /// ACL users, each the rest of a `user` directive: `NAME on >PASSWORD RULES...`.
    pub users: Vec<String>,
    /// Also listen with TLS on another port.
    pub tls: Option<RedisTls>,
    /// The plaintext port (default: a free ephemeral one).
    pub port: Option<u16>,
    /// Start as a replica of the server on this port (authenticating with `password`).
    pub replica_of: Option<u16>,
    /// Replicate over TLS (`replica_of` is then the primary's TLS port), and announce the TLS
    /// port to the primary, so Sentinel hands clients the TLS address after a failover.
    pub tls_replication: bool,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("an ephemeral port")
}

fn ping(port: u16, password: Option<&str>) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    if let Some(password) = password {
        let mut ok = [0u8; 5];
        let auth = format!("AUTH {password}\r\n");
        if stream.write_all(auth.as_bytes()).is_err()
            || stream.read_exact(&mut ok).is_err()
            || &ok != b"+OK\r\n"
        {
            return false;
        }
    }
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

impl RedisServer {
    /// An empty in-memory server.
    pub fn start() -> Self {
        Self::start_with(RedisOptions::default())
    }

    /// An empty in-memory server that requires `password` (AUTH).
    pub fn start_with_password(password: &str) -> Self {
        Self::start_with(RedisOptions {
            password: Some(password.to_string()),
            ..RedisOptions::default()
        })
    }

    /// A server that keeps an append-only file (fsync always) in `dir`, so a restart after
    /// SIGKILL finds every acknowledged write.
    pub fn start_with_aof(dir: &Path) -> Self {
        Self::start_with(RedisOptions {
            aof_dir: Some(dir.to_path_buf()),
            ..RedisOptions::default()
        })
    }

    /// A server with these options.
    pub fn start_with(options: RedisOptions) -> Self {
        let (dir, temp) = if let Some(dir) = &options.aof_dir {
            (dir.clone(), None)
        } else {
            let temp = tempfile::tempdir().expect("temp dir");
            (temp.path().to_path_buf(), Some(temp))
        };
        let mut server = Self {
            child: None,
            port: 0,
            tls_port: None,
            dir,
            _temp: temp,
            options,
        };
        if let Some(port) = server.options.port {
            server.port = port;
            server.tls_port = server.options.tls.as_ref().map(|_| free_port());
            assert!(server.spawn(), "redis-server did not start on port {port}");
            return server;
        }
        // Another process may take the port between our probe and redis binding it: retry.
        for _ in 0..5 {
            server.port = free_port();
            server.tls_port = server.options.tls.as_ref().map(|_| free_port());
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start (is it installed? `apt install redis-server`)");
    }

    fn spawn(&mut self) -> bool {
        // Users (and so their passwords) go in a config file, not on the command line.
        let config = self.dir.join(format!("redis-{}.conf", self.port));
        let users: String = self
            .options
            .users
            .iter()
            .map(|user| format!("user {user}\n"))
            .collect();
        std::fs::write(&config, users).expect("write the redis config");
        let mut command = Command::new("redis-server");
        command
            .arg(&config)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--protected-mode",
                "no",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(password) = &self.options.password {
            command.args(["--requirepass", password]);
        }
        if let (Some(tls), Some(port)) = (&self.options.tls, self.tls_port) {
            command
                .args(["--tls-port", &port.to_string()])
                .arg("--tls-cert-file")
                .arg(&tls.cert)
                .arg("--tls-key-file")
                .arg(&tls.key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca)
                .args(["--tls-auth-clients", "no"]);
            if self.options.tls_replication {
                command.args(["--tls-replication", "yes"]);
            }
        }
        if let Some(primary) = self.options.replica_of {
            command.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
            if let Some(password) = &self.options.password {
                command.args(["--masterauth", password]);
            }
        }
        if self.options.aof_dir.is_some() {
            let fsync = if self.options.aof_everysec {
                "everysec"
            } else {
                "always"
            };
            command.args(["--appendonly", "yes", "--appendfsync", fsync]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        let Ok(mut child) = command.spawn() else {
            return false;
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if ping(self.port, self.options.password.as_deref()) {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// `redis://127.0.0.1:PORT/`, with the password if there is one.
    pub fn url(&self) -> String {
        match &self.options.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// `redis://USER:PASSWORD@127.0.0.1:PORT/` (an ACL user).
    pub fn url_for(&self, user: &str, password: &str) -> String {
        format!("redis://{user}:{password}@127.0.0.1:{}/", self.port)
    }

    /// The TLS port, when the server listens with TLS.
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// `rediss://USER:PASSWORD@127.0.0.1:TLS_PORT/`, when the server listens with TLS.
    pub fn tls_url_for(&self, user: &str, password: &str) -> Option<String> {
        self.tls_port
            .map(|port| format!("rediss://{user}:{password}@127.0.0.1:{port}/"))
    }

    /// Sends one command as `user` over the plaintext port and returns the raw reply line
    /// (`+OK`, `-NOPERM ...`), to check what an ACL allows.
    pub fn command_as(&self, user: &str, password: &str, command: &[&str]) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let encode = |parts: &[&str]| {
            let mut out = format!("*{}\r\n", parts.len());
            for part in parts {
                out.push_str(&format!("${}\r\n{part}\r\n", part.len()));
            }
            out
        };
        let mut request = encode(&["AUTH", user, password]);
        request.push_str(&encode(command));
        stream.write_all(request.as_bytes()).expect("send");
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        let mut lines = 0;
        while lines < 2 && stream.read_exact(&mut byte).is_ok() {
            reply.push(byte[0]);
            if byte[0] == b'\n' {
                lines += 1;
            }
        }
        let text = String::from_utf8_lossy(&reply).to_string();
        let mut replies = text.lines();
        let auth = replies.next().unwrap_or_default();
        assert_eq!(auth, "+OK", "AUTH as {user} failed");
        replies.next().unwrap_or_default().to_string()
    }

    /// The directory of its data (and append-only file).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `INFO section` as the default user (with its password, if any); empty if the server
    /// does not answer.
    pub fn info(&self, section: &str) -> String {
        query_bulk(
            self.port,
            self.options.password.as_deref(),
            &["INFO", section],
        )
    }

    /// SIGKILL, no shutdown.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port and directory (with the AOF, the data is back).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `command` (after AUTH with `password`, if any) and returns its bulk-string reply,
/// or an empty string.
fn query_bulk(port: u16, password: Option<&str>, command: &[&str]) -> String {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let encode = |parts: &[&str]| {
        let mut out = format!("*{}\r\n", parts.len());
        for part in parts {
            out.push_str(&format!("${}\r\n{part}\r\n", part.len()));
        }
        out
    };
    let mut request = String::new();
    if let Some(password) = password {
        request.push_str(&encode(&["AUTH", password]));
    }
    request.push_str(&encode(command));
    if stream.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut reader = std::io::BufReader::new(stream);
    let mut line = String::new();
    use std::io::BufRead;
    if password.is_some() {
        line.clear();
        if reader.read_line(&mut line).is_err() || !line.starts_with("+OK") {
            return String::new();
        }
    }
    line.clear();
    if reader.read_line(&mut line).is_err() {
        return String::new();
    }
    let Some(length) = line
        .trim()
        .strip_prefix('$')
        .and_then(|n| n.parse::<usize>().ok())
    else {
        return String::new();
    };
    let mut body = vec![0u8; length];
    if reader.read_exact(&mut body).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&body).to_string()
}

/// A real Redis Sentinel (`redis-server CONFIG --sentinel`) on an ephemeral port, watching
/// one primary under a name; killed on drop. It notices a dead primary after 1 s and fails
/// over within a few seconds.
pub struct RedisSentinel {
    child: Option<Child>,
    port: u16,
    tls_port: Option<u16>,
    _dir: tempfile::TempDir,
}

impl RedisSentinel {
    /// A sentinel watching the primary on `primary_port` as `name` (quorum 2), reaching the
    /// data servers with `auth_pass` (their default user's password).
    pub fn start(primary_port: u16, name: &str, auth_pass: Option<&str>) -> Self {
        Self::start_with(primary_port, name, auth_pass, None)
    }

    /// Like [`RedisSentinel::start`]; with `tls`, the sentinel also listens with TLS (clients
    /// and other sentinels use that port) and reaches the data servers over TLS, so
    /// `primary_port` is the primary's TLS port.
    pub fn start_with(
        primary_port: u16,
        name: &str,
        auth_pass: Option<&str>,
        tls: Option<&RedisTls>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        for _ in 0..5 {
            let port = free_port();
            let tls_port = tls.map(|_| free_port());
            let mut config = format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\nloglevel warning\n\
                 dir {dir}\n\
                 sentinel monitor {name} 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 4000\n\
                 sentinel parallel-syncs {name} 1\n",
                dir = dir.path().display()
            );
            if let Some(password) = auth_pass {
                config.push_str(&format!("sentinel auth-pass {name} {password}\n"));
            }
            if let (Some(tls), Some(tls_port)) = (tls, tls_port) {
                config.push_str(&format!(
                    "tls-port {tls_port}\ntls-cert-file {}\ntls-key-file {}\n\
                     tls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n",
                    tls.cert.display(),
                    tls.key.display(),
                    tls.ca.display()
                ));
            }
            let path = dir.path().join(format!("sentinel-{port}.conf"));
            std::fs::write(&path, config).expect("write the sentinel config");
            let Ok(mut child) = Command::new("redis-server")
                .arg(&path)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
            else {
                continue;
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if ping(port, None) {
                    return Self {
                        child: Some(child),
                        port,
                        tls_port,
                        _dir: dir,
                    };
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server --sentinel did not start");
    }

    /// The TLS port, when the sentinel listens with TLS.
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `INFO sentinel` of this sentinel (what it knows of its primaries).
    pub fn info(&self) -> String {
        query_bulk(self.port, None, &["INFO", "sentinel"])
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
