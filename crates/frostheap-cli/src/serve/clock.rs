//! Per-connection timeouts: a connection's phase and the deadline it sets,
//! enforced on hyper's reads.
//!
//! A connection is always in one phase, and each phase but one has a
//! deadline for the client to meet:
//!
//! | phase | from | deadline |
//! |---|---|---|
//! | `Head` | accept, or the first byte after an idle wait | `--header-timeout` (default 10 s, HAProxy's usual `timeout http-request`; nginx allows 60 s) |
//! | `Body` | the request head | `--body-timeout` + bytes received ÷ `--body-min-rate` (default 20 s + 1 s per 500 bytes: Apache's `RequestReadTimeout body=20,MinRate=500`) |
//! | `Busy` | the end of the body | none: the server is working or writing |
//! | `Idle` | the end of a response | `--idle-timeout` (default 5 s, Apache's and Node's keep-alive timeout; nginx allows 75 s) |
//!
//! [`TimedIo`] wraps the socket under hyper: a read that would wait past
//! the deadline fails with `TimedOut` instead, hyper ends the connection,
//! and the timeout is counted by phase. Only reads are timed: a client
//! that is slow to *read* a response holds its admitted bytes until the
//! response is sent, which the budget already charges.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use frostheap_budget::gate::Ticket;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Sleep;

use super::state::{State, Timeouts};

/// A connection's phase (`ConnClock::phase`).
const HEAD: u8 = 0;
const BODY: u8 = 1;
const BUSY: u8 = 2;
const IDLE: u8 = 3;

/// A connection's phase and its place at the gate.
///
/// Every field is an atomic that only the connection's own task touches
/// (hyper polls the service, its bodies and the socket from that task), so
/// relaxed loads and stores suffice: on x86 they are plain moves, where a
/// mutex costs two locked instructions per use and a clock phase is read
/// and written several times per request.
pub(super) struct ConnClock {
    phase: AtomicU8,
    /// When the phase began: nanoseconds after `accepted`.
    since: AtomicU64,
    /// Body bytes received in the `Body` phase.
    bytes: AtomicU64,
    accepted: Instant,
    /// The connection's place at the gate (with a budget): held while it
    /// has no admitted request (sending its head, idle between requests,
    /// parsed but not yet admitted or shed), given back while it has one.
    ticket: Option<Ticket>,
    /// Signalled by the gate when it evicts this connection.
    pub(super) evict: Arc<Notify>,
}

impl ConnClock {
    /// A connection accepted at `accepted`, sending its first head; `evict`
    /// is the `Notify` its gate ticket (if any) was entered with.
    pub(super) fn new(accepted: Instant, ticket: Option<Ticket>, evict: Arc<Notify>) -> ConnClock {
        ConnClock {
            phase: AtomicU8::new(HEAD),
            since: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            accepted,
            ticket,
            evict,
        }
    }

    fn now(&self) -> u64 {
        self.accepted.elapsed().as_nanos() as u64
    }

    fn set(&self, phase: u8, since: u64) {
        self.since.store(since, Ordering::Relaxed);
        self.phase.store(phase, Ordering::Relaxed);
    }

    /// A request head arrived: the connection is about to be served (its
    /// place at the gate is no longer evictable); its body, if it has one,
    /// is timed.
    pub(super) fn request(&self, has_body: bool) {
        if let Some(t) = &self.ticket {
            t.set_ready();
        }
        if has_body {
            self.bytes.store(0, Ordering::Relaxed);
            self.set(BODY, self.now());
        } else {
            self.phase.store(BUSY, Ordering::Relaxed);
        }
    }

    /// The request was admitted: the budget charges it from now on, and
    /// the connection gives its place at the gate back.
    pub(super) fn admitted(&self) {
        if let Some(t) = &self.ticket {
            t.leave();
        }
    }

    /// After a response on a kept-alive connection: its idle wait takes a
    /// place at the gate again. False if the gate has none (the response
    /// is then the connection's last). True without a gate.
    pub(super) fn wait_at_gate(&self) -> bool {
        self.ticket
            .as_ref()
            .is_none_or(|t| t.wait_again(frostheap_budget::gate::Waiting::Idle))
    }

    /// Gives back the place held at the gate, if any (a connection whose
    /// response is its last).
    pub(super) fn leave_gate(&self) {
        self.admitted();
    }

    /// The request body was read to its end.
    pub(super) fn body_done(&self) {
        self.phase.store(BUSY, Ordering::Relaxed);
    }

    /// The response was sent: waiting for the next request.
    pub(super) fn idle(&self) {
        self.set(IDLE, self.now());
    }

    /// Whether the gate told this connection to go.
    pub(super) fn evicted(&self) -> bool {
        self.ticket.as_ref().is_some_and(|t| t.is_evicted())
    }

    /// `n` bytes were read from the client.
    fn on_read(&self, n: usize) {
        match self.phase.load(Ordering::Relaxed) {
            IDLE if n > 0 => self.set(HEAD, self.now()),
            BODY => {
                let bytes = self.bytes.load(Ordering::Relaxed);
                self.bytes.store(bytes + n as u64, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// The deadline of the current phase and what missing it means.
    fn deadline(&self, t: &Timeouts) -> Option<(Instant, Missed)> {
        let since = self.accepted + Duration::from_nanos(self.since.load(Ordering::Relaxed));
        match self.phase.load(Ordering::Relaxed) {
            HEAD => Some((since + t.header, Missed::Header)),
            BODY => {
                let bytes = self.bytes.load(Ordering::Relaxed);
                let allowance = if t.body_min_rate == 0 {
                    Duration::ZERO
                } else {
                    Duration::from_secs_f64(bytes as f64 / t.body_min_rate as f64)
                };
                Some((since + t.body + allowance, Missed::Body))
            }
            IDLE => Some((since + t.idle, Missed::Idle)),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Missed {
    Header,
    Body,
    Idle,
}

impl Missed {
    pub(super) fn count(self, state: &State) {
        let counter = match self {
            Missed::Header => &state.timeouts_header,
            Missed::Body => &state.timeouts_body,
            Missed::Idle => &state.timeouts_idle,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn message(self) -> &'static str {
        match self {
            Missed::Header => "request head not received within the header timeout",
            Missed::Body => "request body slower than the body timeout and minimum rate",
            Missed::Idle => "idle keep-alive connection timed out",
        }
    }
}

/// The socket under hyper, with the connection's read deadline.
pub(super) struct TimedIo {
    stream: TcpStream,
    clock: Arc<ConnClock>,
    state: Arc<State>,
    sleep: Pin<Box<Sleep>>,
    armed: Option<Instant>,
}

impl TimedIo {
    pub(super) fn new(stream: TcpStream, clock: Arc<ConnClock>, state: Arc<State>) -> TimedIo {
        TimedIo {
            stream,
            clock,
            state,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
        }
    }

    pub(super) fn into_inner(self) -> TcpStream {
        self.stream
    }
}

impl AsyncRead for TimedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        if let Poll::Ready(r) = Pin::new(&mut this.stream).poll_read(cx, buf) {
            if r.is_ok() {
                this.clock.on_read(buf.filled().len() - before);
            }
            return Poll::Ready(r);
        }
        let Some((deadline, missed)) = this.clock.deadline(&this.state.timeouts) else {
            return Poll::Pending;
        };
        if this.armed != Some(deadline) {
            this.sleep.as_mut().reset(deadline.into());
            this.armed = Some(deadline);
        }
        // The timer fires at the armed deadline, which is the current
        // phase's: no clock read of our own.
        if this.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        missed.count(&this.state);
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            missed.message(),
        )))
    }
}

impl AsyncWrite for TimedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
