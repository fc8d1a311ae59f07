//! A tower middleware that admits HTTP requests by memory (feature `tower`).
//!
//! Every request is charged `max(per-client cost − prepaid, cost(request))`
//! bytes from a [`Budget`], where `cost` defaults to the request's
//! `Content-Length` and can be replaced ([`MemoryLimitLayer::cost`]), and
//! `prepaid` is what each client already holds elsewhere (0 unless set with
//! [`MemoryLimitLayer::prepaid`]). The bytes are held
//! until the response body has been sent (the [`Permit`] travels inside
//! [`BudgetBody`]), so a slow reader keeps paying for its response. The
//! handler finds the permit in the request's extensions, to record what it
//! really used ([`Permit::record_usage`], which feeds the per-client
//! estimate) or to grow it ([`Permit::try_grow`]).
//!
//! When the bytes do not fit, [`Overload`] decides:
//!
//! - [`Overload::Shed`]: answer `503 Service Unavailable` with
//!   `Retry-After: 1` and `Connection: close` at once, before the request
//!   body is read. (The server closes the connection after the answer; to
//!   let the client read it rather than see a reset, it should read and
//!   drop what the client still sends for a moment before closing — a
//!   lingering close, as nginx does. `frostheap serve` does.)
//! - [`Overload::Wait`]: backpressure. `poll_ready` waits for the
//!   per-client bytes (FIFO, see [`Budget::acquire`]); a request declaring
//!   more than that tops up without waiting if it can, and otherwise gives
//!   its bytes back and waits for the whole amount in one piece (never
//!   holding some bytes while waiting for more, so requests cannot
//!   deadlock each other). At most [`MemoryLimitLayer::max_waiting`]
//!   requests wait at once; past that, a request is shed as above (a
//!   waiting request holds its connection's buffers, which no budget
//!   counts, so the queue must be bounded too).
//!
//! In either mode a request whose cost is more than the whole budget gets
//! `413 Payload Too Large` at once (no `Retry-After`: no retry can admit
//! it), counted as a refusal.
//!
//! ```
//! use frostheap_budget::tower::{MemoryLimitLayer, Overload};
//! use frostheap_budget::Budget;
//! use tower_layer::Layer;
//! # #[derive(Clone)] struct App;
//! let budget = Budget::new(256 << 20);
//! let svc = MemoryLimitLayer::new(budget.clone())
//!     .overload(Overload::Shed)
//!     .layer(App);
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::{Acquire, Budget, Permit};

/// What to do with a request whose bytes do not fit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overload {
    /// Answer 503 at once (the default).
    #[default]
    Shed,
    /// Wait for the bytes (backpressure through `poll_ready`).
    Wait,
}

/// The bytes a request declares it needs, from its head.
pub type CostFn = Arc<dyn Fn(&http::request::Parts) -> usize + Send + Sync>;

/// The default cost: the `Content-Length` (0 when absent or unreadable).
pub fn content_length(parts: &http::request::Parts) -> usize {
    parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Builds [`MemoryLimit`] services sharing one budget.
#[derive(Clone)]
pub struct MemoryLimitLayer {
    budget: Budget,
    overload: Overload,
    cost: CostFn,
    prepaid: usize,
    max_waiting: usize,
}

impl MemoryLimitLayer {
    /// A layer drawing from `budget`, shedding by default, with the
    /// `Content-Length` as the declared cost.
    pub fn new(budget: Budget) -> MemoryLimitLayer {
        MemoryLimitLayer {
            budget,
            overload: Overload::Shed,
            cost: Arc::new(content_length),
            prepaid: 0,
            max_waiting: usize::MAX,
        }
    }

    /// In [`Overload::Wait`], how many requests may wait for bytes at once
    /// (unbounded unless set); past it, requests are shed with 503.
    pub fn max_waiting(mut self, n: usize) -> Self {
        self.max_waiting = n;
        self
    }

    /// Sets what happens when the bytes do not fit.
    pub fn overload(mut self, overload: Overload) -> Self {
        self.overload = overload;
        self
    }

    /// Declares bytes of every client already charged elsewhere (its
    /// connection's reservation): the per-client floor of a request is
    /// `per_client − prepaid`, so that a client (connection + request)
    /// costs the per-client figure and `capacity` clients really fit.
    pub fn prepaid(mut self, bytes: usize) -> Self {
        self.prepaid = bytes;
        self
    }

    /// Sets how many bytes a request declares from its head (the charge is
    /// at least the per-client cost in force).
    pub fn cost(
        mut self,
        cost: impl Fn(&http::request::Parts) -> usize + Send + Sync + 'static,
    ) -> Self {
        self.cost = Arc::new(cost);
        self
    }
}

impl<S> Layer<S> for MemoryLimitLayer {
    type Service = MemoryLimit<S>;

    fn layer(&self, inner: S) -> MemoryLimit<S> {
        MemoryLimit {
            inner,
            config: Arc::new(Config {
                budget: self.budget.clone(),
                overload: self.overload,
                cost: self.cost.clone(),
                prepaid: self.prepaid,
                max_waiting: self.max_waiting,
            }),
            ready: None,
            acquiring: None,
            shed_next: false,
        }
    }
}

/// What every clone of one [`MemoryLimit`] shares, behind one `Arc`: a
/// clone per request (tower's usual pattern, and `frostheap serve`'s)
/// then costs one reference count instead of one per field.
struct Config {
    budget: Budget,
    overload: Overload,
    cost: CostFn,
    prepaid: usize,
    max_waiting: usize,
}

/// The middleware: see the [module documentation](self).
pub struct MemoryLimit<S> {
    inner: S,
    config: Arc<Config>,
    /// Wait mode: bytes reserved by `poll_ready` for the next `call`.
    ready: Option<Permit>,
    /// Wait mode: the reservation in progress.
    acquiring: Option<Acquire>,
    /// Wait mode: the queue was full at `poll_ready`, so the next `call`
    /// takes what is free or sheds.
    shed_next: bool,
}

impl<S: Clone> Clone for MemoryLimit<S> {
    /// A clone starts with no reservation of its own.
    fn clone(&self) -> Self {
        MemoryLimit {
            inner: self.inner.clone(),
            config: self.config.clone(),
            ready: None,
            acquiring: None,
            shed_next: false,
        }
    }
}

impl<S> MemoryLimit<S> {
    /// The smallest charge of a request: the per-client cost less what is
    /// prepaid, at least 1 byte, at most the budget.
    fn floor(&self) -> usize {
        let budget = &self.config.budget;
        budget
            .per_client()
            .saturating_sub(self.config.prepaid)
            .clamp(1, budget.total().max(1))
    }

    /// The budget requests are charged to.
    pub fn budget(&self) -> &Budget {
        &self.config.budget
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for MemoryLimit<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    ResB: Body,
    ResB::Data: From<&'static [u8]>,
{
    type Response = Response<BudgetBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S, Request<ReqB>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.config.overload == Overload::Wait && self.ready.is_none() && !self.shed_next {
            let floor = self.floor();
            let budget = &self.config.budget;
            if self.acquiring.is_none() && budget.waiting() >= self.config.max_waiting {
                self.shed_next = true;
                return self.inner.poll_ready(cx);
            }
            let acquire = self.acquiring.get_or_insert_with(|| budget.reserve(floor));
            match Pin::new(acquire).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(permit)) => self.ready = Some(permit),
                // Cannot happen (the reservation is capped at the total);
                // `call` then waits for the request's own cost.
                Poll::Ready(Err(_)) => {}
            }
            self.acquiring = None;
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let cost = (self.config.cost)(&parts).max(self.floor());
        let req = Request::from_parts(parts, body);
        if cost > self.config.budget.total() {
            // No wait and no retry can admit it: 413 in either mode (a
            // 503 with `Retry-After` invited retries that could never
            // succeed).
            self.shed_next = false;
            drop(self.ready.take());
            self.config.budget.count_refusal();
            return ResponseFuture::new(State::Refused {
                status: StatusCode::PAYLOAD_TOO_LARGE,
            });
        }
        let overload = if std::mem::take(&mut self.shed_next) {
            Overload::Shed
        } else {
            self.config.overload
        };
        let permit = match overload {
            Overload::Shed => match self.config.budget.try_acquire(cost) {
                Some(p) => p,
                None => {
                    return ResponseFuture::new(State::Refused {
                        status: StatusCode::SERVICE_UNAVAILABLE,
                    })
                }
            },
            Overload::Wait => match self.ready.take() {
                Some(p) if p.bytes() >= cost || p.try_grow_quiet(cost - p.bytes()) => {
                    p.admit();
                    p
                }
                reserved => {
                    // Give back what is held, then wait for all of it.
                    let waited = reserved.as_ref().is_some_and(Permit::waited);
                    drop(reserved);
                    let svc = self.inner.clone();
                    let svc = std::mem::replace(&mut self.inner, svc);
                    return ResponseFuture::new(State::Waiting {
                        acquire: self.config.budget.acquire(cost).after_waiting(waited),
                        svc: Some(svc),
                        req: Some(req),
                    });
                }
            },
        };
        ResponseFuture::new(call_with(&mut self.inner, req, permit))
    }
}

fn call_with<S, ReqB>(
    svc: &mut S,
    mut req: Request<ReqB>,
    permit: Permit,
) -> State<S::Future, S, Request<ReqB>>
where
    S: Service<Request<ReqB>>,
{
    req.extensions_mut().insert(permit.clone());
    State::Running {
        fut: svc.call(req),
        permit: Some(permit),
    }
}

pin_project! {
    /// The response future of [`MemoryLimit`].
    pub struct ResponseFuture<F, S, R> {
        #[pin]
        state: State<F, S, R>,
    }
}

impl<F, S, R> ResponseFuture<F, S, R> {
    fn new(state: State<F, S, R>) -> Self {
        ResponseFuture { state }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, S, R> {
        // The inner future runs; the permit rides on to the body.
        Running { #[pin] fut: F, permit: Option<Permit> },
        // Waiting for the bytes (wait mode), with a service of our own
        // (ready-polled once the bytes are granted).
        Waiting { acquire: Acquire, svc: Option<S>, req: Option<R> },
        // Bytes granted; waiting for the service to be ready.
        Calling { svc: Option<S>, req: Option<R>, permit: Option<Permit> },
        // Refused: answer with this status.
        Refused { status: StatusCode },
    }
}

impl<S, ReqB, ResB> Future for ResponseFuture<S::Future, S, Request<ReqB>>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Body,
    ResB::Data: From<&'static [u8]>,
{
    type Output = Result<Response<BudgetBody<ResB>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Running { fut, permit } => {
                    let response = ready!(fut.poll(cx))?;
                    let permit = permit.take();
                    return Poll::Ready(Ok(
                        response.map(|body| BudgetBody::Admitted { body, permit })
                    ));
                }
                StateProj::Waiting { acquire, svc, req } => {
                    match ready!(Pin::new(acquire).poll(cx)) {
                        Ok(permit) => {
                            let (svc, req) = (svc.take(), req.take());
                            state.set(State::Calling {
                                svc,
                                req,
                                permit: Some(permit),
                            });
                        }
                        Err(_) => state.set(State::Refused {
                            status: StatusCode::PAYLOAD_TOO_LARGE,
                        }),
                    }
                }
                StateProj::Calling { svc, req, permit } => {
                    let service = svc.as_mut().expect("polled after completion");
                    ready!(service.poll_ready(cx))?;
                    let (mut service, req, permit) = (
                        svc.take().expect("service"),
                        req.take().expect("request"),
                        permit.take().expect("permit"),
                    );
                    let next = call_with(&mut service, req, permit);
                    state.set(next);
                }
                StateProj::Refused { status } => {
                    let status = *status;
                    let message: &'static [u8] = if status == StatusCode::PAYLOAD_TOO_LARGE {
                        b"request larger than the whole memory budget\n"
                    } else {
                        b"over memory budget: retry later\n"
                    };
                    let mut response = Response::new(BudgetBody::Refused {
                        message: Some(message),
                    });
                    *response.status_mut() = status;
                    let headers = response.headers_mut();
                    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(message.len()));
                    if status == StatusCode::SERVICE_UNAVAILABLE {
                        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    }
                    // The request body is left unread: the connection
                    // cannot carry another request.
                    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
                    return Poll::Ready(Ok(response));
                }
            }
        }
    }
}

pin_project! {
    /// A response body that holds the request's [`Permit`] until it has
    /// been sent (or dropped), or the short text of a refusal.
    ///
    /// `Admitted { body, permit }`: the inner service's body and the bytes
    /// it is charged (released at the end of the body). `Refused { message }`:
    /// the text of a 503 or 413, until sent.
    #[project = BodyProj]
    #[allow(missing_docs)]
    pub enum BudgetBody<B> {
        Admitted { #[pin] body: B, permit: Option<Permit> },
        Refused { message: Option<&'static [u8]> },
    }
}

impl<B> BudgetBody<B> {
    /// Takes the permit an admitted response holds, for the caller to hold
    /// until the response is written (the body gives its permit back when
    /// its last frame is taken, which may be long before a slow client has
    /// read it).
    pub fn take_permit(self: Pin<&mut Self>) -> Option<Permit> {
        match self.project() {
            BodyProj::Admitted { permit, .. } => permit.take(),
            BodyProj::Refused { .. } => None,
        }
    }

    /// The permit an admitted response still holds.
    pub fn permit(&self) -> Option<&Permit> {
        match self {
            BudgetBody::Admitted { permit, .. } => permit.as_ref(),
            BudgetBody::Refused { .. } => None,
        }
    }
}

impl<B> Body for BudgetBody<B>
where
    B: Body,
    B::Data: From<&'static [u8]>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        match self.project() {
            BodyProj::Admitted { body, permit } => {
                let frame = ready!(body.poll_frame(cx));
                if frame.is_none() {
                    // Sent: the bytes go back now, not when hyper drops us.
                    permit.take();
                }
                Poll::Ready(frame)
            }
            BodyProj::Refused { message } => {
                Poll::Ready(message.take().map(|m| Ok(Frame::data(B::Data::from(m)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            BudgetBody::Admitted { body, .. } => body.is_end_stream(),
            BudgetBody::Refused { message } => message.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            BudgetBody::Admitted { body, .. } => body.size_hint(),
            BudgetBody::Refused { message } => {
                SizeHint::with_exact(message.map_or(0, |m| m.len() as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PerClient;
    use std::convert::Infallible;
    use std::future::{ready as ready_fut, Ready};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    /// A body of `n` bytes in one frame.
    struct Text(Option<&'static [u8]>);
    impl Body for Text {
        type Data = &'static [u8];
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Infallible>>> {
            Poll::Ready(self.0.take().map(|d| Ok(Frame::data(d))))
        }
    }

    /// Answers 200 and records the permit's bytes it saw.
    #[derive(Clone)]
    struct App(Arc<AtomicUsize>);
    impl Service<Request<()>> for App {
        type Response = Response<Text>;
        type Error = Infallible;
        type Future = Ready<Result<Response<Text>, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: Request<()>) -> Self::Future {
            let permit = req
                .extensions()
                .get::<Permit>()
                .expect("the layer inserts the permit");
            self.0.store(permit.bytes(), Ordering::SeqCst);
            ready_fut(Ok(Response::new(Text(Some(b"ok")))))
        }
    }

    struct Flag(AtomicUsize);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn cx_for(flag: &Arc<Flag>) -> Waker {
        Waker::from(flag.clone())
    }

    fn request(len: usize) -> Request<()> {
        Request::builder()
            .header(header::CONTENT_LENGTH, len)
            .body(())
            .unwrap()
    }

    #[test]
    fn shed_answers_503_when_the_bytes_do_not_fit_and_admits_otherwise() {
        let budget = Budget::with_per_client(1000, PerClient::Declared(400)).unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let mut svc = MemoryLimitLayer::new(budget.clone()).layer(App(seen.clone()));
        let flag = Arc::new(Flag(AtomicUsize::new(0)));
        let waker = cx_for(&flag);
        let mut held = Vec::new();
        for len in [10, 500] {
            assert!(svc.poll_ready(&mut Context::from_waker(&waker)).is_ready());
            let mut fut = Box::pin(svc.call(request(len)));
            let Poll::Ready(Ok(resp)) = fut.as_mut().poll(&mut Context::from_waker(&waker)) else {
                panic!("not ready")
            };
            assert_eq!(resp.status(), StatusCode::OK);
            held.push(resp);
        }
        assert_eq!(
            seen.load(Ordering::SeqCst),
            500,
            "a request is charged its Content-Length"
        );
        assert_eq!(budget.stats().in_use, 900, "400 (per-client floor) + 500");
        let mut fut = Box::pin(svc.call(request(0)));
        let Poll::Ready(Ok(resp)) = fut.as_mut().poll(&mut Context::from_waker(&waker)) else {
            panic!("not ready")
        };
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        assert_eq!(resp.headers()[header::CONNECTION], "close");
        let s = budget.stats();
        assert_eq!((s.admitted, s.refused, s.clients), (2, 1, 2));
        // Sending a body to the end returns its bytes.
        let mut body = Box::pin(held.pop().unwrap().into_body());
        while let Poll::Ready(Some(_)) = body.as_mut().poll_frame(&mut Context::from_waker(&waker))
        {
        }
        assert_eq!(budget.stats().in_use, 400);
        drop(held);
        assert_eq!(budget.stats().in_use, 0);
    }

    #[test]
    fn wait_holds_poll_ready_until_bytes_return() {
        let budget = Budget::with_per_client(1000, PerClient::Declared(600)).unwrap();
        let layer = MemoryLimitLayer::new(budget.clone()).overload(Overload::Wait);
        let seen = Arc::new(AtomicUsize::new(0));
        let mut a = layer.layer(App(seen.clone()));
        let mut b = a.clone();
        let flag = Arc::new(Flag(AtomicUsize::new(0)));
        let waker = cx_for(&flag);
        assert!(a.poll_ready(&mut Context::from_waker(&waker)).is_ready());
        let mut fut_a = Box::pin(a.call(request(0)));
        let Poll::Ready(Ok(resp_a)) = fut_a.as_mut().poll(&mut Context::from_waker(&waker)) else {
            panic!()
        };
        // The second client does not fit: poll_ready is pending.
        assert!(b.poll_ready(&mut Context::from_waker(&waker)).is_pending());
        assert_eq!(budget.stats().waiting, 1);
        drop(resp_a);
        assert_eq!(
            flag.0.load(Ordering::SeqCst),
            1,
            "the release woke the waiter"
        );
        assert!(b.poll_ready(&mut Context::from_waker(&waker)).is_ready());
        let mut fut_b = Box::pin(b.call(request(0)));
        assert!(
            matches!(fut_b.as_mut().poll(&mut Context::from_waker(&waker)), Poll::Ready(Ok(ref r)) if r.status() == StatusCode::OK)
        );
        let s = budget.stats();
        assert_eq!((s.admitted, s.refused), (2, 0));
        // The second waited for its reservation in `poll_ready`, and is
        // counted as waited once admitted (it stayed 0 before).
        assert_eq!((s.waited, s.waiting), (1, 0));
    }

    #[test]
    fn wait_with_a_larger_request_waits_for_all_of_it_and_413_past_the_budget() {
        let budget = Budget::with_per_client(1000, PerClient::Declared(100)).unwrap();
        let mut svc = MemoryLimitLayer::new(budget.clone())
            .overload(Overload::Wait)
            .layer(App(Arc::new(AtomicUsize::new(0))));
        let flag = Arc::new(Flag(AtomicUsize::new(0)));
        let waker = cx_for(&flag);
        let blocker = budget.try_acquire(500).unwrap();
        assert!(svc.poll_ready(&mut Context::from_waker(&waker)).is_ready());
        let mut fut = Box::pin(svc.call(request(800)));
        assert!(fut
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        assert_eq!(
            budget.stats().in_use,
            500,
            "the reservation was given back while waiting"
        );
        drop(blocker);
        let Poll::Ready(Ok(resp)) = fut.as_mut().poll(&mut Context::from_waker(&waker)) else {
            panic!()
        };
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(budget.stats().in_use, 800);
        drop(resp);
        assert!(svc.poll_ready(&mut Context::from_waker(&waker)).is_ready());
        let mut fut = Box::pin(svc.call(request(5000)));
        let Poll::Ready(Ok(resp)) = fut.as_mut().poll(&mut Context::from_waker(&waker)) else {
            panic!()
        };
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn shed_answers_413_to_a_request_larger_than_the_whole_budget() {
        let budget = Budget::with_per_client(1000, PerClient::Declared(100)).unwrap();
        let mut svc =
            MemoryLimitLayer::new(budget.clone()).layer(App(Arc::new(AtomicUsize::new(0))));
        let flag = Arc::new(Flag(AtomicUsize::new(0)));
        let waker = cx_for(&flag);
        let mut cx = Context::from_waker(&waker);
        // An idle budget: the request is refused for its size, not for
        // memory in use (it was 503 with `Retry-After`).
        assert!(svc.poll_ready(&mut cx).is_ready());
        let mut fut = Box::pin(svc.call(request(1001)));
        let Poll::Ready(Ok(resp)) = fut.as_mut().poll(&mut cx) else {
            panic!()
        };
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(resp.headers().get(header::RETRY_AFTER).is_none());
        let s = budget.stats();
        assert_eq!((s.admitted, s.refused, s.in_use), (0, 1, 0));
    }

    #[test]
    fn wait_sheds_once_max_waiting_requests_wait() {
        let budget = Budget::with_per_client(1000, PerClient::Declared(600)).unwrap();
        let layer = MemoryLimitLayer::new(budget.clone())
            .overload(Overload::Wait)
            .max_waiting(1);
        let mut a = layer.layer(App(Arc::new(AtomicUsize::new(0))));
        let (mut b, mut c) = (a.clone(), a.clone());
        let flag = Arc::new(Flag(AtomicUsize::new(0)));
        let waker = cx_for(&flag);
        let mut cx = Context::from_waker(&waker);
        assert!(a.poll_ready(&mut cx).is_ready());
        let mut fut_a = Box::pin(a.call(request(0)));
        let Poll::Ready(Ok(resp_a)) = fut_a.as_mut().poll(&mut cx) else {
            panic!()
        };
        assert!(
            b.poll_ready(&mut cx).is_pending(),
            "the first waiter queues"
        );
        assert!(c.poll_ready(&mut cx).is_ready(), "the queue is full");
        let mut fut_c = Box::pin(c.call(request(0)));
        let Poll::Ready(Ok(resp_c)) = fut_c.as_mut().poll(&mut cx) else {
            panic!()
        };
        assert_eq!(resp_c.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(budget.stats().refused, 1);
        drop(resp_a);
        assert!(
            b.poll_ready(&mut cx).is_ready(),
            "the waiter gets its bytes"
        );
    }
}
