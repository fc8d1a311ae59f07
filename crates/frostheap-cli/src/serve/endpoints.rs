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
//! overhead plus its body times what the endpoint builds from it (2 for a
//! transform: body and output; 4 for a JSON echo: body, parsed tree,
//! output).

use std::collections::HashMap;
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

use super::clock::ConnClock;
use super::metrics;
use super::state::{State, CONNECTION_BYTES, MIN_CHARGE, REQUEST_BYTES};

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
    let keep_alive = req.version() == hyper::Version::HTTP_11
        && !req
            .headers()
            .get(CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let path = req.uri().path();
    let response = if matches!(*req.method(), Method::GET | Method::HEAD)
        && matches!(path, "/stats" | "/metrics" | "/ready" | "/live")
    {
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
                poll_fn(|cx| svc.poll_ready(cx)).await?;
                svc.call(req).await?
            }
            None => wrap(handle(&state, req).await),
        }
    };
    Ok(finish(response, keep_alive, &state, clock))
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
/// budget charges it: an unknown endpoint (404), or a body declared past
/// `--max-body` (413). Charged, they were shed with 503 when the body
/// declared was more than the budget could hold, which retrying can never
/// change. The body is not read: the connection closes after the answer
/// (a lingering close, so the client reads it).
fn refuse_before_budget(
    state: &State,
    req: &Request<Incoming>,
) -> Option<Response<Full<hyper::body::Bytes>>> {
    let declared = declared_length(req.headers());
    let mut r = if endpoint(req.method(), req.uri().path()).is_none() {
        text(StatusCode::NOT_FOUND, "not found: try GET /")
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

/// `/stats`, `/metrics`, and the two probes: `/live` answers 200 while the
/// process serves; `/ready` answers 503 once a shutdown has begun, so that
/// a balancer stops sending new clients before the listener closes.
fn monitoring(state: &State, path: &str) -> Response<Full<hyper::body::Bytes>> {
    match path {
        "/stats" => respond(
            StatusCode::OK,
            "application/json",
            metrics::stats_json(state).into_bytes(),
        ),
        "/metrics" => respond(
            StatusCode::OK,
            metrics::METRICS_CONTENT_TYPE,
            metrics::metrics_text(state).into_bytes(),
        ),
        "/ready" if state.ready.load(Ordering::Relaxed) => text(StatusCode::OK, "ready"),
        "/ready" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down: not taking new clients",
        ),
        _ => text(StatusCode::OK, "live"),
    }
}

fn wrap(response: Response<Full<hyper::body::Bytes>>) -> Response<RespBody> {
    response.map(|body| BudgetBody::Admitted { body, permit: None })
}

/// After a response, the connection waits for its next request at the
/// gate; a gate full of younger waiters closes it after this response.
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
        } else if !clock.wait_at_gate() {
            close(&mut response);
        }
    }
    response.map(|body| ConnBody {
        body,
        clock,
        started: false,
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
}

impl Drop for ConnBody {
    fn drop(&mut self) {
        if !self.started {
            self.clock.not_sent();
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
            self.clock.last_frame_taken();
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

/// The bytes a request declares from its head: its connection's buffers
/// and fixed overhead, plus what the endpoint builds from its body (the
/// charge is at least the per-client cost).
pub(super) fn request_cost(parts: &hyper::http::request::Parts) -> usize {
    let body = frostheap_budget::tower::content_length(parts);
    let factor = match parts.uri.path() {
        "/echo" => 4,
        "/transform" => 2,
        _ => 1,
    };
    MIN_CHARGE.saturating_add(body.saturating_mul(factor))
}

/// The endpoints as a tower service for the layer: `Endpoints(|req| ..)`
/// (see [`app`]). Generic over the closure so that its future is
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
    Transform(String),
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
        let hold_ms = query(&head.uri, "hold_ms")
            .or_else(|| query(&head.uri, "ms"))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            .min(MAX_HOLD_MS);
        let route = match endpoint(&head.method, head.uri.path()) {
            Some(Endpoint::Index) => Route::Index,
            Some(Endpoint::Hold) => Route::Hold,
            Some(Endpoint::Echo) => Route::Echo,
            Some(Endpoint::Transform) => {
                Route::Transform(query(&head.uri, "op").unwrap_or("upper").to_owned())
            }
            None => Route::NotFound,
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
            Ok(body) => match serde_json::from_slice::<serde_json::Value>(&body) {
                Err(e) => text(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}")),
                Ok(value) => {
                    let out = serde_json::to_vec(&value).expect("a Value serializes");
                    // Walking the document costs; only a measuring budget
                    // uses the figure.
                    if let Some(p) = call.permit.as_ref().filter(|p| p.measuring()) {
                        p.record_usage(json_bytes(&value) + out.capacity());
                    }
                    hold(call.hold_ms).await;
                    drop(value);
                    respond(StatusCode::OK, "application/json", out)
                }
            },
        },
        Route::Transform(op) => {
            match read_body(state, call.body, call.declared, call.clock.as_deref(), call.permit.as_ref()).await {
                Err(r) => r,
                Ok(body) => {
                    let out = match op.as_str() {
                        "upper" => body.to_ascii_uppercase(),
                        "reverse" => String::from_utf8_lossy(&body).chars().rev().collect::<String>().into_bytes(),
                        "words" => word_counts(&body),
                        other => return text(StatusCode::BAD_REQUEST, &format!("unknown op {other:?}: expected upper, reverse or words")),
                    };
                    if let Some(p) = &call.permit {
                        p.record_usage(out.capacity());
                    }
                    hold(call.hold_ms).await;
                    drop(body);
                    respond(StatusCode::OK, "application/octet-stream", out)
                }
            }
        }
        Route::NotFound => text(StatusCode::NOT_FOUND, "not found: try GET /"),
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

/// Reads the whole body (its `Content-Length` is `declared`) into one
/// buffer, refusing past `--max-body` (413) and growing the permit when a
/// body without `Content-Length` outgrows it (503 when the budget cannot).
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
    let mut buf = Vec::with_capacity(declared.unwrap_or(0));
    let mut charged = permit.map_or(0, |p| p.bytes());
    while let Some(frame) = body.frame().await {
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
            if buf.len() + data.len() > state.max_body {
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
            if let Some(p) = permit {
                let need = REQUEST_BYTES + buf.capacity();
                if need > charged {
                    if need > p.budget().total() {
                        // Retrying cannot help a body the whole budget
                        // cannot hold (one without `Content-Length`).
                        let mut r = text(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "request larger than the whole memory budget",
                        );
                        close(&mut r);
                        return Err(r);
                    }
                    if !p.try_grow(need - charged) {
                        let mut r = text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "over memory budget: retry later",
                        );
                        r.headers_mut()
                            .insert("retry-after", HeaderValue::from_static("1"));
                        close(&mut r);
                        return Err(r);
                    }
                    charged = need;
                }
            }
        }
    }
    if let Some(c) = clock {
        c.body_done();
    }
    if let Some(p) = permit {
        p.record_usage(buf.capacity());
    }
    Ok(buf)
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

#[cfg(test)]
mod tests {
    use super::*;
    use frostheap_budget::Thousands;

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
