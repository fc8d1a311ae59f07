//! The phase protocol around one job (DESIGN.md, "The phase protocol").
//!
//! [`Runtime::run_phase`] replaces workers parked by earlier violations,
//! freezes every guarded heap (a `trap::Freeze`, whose drop thaws),
//! publishes the job and wakes the workers,
//! waits until each has finished or been parked, thaws, applies the frees
//! the tasks deferred, and turns the workers' violation records into
//! reports ([`Runtime::collect_violations`]).
//!
//! Main must never write frozen memory (it would wait for its own thaw), and
//! the `Runtime` itself may live in a guarded heap: everything the phase
//! needs from it is read before the freeze, and nothing between freeze and
//! thaw allocates.

use core::sync::atomic::Ordering;

use super::pool::Runtime;
use super::worker::{JobRef, Worker, WorkerEnv};
use crate::guard::AUDIT_RING;
use crate::os;
use crate::trap::{Access, Freeze, Violation};

/// Outcome of one phase, as the batch engine sees it.
pub(super) struct PhaseResult {
    pub(super) violations: Vec<Violation>,
    /// Items whose tasks were running on workers parked in this phase.
    pub(super) parked_items: Vec<usize>,
    /// Workers the phase started with.
    pub(super) workers: usize,
}

impl Runtime {
    /// Runs `job` on every worker as one phase; `window` (the result slots'
    /// pages, when they lie in a guarded heap) stays writable.
    pub(super) fn run_phase(
        &self,
        job: &(dyn Fn(&WorkerEnv<'_>) + Sync),
        window: Option<(usize, usize)>,
    ) -> PhaseResult {
        assert!(
            !self.in_phase.swap(true, Ordering::AcqRel),
            "frostheap: a phase was started from inside a phase (nested map/scope on the same runtime)"
        );
        self.replace_parked_workers();
        let ctl = self.control;
        // Everything main needs from `self` is read before the freeze: the
        // Runtime value itself may live in a guarded heap, and main must
        // not write frozen memory (it would wait for its own thaw).
        let parked_before = ctl.parked.load(Ordering::Acquire);
        let active = self.lock_workers().len() as u32;
        // The freeze protocol is trap::Freeze's; dropping it thaws.
        let freeze = Freeze::new(&self.guards, ctl.backend, window);
        let job_ref = JobRef(job);
        ctl.remaining.store(active, Ordering::Release);
        // SAFETY (lifetime): job_ref outlives the phase: we wait below
        // until every worker has finished or been parked.
        ctl.job.store(
            &job_ref as *const JobRef<'_> as *mut JobRef<'static>,
            Ordering::Release,
        );
        ctl.epoch.fetch_add(1, Ordering::AcqRel);
        // Main wakes one sleeping worker and each worker that starts the
        // phase wakes two more (a tree): every wake-up after the first comes
        // from a CPU that is busy, so the scheduler spreads the wakees over
        // idle CPUs instead of queueing them all on the one it saw idle.
        os::futex_wake(&ctl.epoch, 1);
        loop {
            let ev = ctl.events.load(Ordering::Acquire);
            let newly_parked = ctl.parked.load(Ordering::Acquire) - parked_before;
            if ctl.remaining.load(Ordering::Acquire) <= newly_parked {
                break;
            }
            os::wait_while_eq(&ctl.events, ev);
        }
        ctl.job.store(core::ptr::null_mut(), Ordering::Release);
        drop(freeze);
        self.in_phase.store(false, Ordering::Release);
        // Deferred frees, now that the heaps are writable again.
        for w in self.lock_workers().iter() {
            // SAFETY: each address is a block of a guarded heap (which this
            // runtime holds) that a task freed once, during the phase.
            w.slot
                .deferred
                .drain(|p| unsafe { crate::heap::free_deferred(p) });
        }
        let mut result = self.collect_violations();
        result.workers = active as usize;
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        s.phases += 1;
        s.violations += result.violations.len() as u64;
        result
    }

    /// Starts replacements for workers parked by earlier violations. This
    /// runs before the freeze: spawning a thread writes memory that may be
    /// guarded.
    fn replace_parked_workers(&self) {
        for _ in 0..self.missing_workers.swap(0, Ordering::AcqRel) {
            if let Err(e) = self.add_worker() {
                os::write_stderr(
                    format!("frostheap: cannot start a replacement worker: {e}\n").as_bytes(),
                );
            }
        }
    }

    /// Turns the workers' records since the last phase into reports: audit
    /// records into the audit log, kernel writes and parked workers into
    /// violations; parked workers are forgotten and replaced at the next
    /// phase, and past the parked cap the process stops.
    fn collect_violations(&self) -> PhaseResult {
        let (backend, policy) = (self.control.backend, self.control.policy);
        // One report from one record of worker `w`.
        let report = |w: &Worker, addr: usize, ip: usize, tid: u32, item: usize, access: Access| {
            let name = w
                .thread
                .as_ref()
                .and_then(|t| t.thread().name().map(str::to_string));
            Violation::from_raw(addr, ip, tid, name, item, access, backend, policy)
        };
        let mut violations = Vec::new();
        let mut parked_items = Vec::new();
        let mut workers = self.lock_workers();
        for w in workers.iter() {
            // Audit records: the worker's ring since the last phase.
            let count = w.slot.audit_count.swap(0, Ordering::AcqRel) as usize;
            for rec in w.slot.audit.iter().take(count.min(AUDIT_RING)) {
                let v = report(
                    w,
                    rec.addr.load(Ordering::Relaxed),
                    rec.ip.load(Ordering::Relaxed),
                    rec.tid.load(Ordering::Relaxed),
                    rec.item.load(Ordering::Relaxed),
                    Access::Write,
                );
                self.audit_log
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(v);
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
        // Cancel records: parked workers not yet reported.
        let mut replaced = 0;
        for w in workers.iter_mut() {
            if w.reported || !w.slot.is_parked.load(Ordering::Acquire) {
                continue;
            }
            w.reported = true;
            replaced += 1;
            let r = &w.slot.record;
            let item = r.item.load(Ordering::Relaxed);
            parked_items.push(item);
            let (addr, ip, tid) = (
                r.addr.load(Ordering::Relaxed),
                r.ip.load(Ordering::Relaxed),
                r.tid.load(Ordering::Relaxed),
            );
            violations.push(report(w, addr, ip, tid, item, Access::Write));
            // The parked thread never finishes: forget its handle.
            if let Some(t) = w.thread.take() {
                core::mem::forget(t);
            }
        }
        if replaced > 0 {
            workers.retain(|w| !w.reported);
            drop(workers);
            let parked = self.control.parked.load(Ordering::Acquire) as usize;
            if parked > self.max_parked {
                let msg = format!(
                    "frostheap: {parked} worker threads are parked after violations (the cap is {}); stopping the process. \
                     Fix the tasks that write frozen memory, or raise Runtime::builder().max_parked(..).\n",
                    self.max_parked
                );
                os::write_stderr(msg.as_bytes());
                std::process::abort();
            }
            // Replacements start at the next phase, not here: the caller
            // gets the error as soon as the phase is over.
            self.missing_workers.fetch_add(replaced, Ordering::AcqRel);
            let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            s.parked_workers += replaced as u64;
        }
        PhaseResult {
            violations,
            parked_items,
            workers: 0,
        }
    }
}
