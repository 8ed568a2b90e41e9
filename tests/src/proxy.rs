//! `CountingProxy`: a TCP proxy that counts the client's connections from outside the client,
//! and can partition them. A connection counts as open from accept until the proxy reads EOF
//! or an error from the client side; then both sides are torn down. An upstream reset is
//! passed on as a reset.
//!
//! It also counts the bytes it passes to clients per 100 ms ([`CountingProxy::bytes_to_client_per`]),
//! so a test can check a rate cap from outside the client without timing the run.
//!
//! **Blackholes** ([`CountingProxy::blackhole`]): bytes in one direction, or both, are read and
//! dropped, on open connections and new ones alike, with no FIN and no reset: what a peer
//! sees when a network path silently fails. [`CountingProxy::heal`] lets bytes through
//! again (those dropped meanwhile stay lost, as on a real partition).

use common::sync::MutexExt;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Which way bytes are dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blackhole {
    /// Client to upstream: requests vanish, so nothing is answered.
    ToUpstream,
    /// Upstream to client: requests arrive and are acted on, answers vanish.
    ToClient,
    /// Both ways.
    Both,
}

#[derive(Default)]
struct Counters {
    open: AtomicUsize,
    max_open: AtomicUsize,
    accepted: AtomicUsize,
    /// Drop client-to-upstream bytes.
    drop_to_upstream: AtomicBool,
    /// Drop upstream-to-client bytes.
    drop_to_client: AtomicBool,
    /// Descriptors of the client sockets whose relay is running.
    live: std::sync::Mutex<std::collections::HashMap<u64, RawFd>>,
    /// Bytes passed to clients, per [`BUCKET`] since the proxy started.
    to_client: std::sync::Mutex<Vec<u64>>,
    /// When the proxy started.
    started: std::sync::OnceLock<std::time::Instant>,
}

/// The proxy's send buffer towards each client (the kernel doubles it).
const CLIENT_SEND_BUFFER: usize = 32 << 10;

/// The time resolution of [`CountingProxy::bytes_to_client_per`].
const BUCKET: Duration = Duration::from_millis(100);

impl Counters {
    /// Counts `bytes` passed to a client now.
    fn passed_to_client(&self, bytes: usize) {
        let started = *self.started.get_or_init(std::time::Instant::now);
        let index = (started.elapsed().as_millis() / BUCKET.as_millis()) as usize;
        let mut buckets = self.to_client.lock_unpoisoned();
        if buckets.len() <= index {
            buckets.resize(index + 1, 0);
        }
        buckets[index] += bytes as u64;
    }
}

/// Linux `TCP_ESTABLISHED`: neither FIN nor RST has arrived from the client.
const TCP_ESTABLISHED: u8 = 1;

fn tcp_state(fd: RawFd) -> Option<u8> {
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    (rc == 0 && len > 0).then_some(info[0])
}

impl Counters {
    /// Client connections the kernel still sees as established (the client has sent neither
    /// FIN nor RST), whether or not the relay task has noticed yet.
    fn established(&self) -> usize {
        let live = self.live.lock_unpoisoned();
        let fds: std::collections::HashSet<RawFd> = live.values().copied().collect();
        fds.into_iter()
            .filter(|fd| tcp_state(*fd) == Some(TCP_ESTABLISHED))
            .count()
    }
}

/// The running proxy.
pub struct CountingProxy {
    addr: SocketAddr,
    counters: Arc<Counters>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CountingProxy {
    /// Proxies 127.0.0.1:0 to `upstream`.
    pub fn start(upstream: SocketAddr) -> CountingProxy {
        let counters = Arc::new(Counters::default());
        counters.started.get_or_init(std::time::Instant::now);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread_counters = counters.clone();
        let thread = std::thread::Builder::new()
            .name("counting-proxy".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                runtime.block_on(run(upstream, thread_counters, addr_tx, stop_rx));
                runtime.shutdown_timeout(Duration::from_millis(100));
            })
            .expect("spawn the proxy thread");
        let addr = addr_rx.recv().expect("the proxy bound a port");
        CountingProxy {
            addr,
            counters,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops bytes one way or both, from now on, on every connection.
    pub fn blackhole(&self, which: Blackhole) {
        let (up, down) = match which {
            Blackhole::ToUpstream => (true, false),
            Blackhole::ToClient => (false, true),
            Blackhole::Both => (true, true),
        };
        self.counters.drop_to_upstream.store(up, Ordering::SeqCst);
        self.counters.drop_to_client.store(down, Ordering::SeqCst);
    }

    /// Lets bytes through both ways again.
    pub fn heal(&self) {
        self.counters
            .drop_to_upstream
            .store(false, Ordering::SeqCst);
        self.counters.drop_to_client.store(false, Ordering::SeqCst);
    }

    /// Client connections whose relay is still running.
    pub fn open(&self) -> usize {
        self.counters.open.load(Ordering::SeqCst)
    }

    /// Peak of `open` since start or the last reset.
    pub fn max_open(&self) -> usize {
        self.counters.max_open.load(Ordering::SeqCst)
    }

    /// Connections accepted since start.
    pub fn total_accepted(&self) -> usize {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    /// Bytes passed to clients in each consecutive `window` (a multiple of 100 ms) since the
    /// proxy started, up to the last one with any: what the client received, counted outside
    /// it.
    pub fn bytes_to_client_per(&self, window: Duration) -> Vec<u64> {
        let per = (window.as_millis() / BUCKET.as_millis()).max(1) as usize;
        self.counters
            .to_client
            .lock_unpoisoned()
            .chunks(per)
            .map(|chunk| chunk.iter().sum())
            .collect()
    }

    /// Restarts the peak from the current value.
    pub fn reset_max(&self) {
        self.counters.max_open.store(self.open(), Ordering::SeqCst);
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn run(
    upstream: SocketAddr,
    counters: Arc<Counters>,
    addr_tx: std::sync::mpsc::Sender<SocketAddr>,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy");
    let _ = addr_tx.send(listener.local_addr().expect("local addr"));
    loop {
        let client = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(_) => continue,
            },
        };
        // Register first: nothing may happen on this connection before it is counted.
        let id = counters.accepted.fetch_add(1, Ordering::SeqCst) as u64;
        counters
            .live
            .lock_unpoisoned()
            .insert(id, client.as_raw_fd());
        counters.open.fetch_add(1, Ordering::SeqCst);
        // The peak is the kernel's view at accept: client sockets that have sent neither FIN
        // nor RST, this one included. Waiting before looking would miss connections that
        // close quickly; a client that closed a connection before dialling the next one has
        // already had its FIN processed by the time the new handshake completes.
        let open = counters.established();
        counters.max_open.fetch_max(open, Ordering::SeqCst);
        let counters = counters.clone();
        tokio::spawn(async move {
            relay(client, upstream, &counters).await;
            counters.live.lock_unpoisoned().remove(&id);
            counters.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Copies both ways until the client goes away (or upstream fails, which is passed on),
/// dropping what a blackhole swallows.
async fn relay(client: TcpStream, upstream: SocketAddr, counters: &Counters) {
    let _ = client.set_nodelay(true);
    // A small send buffer towards the client: what is counted as passed to the client is
    // then what the client took, not megabytes the kernel holds for it.
    let _ = socket2::SockRef::from(&client).set_send_buffer_size(CLIENT_SEND_BUFFER);
    let client_fd = client.as_raw_fd();
    let reset_client = || {
        // SAFETY: called while the client socket halves are still alive in this function.
        let socket = unsafe { BorrowedFd::borrow_raw(client_fd) };
        let _ = socket2::SockRef::from(&socket).set_linger(Some(Duration::ZERO));
    };
    let Ok(server) = TcpStream::connect(upstream).await else {
        reset_client();
        return;
    };
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let to_server = async move {
        let mut buffer = vec![0u8; 64 << 10];
        loop {
            match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => return Some(server_write),
                Ok(_) if counters.drop_to_upstream.load(Ordering::SeqCst) => {}
                Ok(n) => {
                    if server_write.write_all(&buffer[..n]).await.is_err() {
                        return None;
                    }
                }
            }
        }
    };
    let to_client = async move {
        let mut buffer = vec![0u8; 64 << 10];
        loop {
            match server_read.read(&mut buffer).await {
                Ok(0) => {
                    // Upstream closed cleanly: pass the close on, unless a blackhole
                    // swallows it (a vanished peer sends no FIN).
                    if !counters.drop_to_client.load(Ordering::SeqCst) {
                        let _ = client_write.shutdown().await;
                    }
                    return (false, client_write);
                }
                Err(_) => {
                    return (
                        !counters.drop_to_client.load(Ordering::SeqCst),
                        client_write,
                    );
                }
                Ok(_) if counters.drop_to_client.load(Ordering::SeqCst) => {}
                Ok(n) => {
                    if client_write.write_all(&buffer[..n]).await.is_err() {
                        return (false, client_write);
                    }
                    counters.passed_to_client(n);
                }
            }
        }
    };
    tokio::pin!(to_server, to_client);
    tokio::select! {
        // The client closed: the connection is over from the client's point of view. Inside
        // a blackhole its close must not reach upstream either: hold the upstream side open
        // until the blackhole heals.
        server_write = &mut to_server => {
            // Dropping the write half would send the FIN: keep it while the blackhole lasts.
            while server_write.is_some() && counters.drop_to_upstream.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        (upstream_failed, client_write) = &mut to_client => {
            if upstream_failed {
                reset_client();
                drop(client_write);
                return;
            }
            // Wait for the client to close its side.
            to_server.await;
        }
    }
}
