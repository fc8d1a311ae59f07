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
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use frostheap_budget::gate::Ticket;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Sleep;

use super::state::{State, Timeouts};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    Head { since: Instant },
    Body { since: Instant, bytes: u64 },
    Busy,
    Idle { since: Instant },
}

/// A connection's phase and its place at the gate while it waits.
pub(super) struct ConnClock {
    phase: Mutex<Phase>,
    /// The gate's ticket while the connection has no admitted request
    /// (sending its head, idle between requests, parsed but not yet
    /// admitted or shed).
    ticket: Mutex<Option<Ticket>>,
    /// Signalled by the gate when it evicts this connection.
    pub(super) evict: Arc<Notify>,
}

impl ConnClock {
    pub(super) fn new(accepted: Instant) -> ConnClock {
        ConnClock {
            phase: Mutex::new(Phase::Head { since: accepted }),
            ticket: Mutex::new(None),
            evict: Arc::new(Notify::new()),
        }
    }

    pub(super) fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase;
    }

    /// A request head arrived: the connection is about to be served (its
    /// place at the gate is no longer evictable); its body, if it has one,
    /// is timed.
    pub(super) fn request(&self, has_body: bool) {
        if let Some(t) = &*self.ticket.lock().unwrap_or_else(|e| e.into_inner()) {
            t.set_ready();
        }
        self.set(if has_body {
            Phase::Body {
                since: Instant::now(),
                bytes: 0,
            }
        } else {
            Phase::Busy
        });
    }

    /// The request was admitted: the budget charges it from now on, and
    /// the connection leaves the gate.
    pub(super) fn admitted(&self) {
        self.ticket.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// The request body was read to its end.
    pub(super) fn body_done(&self) {
        self.set(Phase::Busy);
    }

    /// The response was sent: waiting for the next request.
    pub(super) fn idle(&self) {
        self.set(Phase::Idle {
            since: Instant::now(),
        });
    }

    /// Holds `ticket` until the next request is admitted (giving back the
    /// one held, if any).
    pub(super) fn wait_at_gate(&self, ticket: Ticket) {
        *self.ticket.lock().unwrap_or_else(|e| e.into_inner()) = Some(ticket);
    }

    /// Gives back the place held at the gate, if any.
    pub(super) fn leave_gate(&self) {
        self.ticket.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Whether the gate told this connection to go.
    pub(super) fn evicted(&self) -> bool {
        self.ticket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|t| t.is_evicted())
    }

    /// `n` bytes were read from the client.
    fn on_read(&self, n: usize) {
        let mut phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *phase {
            Phase::Idle { .. } if n > 0 => {
                *phase = Phase::Head {
                    since: Instant::now(),
                }
            }
            Phase::Body { bytes, .. } => *bytes += n as u64,
            _ => {}
        }
    }

    /// The deadline of the current phase and what missing it means.
    fn deadline(&self, t: &Timeouts) -> Option<(Instant, Missed)> {
        match self.phase() {
            Phase::Head { since } => Some((since + t.header, Missed::Header)),
            Phase::Body { since, bytes } => {
                let allowance = if t.body_min_rate == 0 {
                    Duration::ZERO
                } else {
                    Duration::from_secs_f64(bytes as f64 / t.body_min_rate as f64)
                };
                Some((since + t.body + allowance, Missed::Body))
            }
            Phase::Busy => None,
            Phase::Idle { since } => Some((since + t.idle, Missed::Idle)),
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
        loop {
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
            if Instant::now() >= deadline {
                missed.count(&this.state);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    missed.message(),
                )));
            }
            if this.armed != Some(deadline) {
                this.sleep.as_mut().reset(deadline.into());
                this.armed = Some(deadline);
            }
            if this.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
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
