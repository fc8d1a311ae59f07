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
//! read them while the server sheds. The endpoints are in `endpoints.rs`,
//! the numbers they report in `metrics.rs`. `--no-budget` serves the same
//! endpoints with no layer and no connection charge: plain hyper, the
//! baseline for `frostheap-load`.

use std::convert::Infallible;
use std::future::poll_fn;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use frostheap::{parse_size, Bytes};
use frostheap_budget::gate::ConnectionGate;
use frostheap_budget::tower::{BudgetBody, MemoryLimit, MemoryLimitLayer, Overload};
use frostheap_budget::{Budget, PerClient};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_layer::Layer;
use tower_service::Service;

mod endpoints;
mod metrics;

use endpoints::{handle, request_cost, respond, App};

/// Bytes reserved per open connection: hyper's read buffer (capped at
/// 16 KiB here), its write buffer and headers, the connection task and the
/// socket wrappers. An estimate, not yet measured on its own: the overload
/// runs of `frostheap-load` bound it from above (peak RSS stays within
/// budget + 10 MiB with 2,560 clients).
pub const CONNECTION_BYTES: usize = 24 << 10;

/// Fixed bytes per request on top of its body: the parsed head (`HeaderMap`,
/// URI), the request's future and its response head.
pub const REQUEST_BYTES: usize = 4 << 10;

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
    /// At most `budget.clients()` connections are open (with a budget).
    gate: Option<ConnectionGate>,
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
        gate: budget.clone().map(ConnectionGate::new),
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
            let gate = router.state.gate.as_ref().expect("a budget has a gate");
            let slot = match overload {
                Overload::Shed => gate.try_take(),
                Overload::Wait => Some(gate.take().await),
            };
            let Some(slot) = slot else {
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
                metrics::stats_json(&self.state)
            } else {
                metrics::metrics_text(&self.state)
            };
            let kind = if path == "/stats" {
                "application/json"
            } else {
                metrics::METRICS_CONTENT_TYPE
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
