//! The phase protocol around one job (docs/design.md, "The phase protocol").
//!
//! [`Runtime::run_phase`] replaces workers parked by earlier violations
//! (or refuses to run), freezes every guarded heap, publishes the job and
//! wakes the workers, waits until each has finished or been parked, thaws,
//! and hands over to `recovery`: undoing violating stores, applying the
//! frees the tasks deferred, and turning the workers' records into
//! reports.
//!
//! Main must never write frozen memory (it would wait for its own thaw), and
//! the `Runtime` itself may live in a guarded heap: everything the phase
//! needs from it is read before the freeze, and nothing between freeze and
//! thaw allocates.

use core::sync::atomic::Ordering;

use super::pool::Runtime;
use super::worker::{JobRef, WorkerEnv};
use crate::error::Error;
use crate::guard;
use crate::os;
use crate::trap::{Freeze, OnViolation, Violation};

/// Outcome of one phase, as the batch engine sees it.
pub(super) struct PhaseResult {
    pub(super) violations: Vec<Violation>,
    /// Violating stores past each worker's first
    /// [`AUDIT_RECORDS`](crate::guard::AUDIT_RECORDS) under rollback,
    /// counted and not listed in `violations`.
    pub(super) unlisted: usize,
    /// Tasks the rollback policy cancelled because a store could not be
    /// stepped through alone (their workers parked).
    pub(super) cancelled: usize,
    /// Items whose tasks were running on workers parked in this phase.
    pub(super) parked_items: Vec<usize>,
    /// The phase did not run: it could not start with all of its workers
    /// (`Runtime::staff`).
    pub(super) refused: Option<Error>,
    /// Workers the phase started with.
    pub(super) workers: usize,
    /// The phase had no violation of its own, but tasks that made no
    /// progress while workers parked by earlier violations keep their
    /// locks were abandoned (`Runtime::wait_for_workers`): an
    /// [`Error::Incomplete`] that says so.
    pub(super) stalled: Option<Error>,
    /// Violating stores the rollback policy undid. What the tasks made
    /// from those stores (a result holding an `Arc` whose count increment
    /// was undone) disagrees with the heaps now, so the batch engine never
    /// drops it ([`super::terminal::Terminal::leak_batch`]).
    pub(super) undone: usize,
}

impl Runtime {
    /// Runs `job` on the workers as one phase; `window` (the result slots'
    /// pages, when they lie in a guarded heap) stays writable. With `keep`
    /// (a rollback runtime's phase whose tasks get `&mut` access to values
    /// that own memory, [`super::source::ParSource::LENDS_OWNERS`]),
    /// violating stores are let through and kept, as the audit policy
    /// keeps them, and reported as the phase's error: undone, they would
    /// leave such a value disagreeing with the memory it owns (a `Vec`
    /// whose length counts an element the undo took back), which the
    /// caller still holds and drops. With `skippable` (the job's work is
    /// claimed dynamically, [`JobRef::skippable`]), workers that have not
    /// started the job when one has finished it skip the phase.
    pub(super) fn run_phase(
        &self,
        job: &(dyn Fn(&WorkerEnv<'_>) + Sync),
        skippable: bool,
        window: Option<(usize, usize)>,
        keep: bool,
    ) -> PhaseResult {
        assert!(
            !self.in_phase.swap(true, Ordering::AcqRel),
            "frostheap: a phase was started from inside a phase (nested map/scope on the same runtime)"
        );
        if let Err(e) = self.staff() {
            self.in_phase.store(false, Ordering::Release);
            return PhaseResult {
                violations: Vec::new(),
                unlisted: 0,
                cancelled: 0,
                parked_items: Vec::new(),
                refused: Some(e),
                workers: 0,
                stalled: None,
                undone: 0,
            };
        }
        let ctl = self.control;
        // The phase's policy, in every worker's state before the phase
        // starts (the epoch's release below publishes it).
        let policy = if keep && ctl.policy == OnViolation::Rollback {
            OnViolation::Audit
        } else {
            ctl.policy
        };
        let keep = policy != ctl.policy;
        for w in self.lock_workers().iter() {
            w.slot.policy.store(policy as u32, Ordering::Relaxed);
        }
        // Everything main needs from `self` is read before the freeze: the
        // Runtime value itself may live in a guarded heap, and main must
        // not write frozen memory (it would wait for its own thaw).
        let parked_before = ctl.parked.load(Ordering::Acquire);
        let active = self.lock_workers().len() as u32;
        // Under rollback the phase is counted in flight before any of its
        // workers can store, so that other runtimes' replays in the
        // meantime keep what they cannot restore yet for it (guard::undo).
        let ticket = (policy == OnViolation::Rollback).then(guard::undo::phase_begins);
        // The freeze protocol is trap::Freeze's; dropping it thaws.
        let freeze = Freeze::new(&self.guards, ctl.backend, window);
        let job_ref = JobRef {
            run: job,
            skippable,
        };
        ctl.remaining.store(active, Ordering::Release);
        // Every worker waits at the gate of the phase the epoch moves to.
        ctl.open_gate(ctl.epoch.load(Ordering::Relaxed).wrapping_add(1), active);
        // SAFETY (lifetime): job_ref outlives the phase: we wait below
        // until every worker has finished, been skipped (never to read it)
        // or been parked.
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
        // Every worker finishes or parks; after a violation, workers that
        // make no progress are abandoned (runtime::recovery).
        let abandoned = self.wait_for_workers(parked_before);
        ctl.job.store(core::ptr::null_mut(), Ordering::Release);
        drop(freeze);
        self.in_phase.store(false, Ordering::Release);
        // Undo, deferred frees, reports: runtime::recovery.
        let mut result = self.recover(abandoned, ticket, policy, keep);
        result.workers = active as usize;
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        s.phases += 1;
        s.violations += (result.violations.len() + result.unlisted) as u64;
        result
    }
}
