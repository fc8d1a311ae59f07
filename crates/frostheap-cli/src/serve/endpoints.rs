//! The endpoints of `frostheap serve`: what a request may ask for and what
//! it costs.
//!
//! `POST /echo` parses a JSON body and writes it back; `POST /transform`
//! changes a body (`op=upper|reverse|words`); `GET /hold?ms=N` sleeps;
//! `hold_ms=N` holds any request's memory that long. Each handler records
//! what it really held ([`Permit::record_usage`]: request overhead, body
//! buffer, parsed tree, output), which feeds the measured per-client cost.
//!
//! A request declares its cost from its head ([`request_cost`]): fixed
//! overhead, its body's buffer and what the endpoint builds from it in the
//! common case (a transform: its output; a JSON echo: its parsed tree and
//! output), as the allocator's blocks. That is the first charge, not a
//! bound: the handlers
//! grow it before they build more (`charged.rs`), and answer 503 (or 413)
//! when the budget cannot. Nor is it held for a body that is slow to
//! come: one still arriving `--body-grace` (1 s) after its head gives its
//! client place back, keeps what it has sent in the slow-body pool
//! (`slow.rs`), growing with what comes, and takes a place again once
//! whole ([`read_body`]). A query the
//! endpoint cannot take (`ms` or `hold_ms` not 0 to 10,000, an unknown
//! `op`) is refused from the head with 400 naming the parameter.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use frostheap::Bytes;
use frostheap_budget::tower::BudgetBody;
use frostheap_budget::Permit;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use tower_service::Service;

use super::charged::{self, Charge, ParseError, Refused};
use super::clock::ConnClock;
use super::metrics;
use super::state::{State, CONNECTION_BYTES, REQUEST_BYTES};

type RespBody = BudgetBody<Full<hyper::body::Bytes>>;

/// Routes one request: monitoring endpoints answer directly (they must
/// answer while the server sheds, and take no client's place), the rest go
/// through the memory layer when there is a budget.
pub(super) async fn route<S: Limited>(
    mut req: Request<Incoming>,
    state: Arc<State>,
    limited: Option<S>,
    clock: Arc<ConnClock>,
) -> Result<Response<ConnBody>, Infallible> {
    clock.request(!req.body().is_end_stream());
    let keep_alive = keeps_alive(&req);
    let path = req.uri().path();
    let response = if matches!(*req.method(), Method::GET | Method::HEAD) && is_monitoring(path) {
        // Served at once, uncharged: it leaves the gate like an admitted one.
        clock.admitted();
        wrap(monitoring(&state, path))
    } else if let Some(refusal) = refuse_before_budget(&state, &req) {
        // Nothing of it is read or built: no client's place, no charge.
        state.requests.fetch_add(1, Ordering::Relaxed);
        clock.admitted();
        wrap(refusal)
    } else {
        state.requests.fetch_add(1, Ordering::Relaxed);
        req.extensions_mut().insert(clock.clone());
        match limited {
            Some(mut svc) => {
                let call = async move {
                    poll_fn(|cx| svc.poll_ready(cx)).await?;
                    svc.call(req).await
                };
                let response = if state.waits {
                    match unless_client_leaves(call, &clock, &state).await {
                        Some(r) => r?,
                        None => {
                            state.abandoned.fetch_add(1, Ordering::Relaxed);
                            wrap(client_left())
                        }
                    }
                } else {
                    call.await?
                };
                // Shed by the layer for want of a client place (its 503
                // holds no permit): the bodies still arriving have their
                // grace cut short (`read_body`).
                if response.status() == StatusCode::SERVICE_UNAVAILABLE
                    && response.body().permit().is_none()
                {
                    state.pressure.notify_waiters();
                }
                response
            }
            None => wrap(handle(&state, req).await),
        }
    };
    Ok(finish(response, keep_alive, &state, clock))
}

/// How often a request waiting for memory checks that its client is
/// still there.
const LEFT_CHECK: Duration = Duration::from_millis(100);

/// Runs `call`, a request through the layer in `--overload wait`; `None`
/// if its client leaves while it waits for memory (its place in the
/// queue goes with the future). Checked every [`LEFT_CHECK`] while it
/// waits, and once more as its turn comes (`handle`); a request whose
/// handler has begun runs to its end. Until 2026-12-06 a queued request
/// whose client had closed was run when its turn came, on memory that
/// clients still there were waiting for.
async fn unless_client_leaves<F: Future>(
    call: F,
    clock: &ConnClock,
    state: &State,
) -> Option<F::Output> {
    let mut call = std::pin::pin!(call);
    // Most requests do not wait: no timer for them.
    if let Poll::Ready(r) = poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await {
        return Some(r);
    }
    if !clock.running() {
        // Waiting for a client place: the bodies still arriving have
        // their grace cut short (`read_body`).
        state.pressure.notify_waiters();
    }
    let mut check = tokio::time::interval(LEFT_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if clock.running() {
            return Some(call.await);
        }
        tokio::select! {
            biased;
            r = call.as_mut() => return Some(r),
            _ = check.tick() => {
                if !clock.running() && clock.client_left() {
                    return None;
                }
            }
        }
    }
}

/// The answer to a request dropped because its client left while it
/// waited (read only by a client that shut its side and still reads).
fn client_left() -> Response<Full<hyper::body::Bytes>> {
    let mut r = text(
        StatusCode::SERVICE_UNAVAILABLE,
        "request dropped: the client closed its side of the connection while the request waited for memory",
    );
    r.headers_mut()
        .insert("retry-after", HeaderValue::from_static("1"));
    close(&mut r);
    r
}

/// Whether hyper keeps the connection open after answering `req` (its
/// own rule): HTTP/1.1 unless `Connection` names `close`, HTTP/1.0 only
/// when it names `keep-alive`. Until 2026-12-07 anything but HTTP/1.1
/// counted as closing, so its gate place went back with the response,
/// while hyper kept HTTP/1.0 `keep-alive` connections open: 5,000 idle
/// ones were held past a gate of 64 (68.8 MiB resident on a 16 MiB
/// budget), and with 1,024 descriptors fresh clients were locked out.
fn keeps_alive<B>(req: &Request<B>) -> bool {
    let names = |token: &str| {
        req.headers().get_all(CONNECTION).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    };
    match req.version() {
        hyper::Version::HTTP_11 => !names("close"),
        hyper::Version::HTTP_10 => names("keep-alive") && !names("close"),
        _ => false,
    }
}

/// The endpoint behind the budget that `method` and `path` name, if any:
/// the one table of routes ([`Call::new`] takes the transform's `op` from
/// the query). `HEAD` is answered as `GET` (hyper sends the head alone).
fn endpoint(method: &Method, path: &str) -> Option<Endpoint> {
    Some(match (method, path) {
        (&Method::GET | &Method::HEAD, "/") => Endpoint::Index,
        (&Method::GET | &Method::HEAD, "/hold") => Endpoint::Hold,
        (&Method::POST, "/echo") => Endpoint::Echo,
        (&Method::POST, "/transform") => Endpoint::Transform,
        _ => return None,
    })
}

/// The endpoints behind the budget ([`endpoint`]).
#[derive(Clone, Copy)]
enum Endpoint {
    Index,
    Hold,
    Echo,
    Transform,
}

/// A request's `Content-Length`, when it has a valid one.
fn declared_length(headers: &hyper::HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// The answer to a request that is refused from its head alone, before the
/// budget charges it: an unknown endpoint (404), a query it cannot take
/// (400), or a body declared past `--max-body` (413). Charged, they were
/// shed with 503 when the body declared was more than the budget could
/// hold, which retrying can never change. The body is not read: the
/// connection closes after the answer (a lingering close, so the client
/// reads it).
fn refuse_before_budget(
    state: &State,
    req: &Request<Incoming>,
) -> Option<Response<Full<hyper::body::Bytes>>> {
    let declared = declared_length(req.headers());
    let Some(endpoint) = endpoint(req.method(), req.uri().path()) else {
        let mut r = text(StatusCode::NOT_FOUND, "not found: try GET /");
        if !req.body().is_end_stream() {
            close(&mut r);
        }
        return Some(r);
    };
    let mut r = if let Err(e) = Query::parse(req.uri(), endpoint) {
        text(StatusCode::BAD_REQUEST, &e)
    } else if declared.is_some_and(|n| n > state.max_body as u64) {
        body_too_large(state.max_body)
    } else {
        return None;
    };
    if !req.body().is_end_stream() {
        close(&mut r);
    }
    Some(r)
}

/// 413 for a body past `--max-body`.
fn body_too_large(max_body: usize) -> Response<Full<hyper::body::Bytes>> {
    text(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("body larger than --max-body ({})", Bytes(max_body)),
    )
}

/// The answer to a request whose handler could not build within the
/// budget (`charged.rs`): 503 when the memory is spent now, 413 when the
/// request needs more than the whole budget (no retry could fit).
fn refused(r: Refused) -> Response<Full<hyper::body::Bytes>> {
    let mut r = match r {
        Refused::WholeBudget => text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request larger than the whole memory budget",
        ),
        Refused::OverBudget => {
            let mut r = text(
                StatusCode::SERVICE_UNAVAILABLE,
                "over memory budget: retry later",
            );
            r.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
            r
        }
    };
    close(&mut r);
    r
}

/// `/stats`, `/metrics`, and the two probes: `/live` answers 200 while the
/// process serves; `/ready` answers 503 once a shutdown has begun, so that
/// a balancer stops sending new clients before the listener closes.
fn monitoring(state: &State, path: &str) -> Response<Full<hyper::body::Bytes>> {
    let (status, kind, body) = monitoring_answer(state, path);
    respond(status, kind, body)
}

/// Whether `path` is a monitoring endpoint's (for `GET` and `HEAD`).
pub(super) fn is_monitoring(path: &str) -> bool {
    matches!(path, "/stats" | "/metrics" | "/ready" | "/live")
}

/// The answer of the monitoring endpoint `path`: status, content type and
/// body.
pub(super) fn monitoring_answer(state: &State, path: &str) -> (StatusCode, &'static str, Vec<u8>) {
    let plain = |status, msg: &str| (status, "text/plain", format!("{msg}\n").into_bytes());
    match path {
        "/stats" => (
            StatusCode::OK,
            "application/json",
            metrics::stats_json(state).into_bytes(),
        ),
        "/metrics" => (
            StatusCode::OK,
            metrics::METRICS_CONTENT_TYPE,
            metrics::metrics_text(state).into_bytes(),
        ),
        "/ready" if state.ready.load(Ordering::Relaxed) => plain(StatusCode::OK, "ready"),
        "/ready" => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down: not taking new clients",
        ),
        _ => plain(StatusCode::OK, "live"),
    }
}

fn wrap(response: Response<Full<hyper::body::Bytes>>) -> Response<RespBody> {
    response.map(|body| BudgetBody::Admitted { body, permit: None })
}

/// After a response, the connection waits for its next request at the
/// gate; a gate full of younger waiters closes it after this response.
/// Every response after which the connection does not wait at the gate
/// says `Connection: close`, which hyper obeys: a connection whose place
/// went back is never kept open, whatever the client asked for.
fn finish(
    mut response: Response<RespBody>,
    keep_alive: bool,
    state: &State,
    clock: Arc<ConnClock>,
) -> Response<ConnBody> {
    if state.gate.is_some() {
        // Only error answers (a shed request, an unread body) close.
        let closing = !keep_alive
            || (!response.status().is_success()
                && response
                    .headers()
                    .get(CONNECTION)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close")));
        if closing {
            // The place held for this request (one not admitted) goes back.
            clock.leave_gate();
            close(&mut response);
        } else if !clock.wait_at_gate() {
            close(&mut response);
        }
    }
    let answered = clock.take_handler_ok();
    response.map(|body| ConnBody {
        body,
        clock,
        started: false,
        answered,
    })
}

/// Marks a response as the connection's last.
fn close<B>(response: &mut Response<B>) {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
}

/// A response body that tells the connection's clock when hyper takes
/// its first frame (the response is being sent: the clock holds its
/// permit from then on) and its last (sent once hyper's next flush
/// completes), or, when hyper drops it unwritten, that the connection
/// waits for its next request.
pub(super) struct ConnBody {
    body: RespBody,
    clock: Arc<ConnClock>,
    started: bool,
    /// A handler's 2xx answer whose end hyper has not taken yet.
    answered: bool,
}

impl ConnBody {
    /// hyper took the end of the answer.
    fn ended(&mut self) {
        self.clock.last_frame_taken();
        if std::mem::take(&mut self.answered) {
            self.clock.answered();
        }
    }
}

impl Drop for ConnBody {
    fn drop(&mut self) {
        if !self.started {
            // A head alone (`HEAD`, an empty body): written with hyper's
            // next flush, if any.
            if std::mem::take(&mut self.answered) {
                self.clock.answered();
            }
            self.clock.not_sent();
        } else if self.answered {
            self.clock.cut();
        }
    }
}

impl Body for ConnBody {
    type Data = hyper::body::Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Infallible>>> {
        if !self.started {
            self.started = true;
            let permit = Pin::new(&mut self.body).take_permit();
            self.clock.sending(permit);
        }
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        // hyper asks for no frame past one after which the body says it
        // has ended.
        if matches!(frame, Poll::Ready(None)) || self.body.is_end_stream() {
            self.ended();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Longest `/hold` or `hold_ms` accepted.
const MAX_HOLD_MS: u64 = 10_000;

/// What a request's query asks for: how long to hold (`hold_ms`, or `ms`),
/// and for a transform its `op`.
struct Query {
    hold_ms: u64,
    op: Op,
}

/// A transform's operation (`op=`; `upper` when there is none).
#[derive(Clone, Copy)]
enum Op {
    Upper,
    Reverse,
    Words,
}

impl Query {
    /// The query of `uri`, a request for `endpoint`; an error naming the
    /// parameter and what it takes. Nothing is changed to fit: `ms` past
    /// the range of u64 was read as 0 (no hold), and one past
    /// [`MAX_HOLD_MS`] as that.
    fn parse(uri: &hyper::Uri, endpoint: Endpoint) -> Result<Query, String> {
        let hold = query(uri, "hold_ms")
            .map(|v| ("hold_ms", v))
            .or_else(|| query(uri, "ms").map(|v| ("ms", v)));
        let hold_ms = match hold {
            None => 0,
            Some((name, v)) => match v.parse::<u64>() {
                Ok(ms) if ms <= MAX_HOLD_MS => ms,
                _ => {
                    return Err(format!(
                        "invalid {name}={v:?}: expected milliseconds, 0 to {MAX_HOLD_MS}"
                    ))
                }
            },
        };
        let op = match (endpoint, query(uri, "op")) {
            (Endpoint::Transform, Some("reverse")) => Op::Reverse,
            (Endpoint::Transform, Some("words")) => Op::Words,
            (Endpoint::Transform, Some(other)) if other != "upper" => {
                return Err(format!(
                    "unknown op={other:?}: expected upper, reverse or words"
                ))
            }
            _ => Op::Upper,
        };
        Ok(Query { hold_ms, op })
    }
}

/// The bytes a request declares from its head: its connection's buffers
/// and fixed overhead, its body's buffer, and what the endpoint builds
/// from the body in the common case, each buffer as the allocator's block
/// (`charged::block`): for a transform, its output (`op=words`: its list
/// of words); for a JSON echo, its parsed tree and output. So an admitted
/// request of the common kind never grows its charge (a 64 KiB transform
/// grew from 156 to 188 KiB until 2026-12-06, and got 503 when the
/// budget could not); the charge is at least the per-client cost. Held while the
/// body arrives only for `--body-grace`: a body still arriving after it
/// keeps what it has sent in the slow-body pool, and this charge again
/// once whole (`read_body`).
pub(super) fn request_cost(parts: &hyper::http::request::Parts) -> usize {
    let body = frostheap_budget::tower::content_length(parts);
    let builds = match parts.uri.path() {
        "/echo" => charged::echo_builds(body),
        "/transform" => charged::transform_builds(body, query(&parts.uri, "op") == Some("words")),
        _ => 0,
    };
    charged::held(body).saturating_add(builds)
}

/// The endpoints as a tower service for the layer: `Endpoints(|req| ..)`
/// (see where `serve` in mod.rs builds it). Generic over the closure so that its future is
/// `handle`'s own, not boxed: an async fn's future has no name to put in
/// `Service::Future`, but a type parameter can stand for it. (A boxed
/// future cost an allocation and a copy of the whole handler state into
/// it per request: about 600 instructions, measured with callgrind.)
#[derive(Clone)]
pub(super) struct Endpoints<F>(pub(super) F);

impl<F, Fut> Service<Request<Incoming>> for Endpoints<F>
where
    F: FnMut(Request<Incoming>) -> Fut,
    Fut: Future<Output = Result<Response<Full<hyper::body::Bytes>>, Infallible>>,
{
    type Response = Response<Full<hyper::body::Bytes>>;
    type Error = Infallible;
    type Future = Fut;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Fut {
        (self.0)(req)
    }
}

/// One request to the endpoints of `state`: what [`Endpoints`] calls,
/// `Endpoints(move |req| serve_request(state.clone(), req))`.
pub(super) async fn serve_request(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<hyper::body::Bytes>>, Infallible> {
    Ok(handle(&state, req).await)
}

/// The service `route` hands requests to when there is a budget: the
/// memory layer in front of [`Endpoints`].
pub(super) trait Limited:
    Service<Request<Incoming>, Response = Response<RespBody>, Error = Infallible, Future: Send>
    + Clone
    + Send
    + Unpin
    + 'static
{
}

impl<S> Limited for S where
    S: Service<Request<Incoming>, Response = Response<RespBody>, Error = Infallible, Future: Send>
        + Clone
        + Send
        + Unpin
        + 'static
{
}

pub(super) fn respond(
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

pub(super) fn text(status: StatusCode, msg: &str) -> Response<Full<hyper::body::Bytes>> {
    respond(status, "text/plain", format!("{msg}\n").into_bytes())
}

fn query<'a>(uri: &'a hyper::Uri, key: &str) -> Option<&'a str> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// What a request asks for, read from its head before anything is
/// awaited: the head (250 bytes) then stays out of the handler's future,
/// which is moved several times on its way to hyper.
enum Route {
    Index,
    Hold,
    Echo,
    Transform(Op),
    /// A query refused (`route` answers it from the head, before this).
    BadQuery(String),
    NotFound,
}

/// A request's body and what the handler needs from its head.
struct Call {
    route: Route,
    body: Incoming,
    /// Its `Content-Length`.
    declared: Option<usize>,
    hold_ms: u64,
    /// The layer's permit, when the budget admitted the request.
    permit: Option<Permit>,
    clock: Option<Arc<ConnClock>>,
}

impl Call {
    fn new(req: Request<Incoming>) -> Call {
        let (mut head, body) = req.into_parts();
        // Taken, not cloned: the response body holds the layer's own
        // handle.
        let permit = head.extensions.remove::<Permit>();
        let clock = head.extensions.remove::<Arc<ConnClock>>();
        let endpoint = endpoint(&head.method, head.uri.path());
        let query = endpoint.map(|e| Query::parse(&head.uri, e));
        let (route, hold_ms) = match (endpoint, query) {
            (Some(_), Some(Err(e))) => (Route::BadQuery(e), 0),
            (Some(e), Some(Ok(q))) => (
                match e {
                    Endpoint::Index => Route::Index,
                    Endpoint::Hold => Route::Hold,
                    Endpoint::Echo => Route::Echo,
                    Endpoint::Transform => Route::Transform(q.op),
                },
                q.hold_ms,
            ),
            _ => (Route::NotFound, 0),
        };
        let declared = declared_length(&head.headers).and_then(|n| usize::try_from(n).ok());
        Call {
            route,
            body,
            declared,
            hold_ms,
            permit,
            clock,
        }
    }
}

pub(super) async fn handle(
    state: &State,
    req: Request<Incoming>,
) -> Response<Full<hyper::body::Bytes>> {
    let call = Call::new(req);
    if let (Some(p), Some(clock)) = (&call.permit, &call.clock) {
        // A request that waited for memory: its client may have left
        // since the last check (`unless_client_leaves`).
        if p.waited() && state.waits && clock.client_left() {
            state.abandoned.fetch_add(1, Ordering::Relaxed);
            return client_left();
        }
        clock.run();
        clock.admitted();
        // Its share of the connection counts: a client is both.
        p.record_usage(CONNECTION_BYTES + REQUEST_BYTES);
    }
    let response = match call.route {
        Route::Index => text(StatusCode::OK, "frostheap serve: POST /echo, POST /transform?op=upper|reverse|words, GET /hold?ms=N, GET /stats, GET /metrics, GET /ready, GET /live"),
        Route::Hold => {
            tokio::time::sleep(Duration::from_millis(call.hold_ms)).await;
            text(StatusCode::OK, "held")
        }
        Route::Echo => match read_body(state, call.body, call.declared, call.clock.as_deref(), call.permit.as_ref()).await {
            Err(r) => r,
            Ok(body) => {
                let charge = Charge::new(call.permit.as_ref());
                let held = charged::held(body.capacity());
                match charged::parse_json(&body, held, &charge) {
                    Err(ParseError::Invalid(e)) => text(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}")),
                    Err(ParseError::Refused(r)) => refused(r),
                    Ok(parsed) => match charged::to_json(&parsed.value, held + parsed.bytes, &charge) {
                        Err(r) => refused(r),
                        Ok(out) => {
                            if let Some(p) = &call.permit {
                                p.record_usage(parsed.bytes + out.capacity());
                            }
                            hold(call.hold_ms).await;
                            drop(parsed);
                            respond(StatusCode::OK, "application/json", out)
                        }
                    },
                }
            }
        },
        Route::Transform(op) => {
            match read_body(state, call.body, call.declared, call.clock.as_deref(), call.permit.as_ref()).await {
                Err(r) => r,
                Ok(body) => {
                    let charge = Charge::new(call.permit.as_ref());
                    let held = charged::held(body.capacity());
                    let out = match op {
                        Op::Upper => charge.cover(held + charged::block(body.len())).map(|()| body.to_ascii_uppercase()),
                        Op::Reverse => charged::reverse(&body, &charge, held),
                        Op::Words => charged::word_counts(&body, &charge, held),
                    };
                    match out {
                        Err(r) => refused(r),
                        Ok(out) => {
                            if let Some(p) = &call.permit {
                                p.record_usage(out.capacity());
                            }
                            hold(call.hold_ms).await;
                            drop(body);
                            respond(StatusCode::OK, "application/octet-stream", out)
                        }
                    }
                }
            }
        }
        Route::BadQuery(e) => text(StatusCode::BAD_REQUEST, &e),
        Route::NotFound => text(StatusCode::NOT_FOUND, "not found: try GET /"),
    };
    if let (true, Some(clock)) = (response.status().is_success(), &call.clock) {
        // Counted as completed once written whole (`ConnBody`, `clock.rs`),
        // as undelivered if the connection ends first. (Counted as the
        // handler returned until 2026-12-06: an answer whose client had
        // gone counted as completed.)
        clock.handler_ok();
    }
    response
}

async fn hold(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// The first step of a body's buffer (a body declared shorter gets its
/// exact length): a body of a few KiB, most of them, is read with one
/// allocation.
const BODY_STEP: usize = 16 << 10;

/// While the server refuses (or queues) requests for want of a client
/// place, the bodies still arriving hold theirs for this part of
/// `--body-grace` at most: 100 ms by default. A client on a LAN sends a
/// small body within a millisecond of its head; one sending 1 MB at 100
/// Mbit/s takes 80 ms.
const PRESSED_GRACE_DIVISOR: u32 = 10;

/// Reads the whole body (its `Content-Length` is `declared`) into one
/// buffer, refusing past `--max-body` (413). The buffer grows as the body
/// arrives: doubling from [`BODY_STEP`] up to the declared length.
///
/// The charge: a body that arrives within `--body-grace` (1 s: far above
/// what a prompt client needs, 1 MB at 10 Mbit/s taking 0.8 s) holds what
/// its head declared, as it was admitted (so under load a request is shed
/// from its head, before its body is sent, rather than half way through
/// it). Past the grace a body still arriving gives its client place back
/// and keeps only what it holds (its least charge and the buffer so far)
/// in the slow-body pool (`slow.rs`), growing there before each new
/// buffer (counting the old one it is copied from) is allocated: 503 when
/// the pool cannot, in `--overload wait` too (waiting for more while
/// holding part of the pool could deadlock requests that each hold some).
/// Once whole, it takes its place back before the handler runs: the bytes
/// it was admitted with, or its buffer's if more ([`take_place_back`]).
/// While requests are refused or queued for want of a client place, the
/// grace is a tenth as long ([`PRESSED_GRACE_DIVISOR`], `slow.rs`).
///
/// Until 2026-12-06 the declared charge was held until the body ended:
/// five connections trickling bodies at 3 KB/s in all held a 16 MiB
/// budget, and every other client got 503 (a user's trial). Then, until
/// the pool, a body past the grace kept its client place (the per-client
/// cost) until it ended, up to `--body-max-time`: 16 senders trickling a
/// byte every 100 ms into 8 places held all of them. A body slower than
/// the body timeout and its minimum rate is 408 (`clock.rs`).
async fn read_body(
    state: &State,
    mut body: Incoming,
    declared: Option<usize>,
    clock: Option<&ConnClock>,
    permit: Option<&Permit>,
) -> Result<Vec<u8>, Response<Full<hyper::body::Bytes>>> {
    // Answers given before the body's end close the connection: the rest
    // of the body is not read.
    let too_large = || {
        let mut r = body_too_large(state.max_body);
        close(&mut r);
        r
    };
    if declared.is_some_and(|n| n > state.max_body) {
        return Err(too_large());
    }
    let mut buf = Vec::new();
    let charge = Charge::new(permit);
    // Armed only if a frame is not there at once (`biased`): a body that
    // came with its head costs no timer.
    let grace = tokio::time::sleep(state.timeouts.body_grace);
    tokio::pin!(grace);
    // A request refused or queued for want of a client place cuts the
    // grace to a tenth ([`PRESSED_GRACE_DIVISOR`]; the notification is
    // registered as it is made, polled only if the body is not there at
    // once).
    let pressed = grace.deadline() - state.timeouts.body_grace
        + state.timeouts.body_grace / PRESSED_GRACE_DIVISOR;
    let pressure = state.pressure.notified();
    tokio::pin!(pressure);
    let mut graced = permit.is_none();
    // Once the body is slow: its place in the pool, and the bytes its
    // permit held when it gave its client place back.
    let mut slow = None;
    loop {
        let frame = if graced {
            body.frame().await
        } else {
            tokio::select! {
                biased;
                frame = body.frame() => frame,
                () = &mut grace => {
                    graced = true;
                    if let (Some(p), Some(pool)) = (permit, &state.slow) {
                        match pool.enter(charged::held(buf.capacity())) {
                            Some(place) => slow = Some((place, p.suspend())),
                            None => return Err(too_many_slow_bodies()),
                        }
                    }
                    continue;
                }
                () = &mut pressure => {
                    pressure.set(state.pressure.notified());
                    if pressed < grace.deadline() {
                        grace.as_mut().reset(pressed);
                    }
                    continue;
                }
            }
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| {
            let mut r = if timed_out(&e) {
                text(StatusCode::REQUEST_TIMEOUT, "request body too slow")
            } else {
                text(StatusCode::BAD_REQUEST, &format!("reading the body: {e}"))
            };
            close(&mut r);
            r
        })?;
        if let Ok(data) = frame.into_data() {
            let need = buf.len() + data.len();
            if need > state.max_body {
                return Err(too_large());
            }
            if need > buf.capacity() {
                let cap = body_step(buf.capacity(), need, declared, state.max_body);
                // Both buffers exist while the old one is copied.
                let both = charged::held(cap) + charged::block(buf.capacity());
                match &slow {
                    Some((place, _)) if !place.cover(both) => return Err(too_many_slow_bodies()),
                    Some(_) => {}
                    None => charge.cover(both).map_err(refused)?,
                }
                buf.reserve_exact(cap - buf.len());
            }
            buf.extend_from_slice(&data);
        }
    }
    if let Some(c) = clock {
        c.body_done();
    }
    if let (Some((place, admitted)), Some(p)) = (slow, permit) {
        let bytes = admitted.max(charged::held(buf.capacity()));
        take_place_back(state, p, bytes, clock).await?;
        // The body moves from the pool to the place.
        drop(place);
    }
    if let Some(p) = permit {
        p.record_usage(buf.capacity());
    }
    Ok(buf)
}

/// A request whose body arrived slowly, now whole, takes a client place
/// again: `bytes` on its permit, at once or 503 in `--overload shed`, in
/// the queue in `--overload wait` (holding no place meanwhile: its body
/// stays charged to the slow-body pool) unless its client leaves.
async fn take_place_back(
    state: &State,
    permit: &Permit,
    bytes: usize,
    clock: Option<&ConnClock>,
) -> Result<(), Response<Full<hyper::body::Bytes>>> {
    if !state.waits {
        return if permit.try_resume(bytes) {
            Ok(())
        } else {
            Err(refused(Refused::OverBudget))
        };
    }
    let resume = permit.resume(bytes);
    tokio::pin!(resume);
    let mut check = tokio::time::interval(LEFT_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            r = &mut resume => {
                return r.map_err(|_| refused(Refused::WholeBudget));
            }
            _ = check.tick() => {
                if clock.is_some_and(ConnClock::client_left) {
                    state.abandoned.fetch_add(1, Ordering::Relaxed);
                    return Err(client_left());
                }
            }
        }
    }
}

/// 503 for a body the slow-body pool cannot hold (`slow.rs`); the
/// connection closes after it, the rest of the body unread.
fn too_many_slow_bodies() -> Response<Full<hyper::body::Bytes>> {
    let mut r = text(
        StatusCode::SERVICE_UNAVAILABLE,
        "server busy: too many request bodies arriving slowly (--slow-memory), retry later",
    );
    r.headers_mut()
        .insert("retry-after", HeaderValue::from_static("1"));
    close(&mut r);
    r
}

/// The next capacity of a body's buffer that holds `capacity` bytes and
/// needs `need`: twice as much (at least [`BODY_STEP`]), but no more than
/// the declared length, when that holds `need`, or `max_body`.
fn body_step(capacity: usize, need: usize, declared: Option<usize>, max_body: usize) -> usize {
    let end = declared.filter(|&d| d >= need).unwrap_or(max_body);
    capacity.saturating_mul(2).max(BODY_STEP).min(end).max(need)
}

/// Whether a body error is the body deadline (`TimedIo`'s `TimedOut`).
fn timed_out(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        source = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use frostheap_budget::Thousands;

    #[test]
    fn thousands_in_the_capacity_line() {
        assert_eq!(Thousands(2048).to_string(), "2,048");
    }

    #[test]
    fn a_body_buffer_doubles_from_a_step_up_to_its_declared_length() {
        let max = 1 << 20;
        // A small body: its exact length, at once.
        assert_eq!(body_step(0, 10, Some(300), max), 300);
        // A large one: a step, then doubling, then the declared length.
        assert_eq!(body_step(0, 10, Some(100_000), max), BODY_STEP);
        assert_eq!(
            body_step(BODY_STEP, BODY_STEP + 1, Some(100_000), max),
            2 * BODY_STEP
        );
        assert_eq!(
            body_step(64 << 10, (64 << 10) + 1, Some(100_000), max),
            100_000
        );
        // No length declared: doubling up to --max-body.
        assert_eq!(body_step(0, 10, None, max), BODY_STEP);
        assert_eq!(body_step(max / 2 + 1, max / 2 + 2, None, max), max);
        // A frame past what is doubled to is taken whole.
        assert_eq!(
            body_step(BODY_STEP, 5 * BODY_STEP, None, max),
            5 * BODY_STEP
        );
    }

    #[test]
    fn keep_alive_is_hyper_s_rule() {
        let req = |version, connection: Option<&str>| {
            let mut b = Request::builder().version(version);
            if let Some(c) = connection {
                b = b.header(CONNECTION, c);
            }
            b.body(()).unwrap()
        };
        use hyper::Version;
        assert!(keeps_alive(&req(Version::HTTP_11, None)));
        assert!(!keeps_alive(&req(Version::HTTP_11, Some("foo, Close"))));
        assert!(!keeps_alive(&req(Version::HTTP_10, None)));
        assert!(keeps_alive(&req(Version::HTTP_10, Some("Keep-Alive"))));
        assert!(!keeps_alive(&req(
            Version::HTTP_10,
            Some("keep-alive, close")
        )));
    }
}
