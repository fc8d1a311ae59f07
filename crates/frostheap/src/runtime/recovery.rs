//! What a phase does about violations (docs/rollback.md): staffing the
//! phase within the parked-thread cap, waiting for the workers without
//! ever waiting forever, undoing the stores of the rollback policy and
//! dropping its violators' frees, and turning the workers' records into
//! reports. `phase.rs` calls these at fixed points of the protocol; the
//! batch engine sees the outcome through [`PhaseResult`] alone.
//!
//! **Never `Ok` unless every task ran.** A phase starts only with all of
//! its workers: parked workers are replaced before the freeze while the
//! runtime has fewer than `max_parked` parked threads (so its threads never
//! exceed workers + `max_parked`), and a phase that cannot be fully staffed —
//! the cap is reached, or no context slot is free for a replacement — is
//! refused with [`Error::Incomplete`] before anything runs.
//!
//! **Never hang after a violation.** A worker parked by the cancel policy
//! keeps every lock its task held, so other tasks may wait for it forever:
//! in its own phase, and in every later phase of the runtime whose tasks
//! take such a lock. Once a worker has parked in the phase, or while
//! workers parked by earlier phases' violations remain, main waits with a
//! timeout and watches the phase: an event (a worker finished its share or parked) or
//! CPU time used by a worker still in it is progress. After
//! `no_progress_timeout` without either, main abandons the workers still
//! in the phase (`trap::abandon`: each is stopped for good where it
//! stands, as a cancelled violator is), says so on stderr, and the phase
//! ends with `Err(Violation)` carrying a note that those tasks were most
//! likely blocked on a lock the cancelled task holds — or, in a phase with
//! no violation of its own, with `Err(Incomplete)` saying the same of the
//! tasks parked by earlier phases (until 2026-12-05 such a phase waited
//! forever). In such a phase only tasks blocked in a `futex` wait are
//! abandoned (a task asleep, or in a read, is not taken for blocked on a
//! lock). A task that spins waiting (no `futex`) uses CPU time and counts
//! as running.

use core::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::phase::PhaseResult;
use super::pool::Runtime;
use super::worker::Worker;
use crate::error::Error;
use crate::fmt_buf::Buf;
use crate::guard::undo::Ticket;
use crate::guard::{self, AUDIT_RECORDS};
use crate::os;
use crate::trap::{abandon, backtrace, Access, OnViolation, Violation};

/// How long a phase may make no progress after a violation parked one of
/// its workers before the workers still in it are abandoned.
pub const DEFAULT_NO_PROGRESS_TIMEOUT: Duration = Duration::from_secs(3);

/// CPU time a worker must use between two looks for it to count as
/// running (a thread blocked in `futex` uses none; spurious wake-ups use
/// microseconds).
const CPU_PROGRESS_NS: u64 = 1_000_000;

impl Runtime {
    /// Starts replacements for workers parked by earlier violations, before
    /// the freeze (spawning a thread writes memory that may be guarded).
    /// Refuses the phase when a missing worker cannot be replaced: the
    /// runtime's parked threads passed `max_parked`, or a replacement
    /// could not start.
    pub(super) fn staff(&self) -> Result<(), Error> {
        loop {
            let missing = self.missing_workers.load(Ordering::Acquire);
            if missing == 0 {
                return Ok(());
            }
            let parked = self.control.parked.load(Ordering::Acquire) as usize;
            if parked >= self.max_parked {
                return Err(Error::Incomplete {
                    reason: format!(
                        "{parked} worker threads of this runtime are parked after violations {}, at or past \
                         max_parked ({}), so it starts no more replacements and runs no phase with \
                         fewer than its {} workers. Fix the tasks that write frozen memory, {}raise \
                         Runtime::builder().max_parked(..), or build a new runtime",
                        if self.control.policy == OnViolation::Rollback {
                            "whose stores could not be stepped through (the rollback policy cancels such a task)"
                        } else {
                            "under the cancel policy"
                        },
                        self.max_parked,
                        self.n_workers,
                        if self.control.policy == OnViolation::Rollback {
                            "stop the tasks' stores to frozen memory, "
                        } else {
                            "use the rollback policy (which parks no thread but for a store it cannot step), "
                        }
                    ),
                });
            }
            if let Err(e) = self.add_worker() {
                return Err(Error::Incomplete {
                    reason: format!(
                        "a worker parked by an earlier violation could not be replaced ({e}), and no phase \
                         runs with fewer than the runtime's {} workers",
                        self.n_workers
                    ),
                });
            }
            self.missing_workers.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Waits until every worker of the phase has finished its share or
    /// parked (`remaining` counts down as they finish; parked workers never
    /// do, and are counted in `parked`). After a worker parked in this
    /// phase, or when `parked_before` workers of earlier phases are parked
    /// (each keeping the locks its task held), stops waiting for workers
    /// that make no progress (see the file comment). Returns how many
    /// workers were abandoned.
    ///
    /// Runs between freeze and thaw: it must not allocate or write memory a
    /// guarded heap holds (the stderr line is formatted on the stack).
    pub(super) fn wait_for_workers(&self, parked_before: u32) -> usize {
        let ctl = self.control;
        let timeout = self.no_progress_timeout;
        let poll = (timeout / 8).clamp(Duration::from_millis(10), Duration::from_millis(250));
        let mut abandoned = 0usize;
        // (last progress seen, CPU time of the workers still in the phase).
        let mut watch: Option<(Instant, u64)> = None;
        loop {
            let ev = ctl.events.load(Ordering::Acquire);
            let newly_parked = ctl.parked.load(Ordering::Acquire) - parked_before;
            if ctl.remaining.load(Ordering::Acquire) <= newly_parked {
                return abandoned;
            }
            if newly_parked == 0 && parked_before == 0 {
                os::wait_while_eq(&ctl.events, ev);
                continue;
            }
            let (since, cpu) = *watch.get_or_insert_with(|| (Instant::now(), self.cpu_in_phase()));
            os::futex_wait(&ctl.events, ev, Some(poll.as_nanos() as u64));
            if ctl.events.load(Ordering::Acquire) != ev {
                watch = None;
                continue;
            }
            let now_cpu = self.cpu_in_phase();
            if now_cpu >= cpu + CPU_PROGRESS_NS {
                watch = Some((Instant::now(), now_cpu));
                continue;
            }
            if since.elapsed() < timeout {
                continue;
            }
            // With no violation of its own, only tasks waiting on a lock
            // (or a condition variable, a channel) are taken for blocked
            // on one a parked worker keeps.
            let (newly, pending) = self.abandon_stalled(newly_parked == 0);
            if newly > 0 {
                abandoned += newly;
                let mut buf = [0u8; 320];
                os::write_stderr(
                    Buf::new(&mut buf)
                        .str("frostheap: ")
                        .dec(newly as u64)
                        .str(" task(s) made no progress for ")
                        .dec(timeout.as_millis() as u64)
                        .str(if newly_parked > 0 {
                            " ms after a violation parked a worker: cancelling them too (they are most likely blocked on a lock the cancelled task holds); the phase ends with Err(Violation)\n"
                        } else {
                            " ms while workers parked by earlier violations keep the locks their tasks held: cancelling them (they are most likely blocked on such a lock); the phase ends with Err(Incomplete)\n"
                        })
                        .finish(),
                );
            }
            if newly == 0 && pending == 0 {
                // Nothing left to abandon: the rest is parking now.
                os::yield_now();
            }
            watch = Some((Instant::now(), self.cpu_in_phase()));
        }
    }

    /// CPU time used so far by the workers still running the phase's job.
    fn cpu_in_phase(&self) -> u64 {
        self.lock_workers()
            .iter()
            .filter(|w| w.slot.job.load(Ordering::Acquire) == guard::JOB_RUNNING)
            .filter_map(|w| os::thread_cpu_ns(w.slot.tid.load(Ordering::Acquire)))
            .sum()
    }

    /// Abandons every worker still running the phase's job (with
    /// `only_in_futex`, those of them blocked in a `futex` wait: a lock
    /// such as one a parked worker keeps), and signals again those
    /// abandoned earlier that have not parked yet. Returns (newly
    /// abandoned, still to park).
    fn abandon_stalled(&self, only_in_futex: bool) -> (usize, usize) {
        let (mut newly, mut pending) = (0, 0);
        for w in self.lock_workers().iter() {
            let tid = w.slot.tid.load(Ordering::Acquire);
            if only_in_futex
                && w.slot.job.load(Ordering::Acquire) == guard::JOB_RUNNING
                && os::thread_in_futex_wait(tid) != Some(true)
            {
                // Asleep, in a read, waiting for a child: not on a lock.
                continue;
            }
            if abandon::abandon(w.slot, tid) {
                newly += 1;
            } else if w.slot.job.load(Ordering::Acquire) == guard::JOB_ABANDONED {
                abandon::nudge(tid);
                pending += 1;
            }
        }
        (newly, pending)
    }

    /// After the thaw, before anything else touches the guarded heaps:
    /// undoes the rollback policy's stores, applies the frees the tasks
    /// deferred (except those of workers that violated under rollback),
    /// and turns the workers' records into the phase's result. `abandoned`
    /// workers were stopped for making no progress after a violation;
    /// `ticket` counted the phase in flight (rollback, `guard::undo`);
    /// `policy` is the phase's, and `keep` says it is audit in place of
    /// the runtime's rollback (`Runtime::run_phase`): its stores stay, and
    /// are reported as the phase's violations.
    pub(super) fn recover(
        &self,
        abandoned: usize,
        ticket: Option<Ticket>,
        policy: OnViolation,
        keep: bool,
    ) -> PhaseResult {
        // A store a worker's undo log had no room for was let through: the
        // phase keeps every store, as under audit, and undoes none (a part
        // undone would leave what the tasks built half as it was).
        let mut overflowed = false;
        let undone = if let Some(ticket) = ticket {
            // Every worker has ended the phase and the heaps are writable
            // for main: undo the violating stores, newest first, before
            // anything else uses the heaps (docs/rollback.md).
            let workers = self.lock_workers();
            // A worker parked inside a step holds the replays' gate
            // (guard::undo): let it go before replaying, ours or another's.
            for w in workers.iter() {
                if w.slot.is_parked.load(Ordering::Acquire) {
                    w.slot.undo.abandon_pending();
                }
            }
            overflowed = workers.iter().any(|w| w.slot.undo.overflowed());
            if overflowed {
                for w in workers.iter() {
                    w.slot.undo.reset();
                }
            }
            // SAFETY: each entry names bytes of a guarded heap this runtime
            // holds, written during the phase and writable now. (The
            // replay of emptied logs still ends the phase's ticket.)
            unsafe { guard::undo::replay_phase(workers.iter().map(|w| &w.slot.undo), ticket) }
        } else {
            0
        };
        // Deferred frees, now that the heaps are writable again; those of a
        // worker that violated under rollback are dropped: an undone store
        // may have brought back a pointer to a block its task freed (a
        // leak is safe). A parked worker's list is dropped too: its task
        // never ended.
        for w in self.lock_workers().iter() {
            let violated =
                policy == OnViolation::Rollback && w.slot.audit_count.load(Ordering::Acquire) > 0;
            if violated || w.slot.is_parked.load(Ordering::Acquire) {
                w.slot.deferred.drain(|_| {});
            } else {
                // SAFETY: each address is a block of a guarded heap (which
                // this runtime holds) that a task freed once, during the
                // phase.
                w.slot
                    .deferred
                    .drain(|p| unsafe { crate::heap::free_deferred(p) });
            }
        }
        let mut result = self.collect_violations(policy, keep);
        result.undone = undone;
        if overflowed {
            // What was applied: the audit policy's outcome.
            for v in &mut result.violations {
                v.policy = OnViolation::Audit;
            }
        }
        // The error carries the first violation: it names every other.
        let others: Vec<(usize, Option<usize>)> = result
            .violations
            .iter()
            .skip(1)
            .map(|v| (v.address(), v.item_index()))
            .collect();
        if let Some(first) = result.violations.first_mut() {
            first.stores_undone = undone;
            first.others = others;
            first.unlisted = result.unlisted;
            first.cancelled = result.cancelled;
            first.abandoned = abandoned;
            first.no_progress_timeout = self.no_progress_timeout;
            first.kept = keep || overflowed;
            first.log_filled = overflowed;
        } else if abandoned > 0 {
            // No violation of its own: its tasks waited on locks that the
            // workers parked by earlier phases' violations keep.
            result.stalled = Some(Error::Incomplete {
                reason: format!(
                    "{abandoned} task(s) of this phase made no progress for {} ms while worker threads that \
                     earlier violations parked under the cancel policy keep every lock their tasks held: \
                     they were cancelled, as most likely blocked on such a lock, and the phase's results \
                     are discarded. Those locks stay held for good: use new ones (or a new runtime), or \
                     the rollback policy, which parks no thread (but for a store it cannot step)",
                    self.no_progress_timeout.as_millis()
                ),
            });
        }
        result
    }

    /// Turns the workers' records since the last phase into reports: audit
    /// records into the audit log, rollback and kernel-write records and
    /// parked workers into the phase's violations. Parked workers are
    /// forgotten (their threads never end) and replaced before the next
    /// phase ([`Runtime::staff`]). `policy` is the phase's; with `keep`,
    /// audit records are the phase's violations too.
    fn collect_violations(&self, policy: OnViolation, keep: bool) -> PhaseResult {
        let backend = self.control.backend;
        // Records that make the phase's error (rollback's, and audit's in
        // place of rollback) rather than the audit log.
        let reported = policy == OnViolation::Rollback || keep;
        // One report from one record of worker `w`.
        let report = |w: &Worker, addr: usize, ip: usize, tid: u32, item: usize, access: Access| {
            let name = w
                .thread
                .as_ref()
                .and_then(|t| t.thread().name().map(str::to_string));
            Violation::from_raw(addr, ip, tid, name, item, access, backend, policy)
        };
        let mut violations = Vec::new();
        // Violating stores counted past each worker's first AUDIT_RECORDS,
        // which have no record (rollback: the phase's report counts them).
        let mut unlisted = 0;
        // Tasks the rollback policy cancelled (their undo log filled).
        let mut cancelled = 0;
        // Stores audited, recorded or not (counted in
        // `RuntimeStats::violations` here; the phase's violations are
        // counted by `run_phase`).
        let mut audited = 0u64;
        let mut parked_items = Vec::new();
        let mut workers = self.lock_workers();
        for w in workers.iter() {
            // Audit and rollback records: the worker's ring since the last
            // phase (audit: into the log; rollback: the phase's violations,
            // the first with the worker's backtrace).
            let count = w.slot.audit_count.swap(0, Ordering::AcqRel) as usize;
            let frames = if count > 0 {
                backtrace::frames_of(&w.slot.stack).unwrap_or_default()
            } else {
                Vec::new()
            };
            if reported {
                unlisted += count.saturating_sub(AUDIT_RECORDS);
            } else {
                audited += count as u64;
            }
            for (k, rec) in w
                .slot
                .audit
                .iter()
                .take(count.min(AUDIT_RECORDS))
                .enumerate()
            {
                let mut v = report(
                    w,
                    rec.addr.load(Ordering::Relaxed),
                    rec.ip.load(Ordering::Relaxed),
                    rec.tid.load(Ordering::Relaxed),
                    rec.item.load(Ordering::Relaxed),
                    Access::Write,
                );
                if k == 0 {
                    v.frames = frames.clone();
                }
                if reported {
                    violations.push(v);
                } else {
                    self.audit_log
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(v);
                }
            }
            // A kernel write found by the io helpers (the task got an error).
            let r = &w.slot.kernel;
            if r.state.swap(0, Ordering::AcqRel) == 1 {
                let (addr, tid, item) = (
                    r.addr.load(Ordering::Relaxed),
                    r.tid.load(Ordering::Relaxed),
                    r.item.load(Ordering::Relaxed),
                );
                violations.push(report(w, addr, 0, tid, item, Access::KernelWrite));
            }
        }
        // Parked workers not yet reported: cancelled violators (their
        // record is written) and abandoned workers (none: they did not
        // violate). The item each was running lives on its stopped stack.
        let mut parked = 0;
        for w in workers.iter_mut() {
            if w.reported || !w.slot.is_parked.load(Ordering::Acquire) {
                continue;
            }
            w.reported = true;
            parked += 1;
            let r = &w.slot.record;
            if r.state.load(Ordering::Acquire) == 1 {
                let item = r.item.load(Ordering::Relaxed);
                parked_items.push(item);
                let (addr, ip, tid) = (
                    r.addr.load(Ordering::Relaxed),
                    r.ip.load(Ordering::Relaxed),
                    r.tid.load(Ordering::Relaxed),
                );
                let mut v = report(w, addr, ip, tid, item, Access::Write);
                v.frames = backtrace::frames_of(&w.slot.stack).unwrap_or_default();
                if policy == OnViolation::Rollback {
                    // Its store could not be stepped (never let through
                    // alone): the task was cancelled instead.
                    cancelled += 1;
                }
                violations.push(v);
            } else {
                // Abandoned: the item it was running, if any (stored by the
                // worker when it parked).
                let item = r.item.load(Ordering::Relaxed);
                if item != usize::MAX {
                    parked_items.push(item);
                }
            }
            // The parked thread never finishes: forget its handle.
            if let Some(t) = w.thread.take() {
                core::mem::forget(t);
            }
        }
        if parked > 0 {
            workers.retain(|w| !w.reported);
            drop(workers);
            self.missing_workers.fetch_add(parked, Ordering::AcqRel);
            let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            s.parked_workers += parked as u64;
        }
        if audited > 0 {
            // Audit's reports are violations reported too (they stayed 0
            // while the log grew).
            let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            s.violations += audited;
        }
        PhaseResult {
            violations,
            unlisted,
            cancelled,
            parked_items,
            refused: None,
            workers: 0,
            stalled: None,
            undone: 0,
        }
    }
}
