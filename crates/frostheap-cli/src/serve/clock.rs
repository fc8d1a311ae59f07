//! Per-connection timeouts: a connection's phase and the deadline it sets,
//! enforced on hyper's reads.
//!
//! A connection is always in one phase, and each phase but one has a
//! deadline for the client to meet:
//!
//! | phase | from | deadline |
//! |---|---|---|
//! | `Head` | accept, or the first byte after an idle wait | `--header-timeout` (default 10 s, HAProxy's usual `timeout http-request`; nginx allows 60 s) |
//! | `Body` | the request head | `--body-timeout` + bytes received ÷ `--body-min-rate` (default 20 s + 1 s per 500 bytes: Apache's `RequestReadTimeout body=20,MinRate=500`), `--body-max-time` at most (default 60 s, nginx's `client_body_timeout`, there between two reads, here for the whole body) |
//! | `Busy` | the end of the body | none: the server is working |
//! | `Send` | the response's first frame taken by hyper, and each write of it that the client made room for | `--send-timeout` (default 30 s; nginx's `send_timeout` is 60 s) |
//! | `Idle` | the response written to the socket (the last write flushed) | `--idle-timeout` (default 5 s, Apache's and Node's keep-alive timeout; nginx allows 75 s) |
//!
//! [`TimedIo`] wraps the socket under hyper: a read that would wait past
//! the deadline fails with `TimedOut` instead, hyper ends the connection,
//! and the timeout is counted by phase; a write that waits for room past
//! the `Send` deadline fails the same way.
//!
//! A body still arriving holds its request's client place for
//! `--body-grace` (1 s), then only what it has sent, in the slow-body pool
//! (`slow.rs`, `endpoints.rs`'s `read_body`), so the body's deadline is
//! how long a slow sender keeps that memory: without `--body-max-time`, a
//! 1 MB body sent at the minimum rate kept it for 35 minutes (and, before
//! the pool, its client place: 128 such senders held a 16 MiB server's
//! whole capacity for as long). With it, the memory comes back within a
//! minute, whatever the sender does (a client on a 2G link, 30 KB/s,
//! sends 1 MB in 35 s).
//!
//! A response's permit (its admitted bytes) is held here from its first
//! frame until it is written to the socket ([`ConnClock::flushed`]): the
//! response's buffer lives until then, and a client that is slow to read
//! holds its bytes for as long. (The kernel says a socket has room again
//! only once about a third of its send buffer has drained, so a reader
//! slower than a third of that buffer per `--send-timeout` is cut, as
//! under nginx's `send_timeout`.) A response hyper writes without taking
//! a frame (a `HEAD` answer, an empty body) gives its permit back as hyper
//! drops it, and the idle wait starts then. (Until 2026-12-05 the permit went back,
//! and the idle deadline started, as hyper took the last frame: 40
//! clients that did not read their 8 MB answers took a server with a 32
//! MiB budget to 280 MiB resident, and a client reading a large answer
//! steadily was cut off after `--idle-timeout`.)

use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use frostheap_budget::gate::Ticket;
use frostheap_budget::Permit;
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
const SEND: u8 = 4;

/// A connection's phase and its place at the gate.
///
/// Every field is touched only by the connection's own task (hyper polls
/// the service, its bodies and the socket from that task). The phase
/// fields are atomics, so relaxed loads and stores suffice: on x86 they
/// are plain moves, where a mutex costs two locked instructions per use
/// and a clock phase is read and written several times per request. The
/// permits, taken once per response, sit behind an uncontended mutex.
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
    /// In `Send`: hyper has taken the response's last frame.
    ended: AtomicBool,
    /// The permits of the responses being sent (see the file comment):
    /// one, or more when hyper parsed a pipelined request before the last
    /// write of the answer before it was flushed.
    permits: Mutex<Vec<Permit>>,
    /// Handlers' 2xx answers whose end hyper has taken and not yet written
    /// to the socket: `completed` once hyper's next flush completes,
    /// `undelivered` if the connection ends first.
    answered: AtomicU32,
    state: Arc<State>,
    /// The socket, for a check that the client is still there (open as
    /// long as the connection, which owns every holder of this clock).
    fd: RawFd,
    /// The current request's handler has begun.
    running: AtomicBool,
    /// The current request's handler answered 2xx (taken as its response
    /// is handed to hyper: one request at a time runs on a connection).
    handler_ok: AtomicBool,
}

impl ConnClock {
    /// A connection accepted at `accepted`, sending its first head; `evict`
    /// is the `Notify` its gate ticket (if any) was entered with.
    pub(super) fn new(
        accepted: Instant,
        ticket: Option<Ticket>,
        evict: Arc<Notify>,
        state: Arc<State>,
        fd: RawFd,
    ) -> ConnClock {
        ConnClock {
            phase: AtomicU8::new(HEAD),
            since: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            accepted,
            ticket,
            evict,
            ended: AtomicBool::new(false),
            permits: Mutex::new(Vec::with_capacity(1)),
            answered: AtomicU32::new(0),
            state,
            fd,
            running: AtomicBool::new(false),
            handler_ok: AtomicBool::new(false),
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
        self.running.store(false, Ordering::Relaxed);
        if has_body {
            self.bytes.store(0, Ordering::Relaxed);
            self.set(BODY, self.now());
        } else {
            self.phase.store(BUSY, Ordering::Relaxed);
        }
    }

    /// The request's handler begins.
    pub(super) fn run(&self) {
        self.running.store(true, Ordering::Relaxed);
    }

    /// Whether the request's handler has begun.
    pub(super) fn running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    /// Whether the client has closed the connection or shut its side of
    /// it (a FIN or a reset has arrived), whatever bytes of it are still
    /// unread. The two cannot be told apart without writing; a client
    /// that shut its side waiting for an answer is taken for gone, as
    /// nginx and Go's net/http take it.
    pub(super) fn client_left(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.fd,
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: `p` is one valid pollfd, and a zero timeout returns at
        // once; poll reads nothing from the socket.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n == 1 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
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

    /// hyper took the response's first frame: the response is being
    /// written, holding `permit` (its admitted bytes) until it is.
    pub(super) fn sending(&self, permit: Option<Permit>) {
        if let Some(p) = permit {
            self.permits
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(p);
        }
        self.ended.store(false, Ordering::Relaxed);
        self.set(SEND, self.now());
    }

    /// hyper took the response's last frame: the response is sent once
    /// hyper's next flush completes ([`ConnClock::flushed`]).
    pub(super) fn last_frame_taken(&self) {
        self.ended.store(true, Ordering::Relaxed);
    }

    /// A response hyper never wrote a frame of (a `HEAD` answer, a
    /// connection ending): waiting for the next request, its permit back.
    pub(super) fn not_sent(&self) {
        if self.phase.load(Ordering::Relaxed) != SEND {
            self.idle();
        }
    }

    /// The handler answered 2xx.
    pub(super) fn handler_ok(&self) {
        self.handler_ok.store(true, Ordering::Relaxed);
    }

    /// Whether the handler of the response being handed to hyper answered
    /// 2xx (a response of the server's own, such as a refusal, did not).
    pub(super) fn take_handler_ok(&self) -> bool {
        let ok = self.handler_ok.load(Ordering::Relaxed);
        if ok {
            self.handler_ok.store(false, Ordering::Relaxed);
        }
        ok
    }

    /// hyper has taken the end of a handler's 2xx answer (its last frame,
    /// or its head alone): it counts as `completed` once written.
    pub(super) fn answered(&self) {
        let n = self.answered.load(Ordering::Relaxed);
        self.answered.store(n + 1, Ordering::Relaxed);
    }

    /// A handler's 2xx answer of which hyper took a frame but not the
    /// last: the connection ended under it.
    pub(super) fn cut(&self) {
        self.state.undelivered.fetch_add(1, Ordering::Relaxed);
    }

    /// hyper flushed the socket: every answer whose end it had taken is
    /// written (counted before its permit goes back, so that `/stats`
    /// never shows the bytes back and the answer uncounted). If it had
    /// taken the response's last frame, the response's permit goes back,
    /// and the connection waits for its next request.
    fn flushed(&self) {
        // Only this connection's task touches the count: a load and a
        // store, no locked instruction per flush.
        let written = self.answered.load(Ordering::Relaxed);
        if written > 0 {
            self.answered.store(0, Ordering::Relaxed);
            self.state
                .completed
                .fetch_add(u64::from(written), Ordering::Relaxed);
        }
        if self.phase.load(Ordering::Relaxed) == SEND && self.ended.load(Ordering::Relaxed) {
            self.idle();
        }
    }

    /// `n` bytes of a response were written: the client is taking it.
    fn on_write(&self, n: usize) {
        if n > 0 && self.phase.load(Ordering::Relaxed) == SEND {
            self.since.store(self.now(), Ordering::Relaxed);
        }
    }

    /// The response was sent (and any answered before it): waiting for
    /// the next request, the permits back.
    fn idle(&self) {
        let sent = core::mem::take(&mut *self.permits.lock().unwrap_or_else(|e| e.into_inner()));
        drop(sent);
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
                Some((since + (t.body + allowance).min(t.body_max), Missed::Body))
            }
            IDLE => Some((since + t.idle, Missed::Idle)),
            SEND => Some((since + t.send, Missed::Send)),
            _ => None,
        }
    }
}

impl Drop for ConnClock {
    /// Answers whose end hyper took but never wrote (the client was gone,
    /// or its connection cut) are counted as not delivered.
    fn drop(&mut self) {
        let lost = *self.answered.get_mut();
        if lost > 0 {
            self.state
                .undelivered
                .fetch_add(u64::from(lost), Ordering::Relaxed);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Missed {
    Header,
    Body,
    Idle,
    Send,
}

impl Missed {
    pub(super) fn count(self, state: &State) {
        let counter = match self {
            Missed::Header => &state.timeouts_header,
            Missed::Body => &state.timeouts_body,
            Missed::Idle => &state.timeouts_idle,
            Missed::Send => &state.timeouts_send,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn message(self) -> &'static str {
        match self {
            Missed::Header => "request head not received within the header timeout",
            Missed::Body => "request body slower than the body timeout and minimum rate, or past the body's time in all",
            Missed::Idle => "idle keep-alive connection timed out",
            Missed::Send => "the client took none of its response within the send timeout",
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
    /// The deadline that was missed (and counted), if one was.
    missed: Option<Missed>,
}

impl TimedIo {
    pub(super) fn new(stream: TcpStream, clock: Arc<ConnClock>, state: Arc<State>) -> TimedIo {
        TimedIo {
            stream,
            clock,
            state,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
            missed: None,
        }
    }

    pub(super) fn into_inner(self) -> TcpStream {
        self.stream
    }

    /// The deadline the connection missed, if it did.
    pub(super) fn missed(&self) -> Option<Missed> {
        self.missed
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
        this.poll_deadline(cx, false).map(Err)
    }
}

impl TimedIo {
    /// Pending until the current phase's deadline (with `send_only`, only
    /// in `Send`: the write side's wait), then the timeout's error, counted
    /// once.
    fn poll_deadline(&mut self, cx: &mut Context<'_>, send_only: bool) -> Poll<io::Error> {
        let Some((deadline, missed)) = self.clock.deadline(&self.state.timeouts) else {
            return Poll::Pending;
        };
        if send_only && missed != Missed::Send {
            return Poll::Pending;
        }
        if self.armed != Some(deadline) {
            self.sleep.as_mut().reset(deadline.into());
            self.armed = Some(deadline);
        }
        // The timer fires at the armed deadline, which is the current
        // phase's: no clock read of our own.
        if self.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if self.missed.is_none() {
            self.missed = Some(missed);
            missed.count(&self.state);
        }
        Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, missed.message()))
    }

    /// What a write of the socket `r` means: bytes the client took (the
    /// `Send` phase's progress), or, with no room for them, pending, or
    /// past the `Send` deadline its error (hyper need not be reading
    /// meanwhile).
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) => {
                self.clock.on_write(n);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(e) => Poll::Ready(e),
            Poll::Pending => self.poll_deadline(cx, true).map(Err),
        }
    }
}

impl AsyncWrite for TimedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.wrote(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.wrote(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // hyper flushes the socket once its write buffer is empty: all it
        // took is written.
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_flush(cx);
        if let Poll::Ready(Ok(())) = r {
            this.clock.flushed();
        }
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
