//! One connection, from accept to close.
//!
//! 1. **The gate.** With a budget, a new connection takes a place at the
//!    [`ConnectionGate`](frostheap_budget::gate::ConnectionGate), the small
//!    separate budget of connections that have no admitted request, and
//!    keeps it until its request is admitted (or the connection ends): the
//!    gate bounds the parsers that exist before the budget has charged
//!    anyone, shed requests included. A full gate
//!    makes room by evicting a waiter whose head has not arrived (told
//!    with a 503 it can read, step 4): for a newcomer whose head has, the
//!    oldest such; for one whose head has not, the oldest if it has waited
//!    a second. Otherwise a newcomer with its head is refused (503: the
//!    gate is full of requests about to be served — a burst), and one
//!    without gets a short probation ([`PROBATION`], at most
//!    [`MAX_PROBATION`] at once) to send it and try again. So an attacker
//!    who reconnects as fast as he is dropped keeps the gate busy but
//!    cannot keep a prompt client out.
//! 2. **The head, before hyper.** The connection waits until the kernel
//!    holds a whole request head, peeking at it without reading, for at
//!    most `--header-timeout`. Until then it costs a task and a socket,
//!    not hyper's buffers: 2,000 connections sending a header byte a
//!    second cost little memory and no client place. Timeout: 408. Part
//!    of a head and then a half-close (no more will come): 400, and a
//!    clean close.
//! 3. **hyper** serves the connection; [`TimedIo`] enforces the body and
//!    idle deadlines, the request's bytes are charged by the tower layer
//!    from the head on, and between keep-alive requests the connection
//!    waits at the gate again (a full gate closes it after its response).
//! 4. **A close the client can read.** Whenever the server closes a
//!    connection whose client may still be sending (a 503 before the body
//!    was read), it first sends its answer, then half-closes (FIN), then
//!    reads and drops what arrives until the client closes — for at most
//!    [`LINGER_TIME`] in all, [`LINGER_IDLE`] without a byte, and
//!    `--max-body` + [`LINGER_BYTES`] — nginx's lingering close (its
//!    `lingering_time` and `lingering_timeout`). Closing at once with
//!    unread bytes in the socket makes the kernel send a reset, which
//!    destroys the answer before the client has read it.

use std::future::{poll_fn, Future};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use frostheap_budget::gate::Waiting;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::clock::{ConnClock, Missed, TimedIo};
use super::endpoints::{is_monitoring, monitoring_answer, route, Limited};
use super::state::State;

/// The longest request head accepted (hyper's read buffer is capped at
/// this size too): past it, 431.
pub(super) const MAX_HEAD: usize = 16 << 10;

/// How long a lingering close reads what the client still sends, at most
/// (nginx's `lingering_time`): a 1 MiB body at 300 kbit/s.
pub(super) const LINGER_TIME: Duration = Duration::from_secs(30);

/// How long a lingering close waits for the next byte, at most (nginx's
/// `lingering_timeout`): a client that has stopped sending but keeps its
/// socket open is dropped after this.
pub(super) const LINGER_IDLE: Duration = Duration::from_secs(5);

/// The most a lingering close reads and drops, beyond `--max-body`.
pub(super) const LINGER_BYTES: usize = 64 << 10;

/// Lingering closes at once, at most; past it, connections close at once.
pub(super) const MAX_LINGERING: usize = 4096;

/// How long a connection that found the gate full may take to send its
/// head (a prompt client needs a fraction of a millisecond on a LAN).
pub(super) const PROBATION: Duration = Duration::from_millis(100);

/// Monitoring requests answered outside a full gate at once, at most
/// ([`monitoring_outside_gate`]); past it, they get the gate's 503.
pub(super) const MAX_OUTSIDE_GATE: usize = 64;

/// Connections on probation at once, at most (each costs its task and
/// socket, no buffers: the task's future is 896 bytes, measured with
/// `size_of_val`); past it, 503 at once.
pub(super) const MAX_PROBATION: usize = 4096;

/// A response the server writes itself, before hyper or instead of it:
/// `Connection: close`, and `Retry-After: 1` for a 503.
fn canned(status: &str, text: &str) -> Vec<u8> {
    let retry = if status.starts_with("503") {
        "retry-after: 1\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\n{retry}connection: close\r\ncontent-length: {}\r\n\r\n{text}",
        text.len()
    )
    .into_bytes()
}

/// The answer to a request head that missed `--header-timeout`.
fn head_timed_out() -> Vec<u8> {
    canned(
        "408 Request Timeout",
        "request head not received within the header timeout\n",
    )
}

fn busy() -> Vec<u8> {
    canned(
        "503 Service Unavailable",
        "server busy: too many connections waiting to send, retry later\n",
    )
}

/// Counts the connection among the open ones until it drops.
pub(super) struct Open(Arc<State>);

impl Open {
    /// Called by the accept loop, before the task starts, so that a
    /// shutdown never misses a connection that was just accepted.
    pub(super) fn new(state: Arc<State>) -> Open {
        state.connections.fetch_add(1, Ordering::AcqRel);
        Open(state)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if self.0.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.all_closed.notify_waiters();
        }
    }
}

/// Serves one accepted connection to its end.
pub(super) async fn connection<S: Limited>(stream: TcpStream, open: Open, limited: Option<S>) {
    let state = open.0.clone();
    // Waited on with `wait_for`, never `changed`: a connection the accept
    // loop counted just before a shutdown may subscribe after it, and
    // `changed` would then wait for a change that never comes (the
    // connection kept until its header timeout, and the exit with it).
    let mut shutdown = state.shutdown.subscribe();
    let accepted = Instant::now();
    let evict = Arc::new(Notify::new());
    let mut ticket = None;

    if let Some(gate) = &state.gate {
        // Whether the request head came with the connection (ready).
        let ready = matches!(peek(stream.as_raw_fd()), Ok(Peek::Complete));
        let kind = if ready { Waiting::Ready } else { Waiting::Head };
        let (outcome, entered) = match gate.enter_notifying(kind, evict.clone()).ticket() {
            Some(ticket) if ready => (Head::Complete, Some(ticket)),
            Some(ticket) => {
                let outcome = tokio::select! {
                    o = head_arrives(&stream, state.timeouts.header) => o,
                    _ = ticket.evicted() => Head::Evicted,
                    _ = shutdown.wait_for(|&s| s) => Head::Shutdown,
                };
                (outcome, Some(ticket))
            }
            // A burst of ready connections: this one is refused.
            None if ready => (Head::Busy, None),
            None => match probation(&stream, &state).await {
                Head::Complete => {
                    match gate.enter_notifying(Waiting::Ready, evict.clone()).ticket() {
                        Some(ticket) => (Head::Complete, Some(ticket)),
                        None => (Head::Busy, None),
                    }
                }
                other => (other, None),
            },
        };
        if let Head::Complete = outcome {
            let entered = entered.expect("a complete head has a ticket");
            entered.set_ready();
            ticket = Some(entered);
        } else {
            // The place goes back before the answer.
            drop(entered);
            let answer = match outcome {
                Head::TimedOut => {
                    Missed::Header.count(&state);
                    head_timed_out()
                }
                Head::TooLarge => canned(
                    "431 Request Header Fields Too Large",
                    "request head larger than 16 KiB\n",
                ),
                Head::Busy => match monitoring_outside_gate(&stream, &state) {
                    Some(answer) => {
                        let mut stream = stream;
                        // Within the send timeout: a client that takes none
                        // of the answer must not keep an outside-gate place.
                        let sent =
                            tokio::time::timeout(state.timeouts.send, stream.write_all(&answer.0))
                                .await
                                .is_ok_and(|r| r.is_ok());
                        // Counted while its buffer lives, not while it lingers.
                        drop(answer);
                        if sent && stream.shutdown().await.is_ok() {
                            linger(stream, &state).await;
                        }
                        return;
                    }
                    None => {
                        state.shed_connections.fetch_add(1, Ordering::Relaxed);
                        busy()
                    }
                },
                Head::Evicted => {
                    state.shed_connections.fetch_add(1, Ordering::Relaxed);
                    busy()
                }
                Head::Shutdown => return answer_and_close(stream, &shutting_down()).await,
                Head::CutOff => return answer_and_close(stream, &cut_off()).await,
                Head::Closed | Head::Complete => return,
            };
            return answer_and_linger(stream, &answer, &state).await;
        }
    }
    let fd = stream.as_raw_fd();
    let clock = Arc::new(ConnClock::new(accepted, ticket, evict, state.clone(), fd));

    // Boxed: the hyper state is most of the future, and a connection that
    // never gets this far (refused, timed out, lingering) should not carry
    // it (1.7 KiB per task unboxed, measured with `size_of_val`).
    Box::pin(serve_http(stream, state, clock, limited, shutdown)).await;
}

/// Serves requests on a connection whose first head has arrived, then
/// closes it the way the client can read the last answer.
async fn serve_http<S: Limited>(
    stream: TcpStream,
    state: Arc<State>,
    clock: Arc<ConnClock>,
    limited: Option<S>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    // Headers are timed by the gate and `TimedIo`, with the idle wait apart.
    http.header_read_timeout(None);
    // A client that shuts its write side after its request (`nc -N`, some
    // proxies) gets its answer: without this hyper dropped the answer half
    // of the time, as it read the end of the stream first. (A head cut
    // off by such a close never reaches hyper: `head_arrives`; a body cut
    // off meets the body timeout.)
    http.half_close(true);
    if state.budget.is_some() {
        // Bound hyper's read buffer: the per-client cost covers it.
        http.max_buf_size(MAX_HEAD);
    }
    // The socket, for a peek while hyper owns it (open as long as `conn`).
    let fd = stream.as_raw_fd();
    let io = TimedIo::new(stream, clock.clone(), state.clone());
    let service = {
        let (state, clock) = (state.clone(), clock.clone());
        hyper::service::service_fn(move |req| {
            // Boxed per request: hyper keeps an unboxed service future in
            // a box it allocates per connection, which an idle kept-alive
            // connection would then carry (2 KiB, `size_of_val`).
            Box::pin(route(req, state.clone(), limited.clone(), clock.clone()))
        })
    };
    let mut conn = http.serve_connection(TokioIo::new(io), service);
    let mut draining = false;
    // hyper's own end of the connection (not `poll_without_shutdown`): it
    // flushes what it still holds of the last response, then half-closes
    // the socket (`TimedIo::poll_shutdown`). `poll_without_shutdown` can
    // report the connection done with the tail of a response still in
    // hyper's write buffer (the socket was full), which `into_parts` then
    // drops: the client read a response cut short.
    let result = loop {
        tokio::select! {
            r = poll_fn(|cx| std::pin::Pin::new(&mut conn).poll(cx)) => break r,
            _ = clock.evict.notified() => {
                if !clock.evicted() {
                    continue;
                }
                // Evicted while idle, by the server's account: it marks a
                // connection busy only once hyper has parsed its next
                // head, which on a busy server can be long after the
                // client sent it. If any of it is in the socket, the
                // client is not idle: its request is served, with
                // `Connection: close` (an evicted ticket gets no place
                // for the next idle wait); closing now would leave it a
                // request without an answer (wrk counts a read error).
                // The header timeout bounds a slow head.
                if !matches!(peek(fd), Ok(Peek::Incomplete(_) | Peek::Complete)) {
                    // Idle: hyper closes now (a request hyper has begun to
                    // read is served first, with `Connection: close`).
                    std::pin::Pin::new(&mut conn).graceful_shutdown();
                }
            }
            _ = shutdown.wait_for(|&s| s), if !draining => {
                // Finish the request in flight (answered with `Connection:
                // close`), or close now if there is none.
                draining = true;
                std::pin::Pin::new(&mut conn).graceful_shutdown();
            }
        }
    };
    if result.is_err() {
        // A timeout, a reset or a malformed request: hyper has answered
        // what it could. A head on a kept-alive connection that missed its
        // deadline hyper sees as a read error only, and answers nothing:
        // its 408 is the server's own, as for a first head (`connection`).
        // (Until 2026-12-06 the connection was closed without a word.)
        let parts = conn.into_parts();
        let io = parts.io.into_inner();
        if io.missed() == Some(Missed::Header) {
            clock.leave_gate();
            let stream = io.into_inner();
            drop((parts.read_buf, parts.service));
            answer_and_linger(stream, &head_timed_out(), &state).await;
        }
        return;
    }
    // The connection will carry no more requests (hyper also ends here,
    // without an error, when the idle timeout fires between requests): its
    // place at the gate goes back now, not after the linger. Lingering
    // connections are counted apart (`lingering`, at most MAX_LINGERING).
    clock.leave_gate();
    let parts = conn.into_parts();
    let stream = parts.io.into_inner().into_inner();
    drop((parts.read_buf, parts.service));
    linger(stream, &state).await;
}

/// The answer to a monitoring request (`GET` or `HEAD` of `/live`,
/// `/ready`, `/stats` or `/metrics`) whose connection the full gate did
/// not take, if that is what its head asks for and fewer than
/// [`MAX_OUTSIDE_GATE`] are being answered so: written by the server
/// itself, without hyper, then a close (`Connection: close`).
///
/// The gate bounds the connections hyper parses for; a full one refused
/// every newcomer, the probes included, so a balancer read a busy server
/// as a dead one: with 64 keep-alive clients polling every half second
/// (the default gate of a 16 MiB budget), or waiters holding every place
/// in `--overload wait`, `/live` got 503 "too many connections waiting to
/// send" (a user's trial), where the probes are meant to answer while the
/// server sheds. These answers cost their task, the peeked head (on the
/// stack) and the answer (`/metrics`: under 16 KiB) until it is written to
/// the socket, whose send buffer takes it whole; the close after it is a
/// lingering close like the others (at most `MAX_LINGERING` at once).
fn monitoring_outside_gate(stream: &TcpStream, state: &Arc<State>) -> Option<OutsideGate> {
    let mut buf = [0u8; 512];
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes, and recv
    // writes at most that many; MSG_PEEK leaves the data in the socket.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    let line = buf.get(..usize::try_from(n).ok()?)?;
    let line = line.split(|&b| b == b'\n').next()?;
    let mut words = line.split(|&b| b == b' ');
    let (method, target) = (words.next()?, words.next()?);
    let head = match method {
        b"GET" => false,
        b"HEAD" => true,
        _ => return None,
    };
    let path = std::str::from_utf8(target).ok()?;
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    if !is_monitoring(path) {
        return None;
    }
    if state.outside_gate.fetch_add(1, Ordering::Relaxed) >= MAX_OUTSIDE_GATE {
        state.outside_gate.fetch_sub(1, Ordering::Relaxed);
        return None;
    }
    let (status, kind, body) = monitoring_answer(state, path);
    let mut answer = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {kind}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    if !head {
        answer.extend_from_slice(&body);
    }
    Some(OutsideGate(answer, state.clone()))
}

/// A monitoring answer given outside the gate, counted in
/// `State::outside_gate` until it is dropped.
struct OutsideGate(Vec<u8>, Arc<State>);

impl Drop for OutsideGate {
    fn drop(&mut self) {
        self.1.outside_gate.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection the full gate did not take: served if its head arrives
/// within [`PROBATION`], told it is busy otherwise.
async fn probation(stream: &TcpStream, state: &State) -> Head {
    if state.probation.fetch_add(1, Ordering::Relaxed) >= MAX_PROBATION {
        state.probation.fetch_sub(1, Ordering::Relaxed);
        return Head::Busy;
    }
    let outcome = match head_arrives(stream, PROBATION.min(state.timeouts.header)).await {
        Head::TimedOut => Head::Busy,
        other => other,
    };
    state.probation.fetch_sub(1, Ordering::Relaxed);
    outcome
}

enum Head {
    Complete,
    /// The gate is full and the head did not come during probation.
    Busy,
    TimedOut,
    TooLarge,
    Evicted,
    /// The client closed the connection (or reset it) before sending a
    /// byte of a head.
    Closed,
    /// The client shut its side with part of a head sent: no more will
    /// come.
    CutOff,
    Shutdown,
}

/// Waits until a whole request head is in the socket (not read: hyper
/// reads it), for at most `timeout`.
async fn head_arrives(stream: &TcpStream, timeout: Duration) -> Head {
    let deadline = tokio::time::Instant::now() + timeout;
    // Whether the client has shut its side: no more bytes will come.
    let mut read_closed = false;
    loop {
        // Peek at what has arrived. An incomplete head reports
        // `WouldBlock`, which clears the socket's readiness, so the next
        // `readable` waits for new bytes instead of returning at once.
        let peeked = stream.try_io(Interest::READABLE, || match peek(stream.as_raw_fd()) {
            Ok(Peek::Incomplete(n)) if n < MAX_HEAD => {
                Err(io::Error::from(io::ErrorKind::WouldBlock))
            }
            other => other,
        });
        match peeked {
            Ok(Peek::Complete) => return Head::Complete,
            Ok(Peek::Incomplete(_)) => return Head::TooLarge,
            Ok(Peek::Closed) => return Head::Closed,
            // An incomplete head that the client will never finish: its
            // side is shut. (A socket whose peer has shut its side stays
            // readable for good, so waiting below would spin, and never
            // reach the deadline: a head cut off by a close kept a
            // runtime thread busy, and two of them stalled the server.)
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && read_closed => return Head::CutOff,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Head::Closed,
        }
        match tokio::time::timeout_at(deadline, stream.ready(Interest::READABLE)).await {
            Err(_) => return Head::TimedOut,
            Ok(Err(_)) => return Head::Closed,
            // Peeked once more (above) before it counts: the head may
            // have come whole before the client shut its side.
            Ok(Ok(ready)) => read_closed = ready.is_read_closed(),
        }
    }
}

enum Peek {
    Complete,
    Incomplete(usize),
    Closed,
}

/// Peeks at the pending bytes of the socket `fd` (without taking them)
/// and looks for the empty line that ends a request head. `fd` must be
/// an open socket (a closed or reused descriptor gives a wrong answer or
/// an error, nothing worse: the call only peeks).
fn peek(fd: RawFd) -> io::Result<Peek> {
    let mut buf = [0u8; MAX_HEAD];
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes, and recv
    // writes at most that many; recv on any descriptor touches nothing
    // else (MSG_PEEK leaves the socket's data in place).
    let n = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let data = &buf[..n as usize];
    if data.is_empty() {
        return Ok(Peek::Closed);
    }
    let ends = data.windows(2).any(|w| w == b"\n\n") || data.windows(3).any(|w| w == b"\n\r\n");
    Ok(if ends {
        Peek::Complete
    } else {
        Peek::Incomplete(data.len())
    })
}

/// The answer to a head cut off by the client shutting its side (it may
/// still read: a client that half-closes after its request is served,
/// see `serve_http`). Read and dropped before the answer, the half head
/// leaves nothing unread, so the close is a FIN: dropped unread, it made
/// the kernel reset the connection (until 2026-12-06).
fn cut_off() -> Vec<u8> {
    canned(
        "400 Bad Request",
        "request head cut off: the client closed its side of the connection before the head ended\n",
    )
}

/// The answer to a connection whose head the shutdown cut off.
fn shutting_down() -> Vec<u8> {
    canned(
        "503 Service Unavailable",
        "server shutting down: send the request again\n",
    )
}

/// Sends a canned answer and closes at once, without the lingering close
/// (the shutdown does not wait for it): what the client sent is read and
/// dropped before and after, so that the close is a FIN, not a reset.
/// Dropping a connection whose half-sent head lay unread reset it: 10 of
/// 10 such clients saw `ConnectionResetError` at a SIGTERM (a user's
/// trial), where the docs promise an answer or a clean close.
async fn answer_and_close(mut stream: TcpStream, answer: &[u8]) {
    while matches!(drain(&stream), Ok(n) if n > 0) {}
    if stream.write_all(answer).await.is_ok() {
        let _ = stream.shutdown().await;
        while matches!(drain(&stream), Ok(n) if n > 0) {}
    }
}

/// Sends a canned answer, then closes the way the client can read it.
async fn answer_and_linger(mut stream: TcpStream, answer: &[u8], state: &State) {
    if stream.write_all(answer).await.is_ok() && stream.shutdown().await.is_ok() {
        linger(stream, state).await;
    }
}

/// Reads and drops what the client still sends on `stream`, whose write
/// side is shut down (the client has read the answer and its end), until
/// the client closes its side, for at most [`LINGER_TIME`] in all,
/// [`LINGER_IDLE`] between two reads, and `--max-body` + [`LINGER_BYTES`];
/// a shutdown ends it at once (150 refused clients that kept sending a
/// byte a second held the exit for the whole 30 s: a user's trial).
async fn linger(stream: TcpStream, state: &State) {
    if state.lingering.fetch_add(1, Ordering::Relaxed) >= MAX_LINGERING {
        state.lingering.fetch_sub(1, Ordering::Relaxed);
        state.linger_cut.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut left = state.max_body + LINGER_BYTES;
    let mut shutdown = state.shutdown.subscribe();
    let drained = tokio::time::timeout(LINGER_TIME, async {
        loop {
            let readable = tokio::select! {
                r = tokio::time::timeout(LINGER_IDLE, stream.readable()) => r,
                _ = shutdown.wait_for(|&s| s) => return false,
            };
            match readable {
                Err(_) => return false,
                Ok(Err(_)) => return true,
                Ok(Ok(())) => {}
            }
            match drain(&stream) {
                Ok(0) => return true,
                Ok(n) if n >= left => return false,
                Ok(n) => left -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return true,
            }
        }
    })
    .await;
    state.lingering.fetch_sub(1, Ordering::Relaxed);
    if drained != Ok(true) {
        state.linger_cut.fetch_add(1, Ordering::Relaxed);
    }
}

/// Reads and drops what is in the socket now (no buffer kept across
/// awaits: lingering connections cost no memory of their own).
fn drain(stream: &TcpStream) -> io::Result<usize> {
    let mut sink = [0u8; 16 << 10];
    stream.try_read(&mut sink)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canned_answers_declare_their_length() {
        let r = canned("503 Service Unavailable", "busy\n");
        let text = String::from_utf8(r).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("content-length: 5") && head.contains("retry-after: 1"));
        assert_eq!(body, "busy\n");
        assert!(!String::from_utf8(canned("408 Request Timeout", "x"))
            .unwrap()
            .contains("retry-after"));
    }
}
