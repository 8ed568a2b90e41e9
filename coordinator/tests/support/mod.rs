//! What the Redis store's own tests share: a redis-server with the deployment's `era5` ACL
//! user, a relay that holds the store's requests at a chosen round trip, and a capture of the
//! commands Redis runs (MONITOR).

// Each test binary uses its part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use tests::redis_server::{RedisOptions, RedisServer};

/// The password of the `era5` user in these tests.
const ERA5_PASSWORD: &str = "era5-test-password";

/// A redis-server with the deployment's `era5` ACL user (`deploy/base/redis-era5-user.acl`),
/// so a script calling a command the deployment does not allow fails here first. The default
/// user stays open for the tests' own inspection.
pub fn acl_server() -> RedisServer {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/base/redis-era5-user.acl"
    );
    let text = std::fs::read_to_string(path).expect("read the deployment's Redis ACL");
    let rules: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect();
    RedisServer::start_with(RedisOptions {
        users: vec![format!("era5 on >{ERA5_PASSWORD} {}", rules.join(" "))],
        ..RedisOptions::default()
    })
}

/// The URL the store connects to `server` with, as the `era5` user.
pub fn era5_url(server: &RedisServer) -> String {
    server.url_for("era5", ERA5_PASSWORD)
}

#[derive(Default)]
struct GateState {
    /// Whether requests are counted and held.
    armed: bool,
    /// Client writes still let through before the gate holds.
    allow: usize,
    /// A client write is waiting at the gate.
    holding: bool,
}

/// A TCP relay in front of redis-server that can hold its clients' requests: armed with `k`,
/// it lets `k` writes from the client through, then holds the next one until released. A
/// client that waits for each answer before it sends on (as the store does) is held after
/// exactly `k` round trips, so a test can change the data from another connection at that
/// point of the store's operation.
pub struct Gate {
    addr: SocketAddr,
    state: Arc<Mutex<GateState>>,
}

impl Gate {
    /// A gate in front of the Redis on `127.0.0.1:port`, running on the current runtime.
    pub async fn start(port: u16) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(GateState::default()));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                tokio::spawn(relay(client, upstream, shared.clone()));
            }
        });
        Gate { addr, state }
    }

    /// The URL a store connects to, as the `era5` user of [`acl_server`].
    pub fn era5_url(&self) -> String {
        format!("redis://era5:{ERA5_PASSWORD}@{}/", self.addr)
    }

    /// From now on, lets `k` client writes through and holds the next.
    pub fn arm(&self, k: usize) {
        let mut state = self.state.lock().unwrap();
        state.armed = true;
        state.allow = k;
        state.holding = false;
    }

    /// Whether a client write is held.
    pub fn holding(&self) -> bool {
        self.state.lock().unwrap().holding
    }

    /// Lets everything through again.
    pub fn release(&self) {
        let mut state = self.state.lock().unwrap();
        state.armed = false;
        state.holding = false;
    }
}

async fn relay(client: TcpStream, upstream: TcpStream, state: Arc<Mutex<GateState>>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut upstream_read, &mut client_write).await;
    });
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match client_read.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        loop {
            {
                let mut state = state.lock().unwrap();
                if !state.armed {
                    break;
                }
                if state.allow > 0 {
                    state.allow -= 1;
                    break;
                }
                state.holding = true;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if upstream_write.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// A command Redis ran: its name (lower case), its argument count, and whether a script ran
/// it (`redis.call`) rather than a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// Name, lower case.
    pub name: String,
    /// Arguments.
    pub args: usize,
    /// Run by a script.
    pub in_script: bool,
}

/// The commands a Redis server runs while `work` runs, read from MONITOR; a marker command
/// from another connection ends the capture. The clients' connection set-up is left out.
pub async fn commands_during<F: std::future::Future<Output = ()>>(
    server: &RedisServer,
    work: F,
) -> Vec<Command> {
    let mut monitor = TcpStream::connect(("127.0.0.1", server.port()))
        .await
        .unwrap();
    monitor.write_all(b"MONITOR\r\n").await.unwrap();
    let mut lines = BufReader::new(monitor).lines();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("+OK"));
    work.await;
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("ECHO")
        .arg("end-of-capture")
        .query_async::<String>(&mut conn)
        .await
        .unwrap();
    let mut commands = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        if line.contains("\"end-of-capture\"") {
            return commands;
        }
        // +<time> [<db> <client>] "CMD" "arg" ...  (<client> is `lua` inside a script)
        let (Some(open), Some(at)) = (line.find('['), line.find("] \"")) else {
            continue;
        };
        let in_script = line[open..at].ends_with(" lua");
        let words: Vec<&str> = line[at + 2..].split("\" \"").collect();
        let name = words[0].trim_matches('"').to_ascii_lowercase();
        // The client's own connection set-up is not part of the work.
        if ["client", "hello", "select", "ping"].contains(&name.as_str()) {
            continue;
        }
        commands.push(Command {
            name,
            args: words.len() - 1,
            in_script,
        });
    }
    panic!("monitor stream ended before the marker");
}
