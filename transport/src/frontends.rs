//! The front-end addresses of an S3 endpoint, and which of them gets the next connection.
//!
//! An S3 host name resolves to several addresses, and they are not equal: some front-ends are
//! slower or fail more than others (the AWS CRT harvests addresses for the same reason). So:
//!
//! - **Every address is used.** The host is resolved (by the system, or by `--resolve`
//!   overrides, which is also how tests inject several loopback addresses without touching
//!   `/etc/hosts`) and resolved again every [`RESOLVE_EVERY`]; addresses that disappear take
//!   no new connection, new ones join.
//! - **Scored by what they deliver.** Each address keeps a moving average of the rate its
//!   responses stream at and of its failures (connect errors, broken responses). Its weight is
//!   its rate against the best address's, less its failure share; an address not measured yet
//!   counts as good, so every address gets tried.
//! - **Requests follow the weights.** Each request goes to the address with the fewest
//!   requests in flight per unit of weight (on an idle connection to it, or a new one), so a
//!   front-end at a quarter of the others' rate carries about a quarter of their requests,
//!   and a failing one almost none (never none: [`MIN_WEIGHT`] keeps measuring it, in case it
//!   recovers).
//! - **A request can avoid an address.** The fetch engine re-asks a slow request on another
//!   connection ("hedging"); through a [`Route`] it tells the pool which front-end to avoid
//!   and learns which one served each request. The route travels as a task-local value, so it
//!   passes through the S3 SDK without touching the request (whose headers may be signed).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::sync::MutexExt;

/// How often a host is resolved again (the system resolver does not tell the TTL).
pub const RESOLVE_EVERY: Duration = Duration::from_secs(60);
/// The smallest share of new connections an address can fall to.
pub const MIN_WEIGHT: f64 = 0.05;
/// Weight of a new sample in the moving averages.
const EWMA: f64 = 0.2;
/// Responses shorter than this tell nothing about an address's rate.
const MIN_SAMPLE_BYTES: u64 = 64 << 10;
/// Nor do responses that took less than this to stream.
const MIN_SAMPLE_TIME: Duration = Duration::from_millis(20);
/// A response that streamed this long is a sample however few bytes it brought (a crawl).
const RATE_SAMPLE_WAIT: Duration = Duration::from_millis(500);

/// `--resolve HOST:PORT:ADDR[,ADDR..]`: fixed addresses for a host and port, instead of the
/// system resolver's (as curl's `--resolve`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolveOverride {
    /// Host name as it appears in the endpoint URL.
    pub host: String,
    /// Port.
    pub port: u16,
    /// The addresses to use, at least one.
    pub addrs: Vec<IpAddr>,
}

impl std::str::FromStr for ResolveOverride {
    type Err = String;

    /// Parses `HOST:PORT:ADDR[,ADDR..]`; IPv6 addresses go in brackets (`[::1]`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let expected = "expected HOST:PORT:ADDR[,ADDR..], e.g. s3.example:443:10.0.0.1,10.0.0.2";
        let mut fields = text.splitn(3, ':');
        let (Some(host), Some(port), Some(addrs)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(expected.to_string());
        };
        if host.is_empty() {
            return Err(format!("no host; {expected}"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| format!("bad port `{port}`; {expected}"))?;
        let addrs = addrs
            .split(',')
            .map(|a| {
                let bare = a.trim().trim_start_matches('[').trim_end_matches(']');
                bare.parse::<IpAddr>()
                    .map_err(|_| format!("bad address `{a}`; {expected}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if addrs.is_empty() {
            return Err(format!("no address; {expected}"));
        }
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
            addrs,
        })
    }
}

/// Where addresses come from: the system resolver, except for overridden hosts.
#[derive(Clone, Debug, Default)]
pub struct Resolver {
    overrides: Vec<ResolveOverride>,
}

impl Resolver {
    /// The system resolver with `overrides` taking precedence.
    pub fn with_overrides(overrides: Vec<ResolveOverride>) -> Self {
        Self { overrides }
    }

    /// The overrides.
    pub fn overrides(&self) -> &[ResolveOverride] {
        &self.overrides
    }

    /// Every address of `host:port`.
    pub async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        if let Some(fixed) = self
            .overrides
            .iter()
            .find(|o| o.port == port && o.host.eq_ignore_ascii_case(host))
        {
            return Ok(fixed
                .addrs
                .iter()
                .map(|ip| SocketAddr::new(*ip, port))
                .collect());
        }
        let mut found: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
        // Keep the resolver's order (its preference) but never an address twice.
        let mut seen = std::collections::HashSet::new();
        found.retain(|a| seen.insert(*a));
        if found.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{host} has no address"),
            ));
        }
        Ok(found)
    }
}

/// One address and what it has delivered.
#[derive(Clone, Debug)]
struct FrontEnd {
    addr: SocketAddr,
    /// Connections open to it.
    open: usize,
    /// Requests in flight on it.
    in_flight: usize,
    /// Moving average of its responses' streaming rate, bytes per second (None: unmeasured).
    rate: Option<f64>,
    /// Moving average of failures per outcome (0: none, 1: every one).
    failures: f64,
    /// In the latest resolution.
    current: bool,
}

/// A request in flight on a front-end, counted until dropped.
#[derive(Debug)]
pub struct InFlight {
    frontends: Arc<FrontEnds>,
    addr: SocketAddr,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(end) = self.frontends.state.lock_unpoisoned().find(self.addr) {
            end.in_flight = end.in_flight.saturating_sub(1);
        }
    }
}

/// What a caller can see of one front-end.
#[derive(Clone, Debug, PartialEq)]
pub struct FrontEndSnapshot {
    /// The address.
    pub addr: SocketAddr,
    /// Connections open to it.
    pub open: usize,
    /// Requests in flight on it.
    pub in_flight: usize,
    /// Its share of requests, relative to the best address (0 to 1).
    pub weight: f64,
    /// Its responses' average rate, bytes per second, once measured.
    pub rate: Option<f64>,
    /// Whether the latest resolution returned it.
    pub current: bool,
}

/// The addresses of one endpoint and their scores.
#[derive(Debug, Default)]
pub struct FrontEnds {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    ends: Vec<FrontEnd>,
    resolved_at: Option<Instant>,
    /// Rotates among equals, so ties spread instead of piling on the first address.
    turn: usize,
}

impl State {
    fn best_rate(&self) -> Option<f64> {
        self.ends
            .iter()
            .filter(|e| e.current)
            .filter_map(|e| e.rate)
            .reduce(f64::max)
    }

    fn weight(end: &FrontEnd, best: Option<f64>) -> f64 {
        let speed = match (end.rate, best) {
            (Some(rate), Some(best)) if best > 0.0 => rate / best,
            _ => 1.0,
        };
        (speed * (1.0 - end.failures)).clamp(MIN_WEIGHT, 1.0)
    }

    fn find(&mut self, addr: SocketAddr) -> Option<&mut FrontEnd> {
        self.ends.iter_mut().find(|e| e.addr == addr)
    }
}

impl FrontEnds {
    /// Whether the addresses should be resolved (never yet, or [`RESOLVE_EVERY`] ago).
    pub fn needs_resolving(&self, now: Instant) -> bool {
        self.state
            .lock_unpoisoned()
            .resolved_at
            .is_none_or(|at| now.duration_since(at) >= RESOLVE_EVERY)
    }

    /// Whether any address is known.
    pub fn is_empty(&self) -> bool {
        !self.state.lock_unpoisoned().ends.iter().any(|e| e.current)
    }

    /// Takes a new resolution: known addresses keep their scores, new ones join, missing ones
    /// take no new connection.
    pub fn update(&self, addrs: &[SocketAddr], now: Instant) {
        let mut state = self.state.lock_unpoisoned();
        state.resolved_at = Some(now);
        for end in &mut state.ends {
            end.current = addrs.contains(&end.addr);
        }
        for addr in addrs {
            if state.find(*addr).is_none() {
                state.ends.push(FrontEnd {
                    addr: *addr,
                    open: 0,
                    in_flight: 0,
                    rate: None,
                    failures: 0.0,
                    current: true,
                });
            }
        }
        // Forget addresses that are gone and hold no connection.
        state.ends.retain(|e| e.current || e.open > 0);
    }

    /// A resolution failed: the next connection tries again, unless addresses are known
    /// (they keep serving until the next due resolution).
    pub fn resolve_failed(&self) {
        let mut state = self.state.lock_unpoisoned();
        if !state.ends.iter().any(|e| e.current) {
            state.resolved_at = None;
        }
    }

    /// A resolution in the background is under way: nobody else starts one until it is due
    /// again.
    pub fn mark_resolving(&self, now: Instant) {
        self.state.lock_unpoisoned().resolved_at = Some(now);
    }

    /// The address the next request should go to, other than `avoid` when there is a
    /// choice: the fewest requests in flight per unit of weight.
    pub fn pick(&self, avoid: Option<SocketAddr>) -> Option<SocketAddr> {
        let mut state = self.state.lock_unpoisoned();
        let best = state.best_rate();
        let count = state.ends.len();
        if count == 0 {
            return None;
        }
        let start = state.turn % count;
        let mut chosen: Option<(f64, SocketAddr)> = None;
        for offset in 0..count {
            let end = &state.ends[(start + offset) % count];
            if !end.current || (Some(end.addr) == avoid && count > 1) {
                continue;
            }
            let load = (end.in_flight as f64 + 1.0) / State::weight(end, best);
            if chosen.is_none_or(|(least, _)| load < least) {
                chosen = Some((load, end.addr));
            }
        }
        state.turn = state.turn.wrapping_add(1);
        chosen.map(|(_, addr)| addr).or_else(|| {
            // Only the avoided (or only stale) addresses are left: better than nothing.
            state.ends.iter().find(|e| e.current).map(|e| e.addr)
        })
    }

    /// Whether an idle connection to `addr` is worth reusing: its address is current and
    /// scores at least half of the best one (a slow front-end's connections are let go, so
    /// new ones go elsewhere).
    pub fn worth_reusing(&self, addr: SocketAddr) -> bool {
        let state = self.state.lock_unpoisoned();
        let best = state.best_rate();
        state
            .ends
            .iter()
            .find(|e| e.addr == addr)
            .is_some_and(|e| e.current && State::weight(e, best) >= 0.5)
    }

    /// A request was sent to `addr`; the guard counts it in flight until dropped.
    pub fn request(self: &Arc<Self>, addr: SocketAddr) -> InFlight {
        if let Some(end) = self.state.lock_unpoisoned().find(addr) {
            end.in_flight += 1;
        }
        InFlight {
            frontends: self.clone(),
            addr,
        }
    }

    /// A connection to `addr` opened.
    pub fn opened(&self, addr: SocketAddr) {
        if let Some(end) = self.state.lock_unpoisoned().find(addr) {
            end.open += 1;
        }
    }

    /// A connection to `addr` closed.
    pub fn closed(&self, addr: SocketAddr) {
        if let Some(end) = self.state.lock_unpoisoned().find(addr) {
            end.open = end.open.saturating_sub(1);
        }
    }

    /// A response from `addr` streamed `bytes` in `streaming` (from its first byte to its
    /// last): a rate sample, if long enough to mean something, and a success.
    pub fn delivered(&self, addr: SocketAddr, bytes: u64, streaming: Duration) {
        if let Some(end) = self.state.lock_unpoisoned().find(addr) {
            end.failures *= 1.0 - EWMA;
        }
        self.sampled(addr, bytes, streaming);
    }

    /// A response from `addr` was abandoned after streaming `bytes` in `streaming` (a slow
    /// body overtaken, a stall): its rate so far is a sample too.
    pub fn sampled(&self, addr: SocketAddr, bytes: u64, streaming: Duration) {
        let mut state = self.state.lock_unpoisoned();
        let Some(end) = state.find(addr) else {
            return;
        };
        if streaming < MIN_SAMPLE_TIME || (bytes < MIN_SAMPLE_BYTES && streaming < RATE_SAMPLE_WAIT)
        {
            return;
        }
        let rate = bytes as f64 / streaming.as_secs_f64();
        end.rate = Some(match end.rate {
            Some(average) => average + EWMA * (rate - average),
            None => rate,
        });
    }

    /// A connect or a response from `addr` failed.
    pub fn failed(&self, addr: SocketAddr) {
        if let Some(end) = self.state.lock_unpoisoned().find(addr) {
            end.failures += EWMA * (1.0 - end.failures);
        }
    }

    /// Every known address with its figures.
    pub fn snapshot(&self) -> Vec<FrontEndSnapshot> {
        let state = self.state.lock_unpoisoned();
        let best = state.best_rate();
        state
            .ends
            .iter()
            .map(|e| FrontEndSnapshot {
                addr: e.addr,
                open: e.open,
                in_flight: e.in_flight,
                weight: State::weight(e, best),
                rate: e.rate,
                current: e.current,
            })
            .collect()
    }
}

tokio::task_local! {
    static ROUTE: Route;
}

/// How one request is routed: a front-end to avoid, and, once sent, the one that served it.
#[derive(Clone, Debug, Default)]
pub struct Route {
    inner: Arc<RouteInner>,
}

#[derive(Debug, Default)]
struct RouteInner {
    avoid: Option<SocketAddr>,
    /// The most an unranged body may hold (an object's own size), instead of the cap of
    /// listings and error documents.
    body_limit: Option<u64>,
    served_by: OnceLock<SocketAddr>,
}

impl Route {
    /// A route that prefers any address but `avoid`.
    pub fn avoiding(avoid: Option<SocketAddr>) -> Self {
        Self::new(avoid, None)
    }

    /// A route that avoids `avoid` and whose unranged body may be `body_limit` bytes long
    /// (the whole-object GET of an object of that size) rather than capped like a listing.
    pub fn new(avoid: Option<SocketAddr>, body_limit: Option<u64>) -> Self {
        Self {
            inner: Arc::new(RouteInner {
                avoid,
                body_limit,
                served_by: OnceLock::new(),
            }),
        }
    }

    /// The body limit the caller gave.
    pub(crate) fn body_limit(&self) -> Option<u64> {
        self.inner.body_limit
    }

    /// The address the request was sent to, once it was.
    pub fn served_by(&self) -> Option<SocketAddr> {
        self.inner.served_by.get().copied()
    }

    /// Runs `request` (an S3 SDK call) with this route: the pool reads it while sending.
    pub async fn run<F: Future>(self, request: F) -> F::Output {
        ROUTE.scope(self, request).await
    }

    /// The route of the request being sent, if its caller gave one.
    pub(crate) fn current() -> Option<Route> {
        ROUTE.try_with(Clone::clone).ok()
    }

    pub(crate) fn avoid(&self) -> Option<SocketAddr> {
        self.inner.avoid
    }

    pub(crate) fn record(&self, addr: SocketAddr) {
        let _ = self.inner.served_by.set(addr);
    }
}

/// The front-ends of every endpoint a pool talks to, by `host:port`.
#[derive(Debug, Default)]
pub struct Endpoints {
    by_host: Mutex<HashMap<(String, u16), Arc<FrontEnds>>>,
}

impl Endpoints {
    /// The front-ends of `host:port`, created empty on first use.
    pub fn get(&self, host: &str, port: u16) -> Arc<FrontEnds> {
        self.by_host
            .lock_unpoisoned()
            .entry((host.to_ascii_lowercase(), port))
            .or_default()
            .clone()
    }

    /// Every endpoint's front-ends.
    pub fn snapshot(&self) -> Vec<(String, u16, Vec<FrontEndSnapshot>)> {
        let by_host = self.by_host.lock_unpoisoned();
        let mut all: Vec<_> = by_host
            .iter()
            .map(|((host, port), ends)| (host.clone(), *port, ends.snapshot()))
            .collect();
        all.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last], 9000))
    }

    fn three() -> Arc<FrontEnds> {
        let ends = Arc::new(FrontEnds::default());
        ends.update(&[addr(1), addr(2), addr(3)], Instant::now());
        ends
    }

    /// Sends `n` requests where `pick` says (all still in flight), and counts them per address.
    fn open(ends: &Arc<FrontEnds>, n: usize) -> (HashMap<SocketAddr, usize>, Vec<InFlight>) {
        let mut counts = HashMap::new();
        let mut held = Vec::new();
        for _ in 0..n {
            let chosen = ends.pick(None).unwrap();
            held.push(ends.request(chosen));
            *counts.entry(chosen).or_default() += 1;
        }
        (counts, held)
    }

    #[test]
    fn resolve_overrides_parse_and_refuse_with_the_bad_part_named() {
        let parsed: ResolveOverride = "S3.Example:443:10.0.0.1,[::1]".parse().unwrap();
        assert_eq!(parsed.host, "s3.example");
        assert_eq!(parsed.port, 443);
        assert_eq!(parsed.addrs.len(), 2);
        for (bad, named) in [
            ("s3.example", "expected HOST:PORT:ADDR"),
            (":443:10.0.0.1", "no host"),
            ("h:http:10.0.0.1", "bad port `http`"),
            ("h:443:10.0.0.300", "bad address `10.0.0.300`"),
        ] {
            let error = bad.parse::<ResolveOverride>().unwrap_err();
            assert!(error.contains(named), "{bad}: {error}");
        }
    }

    #[tokio::test]
    async fn overrides_win_and_literal_addresses_need_no_lookup() {
        let resolver =
            Resolver::with_overrides(vec!["s3.test:9000:127.0.0.2,127.0.0.3".parse().unwrap()]);
        assert_eq!(
            resolver.resolve("S3.TEST", 9000).await.unwrap(),
            vec![addr(2), addr(3)]
        );
        assert_eq!(
            resolver.resolve("127.0.0.7", 9000).await.unwrap(),
            vec![addr(7)]
        );
    }

    #[test]
    fn equal_front_ends_share_connections_evenly() {
        let ends = three();
        let (counts, _held) = open(&ends, 30);
        assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![10; 3]);
    }

    #[test]
    fn a_slow_front_end_gets_fewer_connections_and_a_failing_one_almost_none() {
        let ends = three();
        for _ in 0..5 {
            ends.delivered(addr(1), 4 << 20, Duration::from_secs(1));
            ends.delivered(addr(2), 4 << 20, Duration::from_secs(1));
            ends.delivered(addr(3), 1 << 20, Duration::from_secs(1));
        }
        let (counts, _held) = open(&ends, 45);
        assert_eq!(counts[&addr(1)], counts[&addr(2)]);
        assert!(
            counts[&addr(3)] * 3 < counts[&addr(1)],
            "the slow front-end got {counts:?}"
        );
        assert!(!ends.worth_reusing(addr(3)));
        assert!(ends.worth_reusing(addr(1)));

        let ends = three();
        for _ in 0..20 {
            ends.failed(addr(2));
        }
        let (counts, _held) = open(&ends, 60);
        assert!(
            counts.get(&addr(2)).copied().unwrap_or(0) <= 3,
            "the failing front-end got {counts:?}"
        );
    }

    #[test]
    fn a_hedge_avoids_the_address_it_is_asked_to_and_falls_back_when_alone() {
        let ends = three();
        for _ in 0..10 {
            assert_ne!(ends.pick(Some(addr(2))), Some(addr(2)));
        }
        let alone = Arc::new(FrontEnds::default());
        alone.update(&[addr(1)], Instant::now());
        assert_eq!(alone.pick(Some(addr(1))), Some(addr(1)));
    }

    #[test]
    fn a_new_resolution_keeps_scores_adds_and_retires_addresses() {
        let ends = three();
        ends.opened(addr(3));
        ends.delivered(addr(1), 1 << 20, Duration::from_millis(500));
        ends.update(&[addr(1), addr(4)], Instant::now());
        let snapshot = ends.snapshot();
        let find = |a| snapshot.iter().find(|s| s.addr == a);
        assert!(find(addr(1)).unwrap().rate.is_some(), "the score was lost");
        assert!(find(addr(4)).unwrap().current);
        assert!(
            !find(addr(3)).unwrap().current,
            "a retired address with a connection stays, not current"
        );
        assert!(
            find(addr(2)).is_none(),
            "a retired idle address is forgotten"
        );
        for _ in 0..10 {
            assert_ne!(ends.pick(None), Some(addr(3)));
        }
    }

    #[tokio::test]
    async fn a_route_is_seen_inside_its_scope_only() {
        assert!(Route::current().is_none());
        let route = Route::avoiding(Some(addr(1)));
        let seen = route
            .clone()
            .run(async {
                let current = Route::current().unwrap();
                current.record(addr(2));
                current.avoid()
            })
            .await;
        assert_eq!(seen, Some(addr(1)));
        assert_eq!(route.served_by(), Some(addr(2)));
    }
}
