//! From the fault handler's numbers to a [`Violation`]: the handler
//! records plain numbers only (`guard::ViolationRecord`); [`Violation::from_raw`]
//! looks up the heap and block on the main thread, where allocating is
//! allowed. The one exception is [`render_raw`], the report the abort and
//! cancel policies write from the handler, with `write(2)` from a stack
//! buffer, when the violation happens.

use super::{Access, Backend, OnViolation, Violation};
use crate::fmt_buf::Buf;
use crate::guard;
use crate::heap::HeapInner;

impl Violation {
    /// Builds a report from the handler's numbers, looking up the heap and
    /// block and symbolising the instruction.
    #[allow(clippy::too_many_arguments)] // one per field the handler records
    pub(crate) fn from_raw(
        address: usize,
        ip: usize,
        thread_id: u32,
        thread_name: Option<String>,
        item: usize,
        access: Access,
        backend: Backend,
        policy: OnViolation,
    ) -> Violation {
        let (heap_name, heap_base, allocation) = match guard::entry_of(address) {
            // SAFETY: the heap written is alive while this report is built
            // on the main thread: a guarded heap is held by the runtime, a
            // sealed one is never dropped.
            Some(e) => match unsafe { HeapInner::of_entry(e) } {
                Some(h) => (
                    h.name.to_string(),
                    h.core.region().base() as usize,
                    h.core.allocation_containing(address),
                ),
                None => ("?".into(), e.start(), None),
            },
            None => ("(unknown)".into(), 0, None),
        };
        Violation {
            address,
            heap_name,
            heap_base,
            allocation,
            access,
            thread_id,
            thread_name,
            item_index: (item != usize::MAX).then_some(item),
            ip,
            backend,
            policy,
            stores_undone: 0,
            values_kept: 0,
            kept: false,
            log_filled: false,
            others: Vec::new(),
            unlisted: 0,
            cancelled: 0,
            abandoned: 0,
            no_progress_timeout: core::time::Duration::ZERO,
            frames: Vec::new(),
            resolved: std::sync::OnceLock::new(),
        }
    }
}

/// The report written from the fault handler when the violation happens
/// (abort and cancel), formatted without allocating; `outcome` is its last
/// line, what the policy does about it.
pub(crate) fn render_raw<'a>(
    buf: &'a mut [u8],
    addr: usize,
    ip: usize,
    tid: u32,
    item: usize,
    code: i32,
    outcome: &str,
) -> &'a [u8] {
    let mut b = Buf::new(buf)
        .str("==frostheap== VIOLATION: write to a frozen heap at 0x")
        .hex(addr);
    if let Some(e) = guard::entry_of(addr) {
        b = b.str(" (heap offset 0x").hex(addr - e.start()).str(")");
        // SAFETY: the heap written is alive while its worker runs a task
        // (the runtime holds it, or it is sealed and never dropped); its
        // name and page table are only read.
        if let Some(h) = unsafe { HeapInner::of_entry(e) } {
            b = b.str(" in heap \"").str(&h.name).str("\"");
            if let Some((base, size)) = h.core.allocation_containing(addr) {
                b = b
                    .str("\n  block 0x")
                    .hex(base)
                    .str(", ")
                    .dec(size as u64)
                    .str(" bytes; the write is ")
                    .dec((addr - base) as u64)
                    .str(" bytes into it");
            }
        }
    }
    b = b.str("\n  thread tid ").dec(tid as u64);
    if item != usize::MAX {
        b = b.str(", task item #").dec(item as u64);
    }
    b.str("\n  instruction 0x")
        .hex(ip)
        .str(if code == super::frame::SEGV_PKUERR {
            " (protection-key fault)"
        } else {
            " (mprotect fault)"
        })
        .str("\n  ")
        .str(outcome)
        .str("\n")
        .finish()
}
