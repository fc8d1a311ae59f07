//! `frostheap serve`: an HTTP/1.1 server (tokio + hyper) that is told how
//! much memory it has, not how many clients, and never outgrows it.
//!
//! Memory is charged to one [`Budget`] at two levels:
//!
//! - **connections**: each accepted connection reserves
//!   [`CONNECTION_BYTES`] (hyper's read buffer, capped at 16 KiB with
//!   `max_buf_size`, its write buffer, the task and socket wrappers). When
//!   they do not fit, `shed` answers a canned 503 without starting hyper;
//!   `wait` makes the connection wait for its bytes (FIFO) before hyper
//!   reads a byte of it.
//! - **requests**, through the tower layer [`MemoryLimitLayer`]: a request
//!   is charged `max(per-client cost − CONNECTION_BYTES, REQUEST_BYTES +
//!   body × factor)` (so that a client, connection and request, costs the
//!   per-client figure and the printed capacity really fits), where
//!   the factor is what the endpoint builds from the body (2 for a
//!   transform: body and output; 4 for a JSON echo: body, parsed tree,
//!   output). Past the budget, `shed` answers 503, `wait` queues.
//!
//! Each handler records what it really held ([`Permit::record_usage`]:
//! request overhead, body buffer, parsed tree, output), so with the default
//! `--per-client` the declared 128 KiB is only the first estimate: the
//! budget refines it (`mean + 2 × deviation` of recorded usage) and the
//! capacity follows. `--fixed-per-client` keeps the declared figure.
//!
//! `/stats` and `/metrics` bypass the layer so that a load balancer can
//! read them while the server sheds. `--no-budget` serves the same
//! endpoints with no layer and no connection charge: plain hyper, the
//! baseline for `frostheap-load`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::poll_fn;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use frostheap::budget::tower::{BudgetBody, MemoryLimit, MemoryLimitLayer, Overload};
use frostheap::budget::PerClient;
use frostheap::{parse_size, Budget, Bytes, Permit};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_layer::Layer;
use tower_service::Service;

/// Bytes reserved per open connection: hyper's read buffer (capped at
/// 16 KiB here), its write buffer and headers, the connection task and the
/// socket wrappers. An estimate, not yet measured on its own: the overload
/// runs of `frostheap-load` bound it from above (peak RSS stays within
/// budget + 10 MiB with 2,560 clients).
pub const CONNECTION_BYTES: usize = 24 << 10;

/// Fixed bytes per request on top of its body: the parsed head (`HeaderMap`,
/// URI), the request's future and its response head.
pub const REQUEST_BYTES: usize = 4 << 10;

/// Longest `/hold` or `hold_ms` accepted.
const MAX_HOLD_MS: u64 = 10_000;

/// What to do past capacity.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OverloadArg {
    /// Answer 503 (with `Retry-After: 1`) at once.
    Shed,
    /// Make the client wait (backpressure) until memory is free.
    Wait,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Memory budget for clients: a size such as 256M or 1G.
    #[arg(long, default_value = "256M")]
    max_memory: String,
    /// Address to listen on; port 0 picks a free port (the address is
    /// printed at start).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Declared cost of one client, the starting point of the measured
    /// estimate.
    #[arg(long, default_value = "128K")]
    per_client: String,
    /// Keep the declared per-client cost instead of refining it by
    /// measurement.
    #[arg(long)]
    fixed_per_client: bool,
    /// What to do past capacity.
    #[arg(long, value_enum, default_value = "shed")]
    overload: OverloadArg,
    /// Largest request body accepted (413 past it).
    #[arg(long, default_value = "1M")]
    max_body: String,
    /// Serve without any budget (plain hyper, for comparison).
    #[arg(long)]
    no_budget: bool,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

type Error = Box<dyn std::error::Error>;
type RespBody = BudgetBody<Full<hyper::body::Bytes>>;

fn size_arg(flag: &str, text: &str) -> Result<usize, Error> {
    parse_size(text).map_err(|_| {
        format!(
            "invalid {flag} {text:?}: expected {}",
            frostheap::size::SIZE_SYNTAX
        )
        .into()
    })
}

/// Everything the handlers share.
struct State {
    budget: Option<Budget>,
    max_body: usize,
    /// Requests routed to an endpoint behind the layer (shed ones included).
    requests: AtomicU64,
    /// Connections answered with a canned 503 at accept.
    shed_connections: AtomicU64,
    /// Open connections holding a slot. Invariant: `open <= budget.clients()`
    /// when a slot is taken, so that every open connection's next request
    /// finds its per-client floor (no connection holds bytes while all the
    /// rest wait: the hold-and-wait of a two-level budget).
    open: AtomicUsize,
    /// Signalled when a connection gives its slot back.
    slot_freed: tokio::sync::Notify,
    /// Connections waiting for a slot (wait mode).
    waiting_connections: AtomicUsize,
    /// Requests answered 2xx by a handler.
    completed: AtomicU64,
}

pub fn run(args: ServeArgs) -> Result<(), Error> {
    let max_memory = size_arg("--max-memory", &args.max_memory)?;
    let per_client = size_arg("--per-client", &args.per_client)?;
    let max_body = size_arg("--max-body", &args.max_body)?;
    if per_client == 0 {
        return Err("invalid --per-client \"0\": expected a size of at least 1 byte".into());
    }
    let budget = if args.no_budget {
        None
    } else {
        let mode = if args.fixed_per_client {
            PerClient::Declared(per_client)
        } else {
            PerClient::Measured {
                initial: per_client,
            }
        };
        if max_memory < per_client + CONNECTION_BYTES {
            return Err(format!(
                "--max-memory {} is smaller than one client ({} per client + {} per connection): raise --max-memory or lower --per-client",
                Bytes(max_memory),
                Bytes(per_client),
                Bytes(CONNECTION_BYTES)
            )
            .into());
        }
        Some(Budget::with_per_client(max_memory, mode)?)
    };
    let listener = std::net::TcpListener::bind(&args.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;

    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build()?;

    let overload = match args.overload {
        OverloadArg::Shed => Overload::Shed,
        OverloadArg::Wait => Overload::Wait,
    };
    {
        let mut out = std::io::stdout().lock();
        match &budget {
            Some(b) => {
                let how = if args.fixed_per_client {
                    "declared"
                } else {
                    "declared, refined by measurement"
                };
                let past = match overload {
                    Overload::Shed => "503 past capacity",
                    Overload::Wait => "clients wait past capacity",
                };
                writeln!(out, "frostheap serve: {b} ({how}; {past})")?;
            }
            None => writeln!(
                out,
                "frostheap serve: no budget (plain hyper, memory grows with load)"
            )?,
        }
        writeln!(out, "listening on http://{addr}")?;
        out.flush()?;
    }

    let state = Arc::new(State {
        budget: budget.clone(),
        max_body,
        requests: AtomicU64::new(0),
        shed_connections: AtomicU64::new(0),
        open: AtomicUsize::new(0),
        slot_freed: tokio::sync::Notify::new(),
        waiting_connections: AtomicUsize::new(0),
        completed: AtomicU64::new(0),
    });
    rt.block_on(serve(listener, state, overload))
}

async fn serve(
    listener: std::net::TcpListener,
    state: Arc<State>,
    overload: Overload,
) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let limited = state.budget.as_ref().map(|b| {
        let layer = MemoryLimitLayer::new(b.clone())
            .overload(overload)
            .cost(request_cost)
            .prepaid(CONNECTION_BYTES);
        layer.layer(App {
            state: state.clone(),
        })
    });
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: back off, keep serving.
                eprintln!("frostheap serve: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let router = Router {
            state: state.clone(),
            limited: limited.clone(),
        };
        tokio::spawn(connection(stream, router, overload));
    }
}

/// Serves one connection, holding a slot (at most `capacity` connections
/// are open) and charging [`CONNECTION_BYTES`] while it is open; when
/// either is spent, the connection is refused (shed) or waits (wait). A connection whose first bytes ask for
/// `/stats` or `/metrics` is served uncharged, for one request: monitoring
/// must answer while the server sheds, and must not take a client's place.
async fn connection(stream: tokio::net::TcpStream, router: Router, overload: Overload) {
    let mut http = hyper::server::conn::http1::Builder::new();
    let monitoring = router.state.budget.is_some() && asks_for_monitoring(&stream).await;
    let (slot, permit) = match &router.state.budget {
        None => (None, None),
        Some(_) if monitoring => {
            http.keep_alive(false);
            (None, None)
        }
        Some(b) => {
            let Some(slot) = Slot::take(router.state.clone(), b, overload).await else {
                router
                    .state
                    .shed_connections
                    .fetch_add(1, Ordering::Relaxed);
                b.count_refusal();
                return refuse_connection(stream).await;
            };
            // Waiting is not refusing: only shed mode uses (and counts) `try_`.
            let permit = if overload == Overload::Wait {
                b.reserve(CONNECTION_BYTES).await.ok()
            } else {
                b.try_reserve(CONNECTION_BYTES)
            };
            let Some(permit) = permit else {
                router
                    .state
                    .shed_connections
                    .fetch_add(1, Ordering::Relaxed);
                return refuse_connection(stream).await;
            };
            (Some(slot), Some(permit))
        }
    };
    if router.state.budget.is_some() {
        // Bound hyper's read buffer so that the connection charge holds.
        http.max_buf_size(16 << 10);
    }
    let service = hyper::service::service_fn(move |req| router.clone().route(req));
    let _ = http.serve_connection(TokioIo::new(stream), service).await;
    drop(permit);
    drop(slot);
}

/// A connection slot: at most `capacity` connections are open at once.
struct Slot {
    state: Arc<State>,
}

impl Slot {
    /// Takes a slot, waiting for one (wait) or returning `None` (shed).
    async fn take(state: Arc<State>, budget: &Budget, overload: Overload) -> Option<Slot> {
        loop {
            let freed = state.slot_freed.notified();
            let cap = budget.clients();
            let open = state.open.load(Ordering::Relaxed);
            if open < cap {
                if state
                    .open
                    .compare_exchange(open, open + 1, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    drop(freed);
                    return Some(Slot { state });
                }
                continue;
            }
            if overload == Overload::Shed {
                return None;
            }
            state.waiting_connections.fetch_add(1, Ordering::Relaxed);
            freed.await;
            state.waiting_connections.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.state.open.fetch_sub(1, Ordering::AcqRel);
        self.state.slot_freed.notify_one();
    }
}

/// Whether the request waiting on `stream` is `GET /stats` or
/// `GET /metrics` (peeked, not consumed; gives up after a second).
async fn asks_for_monitoring(stream: &tokio::net::TcpStream) -> bool {
    let mut head = [0u8; 13];
    let peek = async {
        loop {
            match stream.peek(&mut head).await {
                Ok(n) if n >= 11 || n == 0 => return n,
                Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                Err(_) => return 0,
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(1), peek).await {
        Ok(n) => {
            let head = &head[..n];
            head.starts_with(b"GET /stats ")
                || head.starts_with(b"GET /stats?")
                || head.starts_with(b"GET /metrics")
        }
        Err(_) => false,
    }
}

/// Answers a connection the budget cannot hold: a canned 503, then reads
/// (and drops) what the client still sends for up to a second, so that
/// closing does not reset the connection before the client has read the
/// answer.
async fn refuse_connection(mut stream: tokio::net::TcpStream) {
    const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 32\r\n\r\nover memory budget: retry later\n";
    if stream.write_all(REFUSAL).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 512];
    let drain = async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// The bytes a request declares from its head: fixed overhead plus what the
/// endpoint builds from its body.
fn request_cost(parts: &hyper::http::request::Parts) -> usize {
    let body = frostheap::budget::tower::content_length(parts);
    let factor = match parts.uri.path() {
        "/echo" => 4,
        "/transform" => 2,
        _ => 1,
    };
    REQUEST_BYTES.saturating_add(body.saturating_mul(factor))
}

#[derive(Clone)]
struct Router {
    state: Arc<State>,
    limited: Option<MemoryLimit<App>>,
}

impl Router {
    async fn route(self, req: Request<Incoming>) -> Result<Response<RespBody>, Infallible> {
        let path = req.uri().path();
        if req.method() == Method::GET && (path == "/stats" || path == "/metrics") {
            let text = if path == "/stats" {
                stats_json(&self.state)
            } else {
                metrics_text(&self.state)
            };
            let kind = if path == "/stats" {
                "application/json"
            } else {
                "text/plain; version=0.0.4"
            };
            return Ok(wrap(respond(StatusCode::OK, kind, text.into_bytes())));
        }
        self.state.requests.fetch_add(1, Ordering::Relaxed);
        match self.limited {
            Some(mut svc) => {
                poll_fn(|cx| svc.poll_ready(cx)).await?;
                svc.call(req).await
            }
            None => Ok(wrap(handle(&self.state, req).await)),
        }
    }
}

fn wrap(response: Response<Full<hyper::body::Bytes>>) -> Response<RespBody> {
    response.map(|body| BudgetBody::Admitted { body, permit: None })
}

/// The endpoints, as a tower service for the layer.
#[derive(Clone)]
struct App {
    state: Arc<State>,
}

impl Service<Request<Incoming>> for App {
    type Response = Response<Full<hyper::body::Bytes>>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let state = self.state.clone();
        Box::pin(async move { Ok(handle(&state, req).await) })
    }
}

fn respond(
    status: StatusCode,
    kind: &'static str,
    body: Vec<u8>,
) -> Response<Full<hyper::body::Bytes>> {
    let mut r = Response::new(Full::new(hyper::body::Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(kind));
    r
}

fn text(status: StatusCode, msg: &str) -> Response<Full<hyper::body::Bytes>> {
    respond(status, "text/plain", format!("{msg}\n").into_bytes())
}

fn query<'a>(req: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

async fn handle(state: &State, mut req: Request<Incoming>) -> Response<Full<hyper::body::Bytes>> {
    // Taken, not cloned: the response body holds the layer's own handle.
    let permit = req.extensions_mut().remove::<Permit>();
    if let Some(p) = &permit {
        // Its share of the connection counts: a client is both.
        p.record_usage(CONNECTION_BYTES + REQUEST_BYTES);
    }
    let hold_ms = query(&req, "hold_ms")
        .or_else(|| query(&req, "ms"))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        .min(MAX_HOLD_MS);
    let response = match (req.method().clone(), req.uri().path()) {
        (Method::GET, "/") => text(StatusCode::OK, "frostheap serve: POST /echo, POST /transform?op=upper|reverse|words, GET /hold?ms=N, GET /stats, GET /metrics"),
        (Method::GET, "/hold") => {
            tokio::time::sleep(Duration::from_millis(hold_ms)).await;
            text(StatusCode::OK, "held")
        }
        (Method::POST, "/echo") => match read_body(state, req, permit.as_ref()).await {
            Err(r) => r,
            Ok(body) => match serde_json::from_slice::<serde_json::Value>(&body) {
                Err(e) => text(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}")),
                Ok(value) => {
                    let out = serde_json::to_vec(&value).expect("a Value serializes");
                    // Walking the document costs; only a measuring budget
                    // uses the figure.
                    if let Some(p) = permit.as_ref().filter(|p| p.measuring()) {
                        p.record_usage(json_bytes(&value) + out.capacity());
                    }
                    hold(hold_ms).await;
                    drop(value);
                    respond(StatusCode::OK, "application/json", out)
                }
            },
        },
        (Method::POST, "/transform") => {
            let op = query(&req, "op").unwrap_or("upper").to_owned();
            match read_body(state, req, permit.as_ref()).await {
                Err(r) => r,
                Ok(body) => {
                    let out = match op.as_str() {
                        "upper" => body.to_ascii_uppercase(),
                        "reverse" => String::from_utf8_lossy(&body).chars().rev().collect::<String>().into_bytes(),
                        "words" => word_counts(&body),
                        other => return text(StatusCode::BAD_REQUEST, &format!("unknown op {other:?}: expected upper, reverse or words")),
                    };
                    if let Some(p) = &permit {
                        p.record_usage(out.capacity());
                    }
                    hold(hold_ms).await;
                    drop(body);
                    respond(StatusCode::OK, "application/octet-stream", out)
                }
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found: try GET /"),
    };
    if response.status().is_success() {
        state.completed.fetch_add(1, Ordering::Relaxed);
    }
    response
}

async fn hold(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// Reads the whole body into one buffer, refusing past `--max-body` (413)
/// and growing the permit when a body without `Content-Length` outgrows it
/// (503 when the budget cannot).
async fn read_body(
    state: &State,
    req: Request<Incoming>,
    permit: Option<&Permit>,
) -> Result<Vec<u8>, Response<Full<hyper::body::Bytes>>> {
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("body larger than --max-body ({})", Bytes(state.max_body)),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > state.max_body) {
        return Err(too_large());
    }
    let mut body = req.into_body();
    let mut buf = Vec::with_capacity(declared.unwrap_or(0));
    let mut charged = permit.map_or(0, |p| p.bytes());
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| text(StatusCode::BAD_REQUEST, &format!("reading the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > state.max_body {
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
            if let Some(p) = permit {
                let need = REQUEST_BYTES + buf.capacity();
                if need > charged {
                    if !p.try_grow(need - charged) {
                        return Err(text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "over memory budget: retry later",
                        ));
                    }
                    charged = need;
                }
            }
        }
    }
    if let Some(p) = permit {
        p.record_usage(buf.capacity());
    }
    Ok(buf)
}

/// Counts words (a hash table proportional to the body) and answers with
/// the number of distinct words and the ten most frequent.
fn word_counts(body: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(body);
    let mut counts: HashMap<&str, u64> = HashMap::new();
    for w in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        *counts.entry(w).or_insert(0) += 1;
    }
    let mut top: Vec<(&str, u64)> = counts.iter().map(|(w, c)| (*w, *c)).collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    top.truncate(10);
    serde_json::to_vec(&serde_json::json!({ "distinct": counts.len(), "top": top }))
        .expect("serializes")
}

/// Heap bytes of a parsed JSON tree: one `Value` per node plus string
/// and container buffers (capacities are not exposed: lengths are used).
fn json_bytes(v: &serde_json::Value) -> usize {
    use serde_json::Value;
    let node = std::mem::size_of::<Value>();
    match v {
        Value::String(s) => node + s.len(),
        Value::Array(a) => node + a.iter().map(json_bytes).sum::<usize>(),
        // A map entry: the key string, its node and the map's overhead.
        Value::Object(m) => {
            node + m
                .iter()
                .map(|(k, v)| k.len() + 3 * std::mem::size_of::<usize>() + json_bytes(v))
                .sum::<usize>()
        }
        _ => node,
    }
}

/// Resident and peak resident bytes (VmRSS, VmHWM) of this process.
fn rss() -> (usize, usize) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The numbers `/stats` and `/metrics` report.
struct Numbers {
    budget: usize,
    in_use: usize,
    peak_in_use: usize,
    clients: usize,
    peak_clients: usize,
    admitted: u64,
    shed: u64,
    waited: u64,
    waiting: usize,
    per_client: usize,
    measured: bool,
    samples: u64,
    capacity: usize,
    requests: u64,
    completed: u64,
    shed_connections: u64,
    rss: usize,
    peak_rss: usize,
}

fn numbers(state: &State) -> Numbers {
    let (rss, peak_rss) = rss();
    let requests = state.requests.load(Ordering::Relaxed);
    let completed = state.completed.load(Ordering::Relaxed);
    let shed_connections = state.shed_connections.load(Ordering::Relaxed);
    match &state.budget {
        Some(b) => {
            let s = b.stats();
            Numbers {
                budget: s.budget,
                in_use: s.in_use,
                peak_in_use: s.peak_in_use,
                clients: s.clients,
                peak_clients: s.peak_clients,
                admitted: s.admitted,
                shed: s.refused,
                waited: s.waited,
                waiting: s.waiting + state.waiting_connections.load(Ordering::Relaxed),
                per_client: s.per_client,
                measured: s.measured,
                samples: s.samples,
                capacity: s.capacity,
                requests,
                completed,
                shed_connections,
                rss,
                peak_rss,
            }
        }
        None => Numbers {
            budget: 0,
            in_use: 0,
            peak_in_use: 0,
            clients: 0,
            peak_clients: 0,
            admitted: requests,
            shed: 0,
            waited: 0,
            waiting: 0,
            per_client: 0,
            measured: false,
            samples: 0,
            capacity: 0,
            requests,
            completed,
            shed_connections,
            rss,
            peak_rss,
        },
    }
}

fn stats_json(state: &State) -> String {
    let n = numbers(state);
    let v = serde_json::json!({
        "budget": n.budget,
        "in_use": n.in_use,
        "peak_in_use": n.peak_in_use,
        "clients": n.clients,
        "peak_clients": n.peak_clients,
        "admitted": n.admitted,
        "shed": n.shed,
        "shed_connections": n.shed_connections,
        "waited": n.waited,
        "waiting": n.waiting,
        "per_client": n.per_client,
        "per_client_measured": n.measured,
        "samples": n.samples,
        "capacity": n.capacity,
        "requests": n.requests,
        "completed": n.completed,
        "rss": n.rss,
        "peak_rss": n.peak_rss,
        "summary": state.budget.as_ref().map(|b| b.to_string()),
    });
    format!("{v}\n")
}

fn metrics_text(state: &State) -> String {
    let n = numbers(state);
    let rows: [(&str, &str, &str, String); 17] = [
        (
            "frostheap_budget_bytes",
            "gauge",
            "Memory budget for clients, in bytes.",
            n.budget.to_string(),
        ),
        (
            "frostheap_in_use_bytes",
            "gauge",
            "Bytes held by admitted requests and open connections.",
            n.in_use.to_string(),
        ),
        (
            "frostheap_peak_in_use_bytes",
            "gauge",
            "Highest in-use bytes seen.",
            n.peak_in_use.to_string(),
        ),
        (
            "frostheap_clients",
            "gauge",
            "Requests admitted and not yet finished.",
            n.clients.to_string(),
        ),
        (
            "frostheap_peak_clients",
            "gauge",
            "Most requests admitted at once.",
            n.peak_clients.to_string(),
        ),
        (
            "frostheap_capacity_clients",
            "gauge",
            "How many clients fit: budget / per-client bytes.",
            n.capacity.to_string(),
        ),
        (
            "frostheap_per_client_bytes",
            "gauge",
            "Per-client cost in force (declared or measured estimate).",
            n.per_client.to_string(),
        ),
        (
            "frostheap_per_client_samples_total",
            "counter",
            "Usage measurements fed to the per-client estimate.",
            n.samples.to_string(),
        ),
        (
            "frostheap_admitted_total",
            "counter",
            "Requests admitted.",
            n.admitted.to_string(),
        ),
        (
            "frostheap_shed_total",
            "counter",
            "Requests and connections refused because memory was spent.",
            n.shed.to_string(),
        ),
        (
            "frostheap_shed_connections_total",
            "counter",
            "Connections answered 503 at accept.",
            n.shed_connections.to_string(),
        ),
        (
            "frostheap_waited_total",
            "counter",
            "Requests admitted after waiting for memory.",
            n.waited.to_string(),
        ),
        (
            "frostheap_waiting",
            "gauge",
            "Requests and connections waiting for memory now.",
            n.waiting.to_string(),
        ),
        (
            "frostheap_requests_total",
            "counter",
            "Requests routed to an endpoint behind the budget.",
            n.requests.to_string(),
        ),
        (
            "frostheap_completed_total",
            "counter",
            "Requests answered with a 2xx status.",
            n.completed.to_string(),
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident set size (VmRSS).",
            n.rss.to_string(),
        ),
        (
            "frostheap_peak_resident_memory_bytes",
            "gauge",
            "Peak resident set size (VmHWM).",
            n.peak_rss.to_string(),
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in rows {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use frostheap::budget::Thousands;

    #[test]
    fn words_are_counted() {
        let out = word_counts(b"a b a, c a b");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["distinct"], 3);
        assert_eq!(v["top"][0], serde_json::json!(["a", 3]));
    }

    #[test]
    fn json_bytes_grow_with_the_tree() {
        let small = serde_json::json!({"a": 1});
        let big = serde_json::json!({"a": 1, "b": [1, 2, 3], "c": "x".repeat(1000)});
        assert!(json_bytes(&big) > json_bytes(&small) + 1000);
    }

    #[test]
    fn thousands_in_the_capacity_line() {
        assert_eq!(Thousands(2048).to_string(), "2,048");
    }
}
