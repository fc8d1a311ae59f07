//! Blocks crossing threads. The owner allocates millions of small blocks
//! that another thread frees (the remote-free bitmap), and the reverse:
//! a non-owner thread allocates (the locked shared path) and the owner
//! frees. Each block carries tags at both ends, written by its allocator
//! and checked by its freer, so a block handed out twice is caught. At the
//! end `in_use` and `allocations` are back to zero, and committed memory
//! stayed far below the bytes that went through the heap: memory freed by
//! another thread was reused.
//!
//! Counts, in debug and release builds alike: 3 Mi blocks (16..256 B)
//! owner -> other thread, 1 Mi the other way, 2 x 256 Ki both ways at once
//! (about 2 s in a debug build).

use std::alloc::Layout;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread;

use frostheap::Heap;

use crate::check::{tag, SendPtr, MIB};

const BATCH: usize = 1024;
/// Batches in flight at most (bounded channel), so live memory is bounded.
const IN_FLIGHT: usize = 16;

/// A block sent to another thread: pointer, size, index (for the tags).
type Sent = (SendPtr, usize, usize);

fn small_size(i: usize) -> usize {
    16 + (i.wrapping_mul(0x2545_f491) >> 5) % 241
}

/// Allocates block `i` of `size` bytes and tags both ends.
fn alloc_tagged(heap: &Heap, size: usize, i: usize) -> Sent {
    let p = heap
        .try_alloc(Layout::from_size_align(size, 8).unwrap())
        .expect("the stress heap has room");
    // SAFETY: p holds `size` >= 1 bytes.
    unsafe {
        p.as_ptr().write(tag(i));
        p.as_ptr().add(size - 1).write(tag(i) ^ 0x5a);
    }
    (SendPtr(p), size, i)
}

/// Checks the tags of a block and frees it.
fn free_tagged(heap: &Heap, (SendPtr(p), size, i): Sent) {
    // SAFETY: the block is live, holds `size` bytes, and was handed to us.
    unsafe {
        assert_eq!(
            p.as_ptr().read(),
            tag(i),
            "block {i} ({size} B at {p:p}): first byte overwritten"
        );
        assert_eq!(
            p.as_ptr().add(size - 1).read(),
            tag(i) ^ 0x5a,
            "block {i}: last byte overwritten"
        );
        heap.dealloc(p);
    }
}

fn stress_heap() -> Heap {
    Heap::builder().name("remote").max(1 << 30).build().unwrap()
}

/// Allocates `n_blocks` small tagged blocks in batches of [`BATCH`] and
/// sends each batch to the freeing thread; returns the bytes allocated and
/// the largest committed range the heap had.
fn produce(heap: &Heap, n_blocks: usize, tx: &SyncSender<Vec<Sent>>) -> (usize, usize) {
    let (mut bytes, mut max_committed) = (0, 0);
    for first in (0..n_blocks).step_by(BATCH) {
        let batch: Vec<Sent> = (first..first + BATCH)
            .map(|i| {
                let size = small_size(i);
                bytes += size;
                alloc_tagged(heap, size, i)
            })
            .collect();
        tx.send(batch).unwrap();
        max_committed = max_committed.max(committed_range(heap));
    }
    (bytes, max_committed)
}

/// The heap's committed range, purged free spans included. Purged spans
/// are uncharged (`Stats::committed` drops) and charged again on reuse, so
/// the charge sampled now and then during a stress says little about the
/// memory the heap needed. The range grows only when no free span fits.
fn committed_range(heap: &Heap) -> usize {
    let s = heap.stats();
    s.committed + s.purged
}

fn assert_empty_and_bounded(heap: &Heap, n_blocks: usize, bytes: usize, max_committed: usize) {
    let s = heap.stats();
    assert_eq!(s.in_use, 0, "in_use after every block was freed: {s:?}");
    assert_eq!(
        s.allocations, 0,
        "allocations after every block was freed: {s:?}"
    );
    assert_eq!(s.total_allocations, n_blocks as u64, "{s:?}");
    // At most IN_FLIGHT + 2 batches are live at once (~4.5 MiB of blocks);
    // without reuse of remotely freed memory, committed would approach
    // `bytes`.
    assert!(
        max_committed <= 64 * MIB && max_committed <= bytes / 4,
        "committed reached {max_committed} bytes for {bytes} bytes allocated in total: remote frees not reused"
    );
}

test!(owner_allocates_other_thread_frees_millions);
fn owner_allocates_other_thread_frees_millions() {
    let n_blocks = 3 << 20;
    let heap = stress_heap();
    let (tx, rx) = sync_channel::<Vec<Sent>>(IN_FLIGHT);
    let freer = {
        let heap = heap.clone();
        thread::spawn(move || {
            let mut n = 0;
            for batch in rx {
                for b in batch {
                    free_tagged(&heap, b);
                    n += 1;
                }
            }
            n
        })
    };
    let (bytes, max_committed) = produce(&heap, n_blocks, &tx);
    drop(tx);
    assert_eq!(freer.join().unwrap(), n_blocks);
    assert_empty_and_bounded(&heap, n_blocks, bytes, max_committed);

    // The owner goes on: as many blocks as the channel lets be in flight at
    // once fit in no more memory than the stress needed, or than a fresh
    // heap needs for them. (How many were in flight during the stress
    // depends on how well the freer kept up: alone on two CPUs it keeps up,
    // the stress peaks at one commit step, and these blocks need two.)
    let n_again = (IN_FLIGHT + 2) * BATCH;
    let fresh = stress_heap();
    let fresh_blocks: Vec<Sent> = (0..n_again)
        .map(|i| alloc_tagged(&fresh, small_size(i), i))
        .collect();
    let fresh_committed = committed_range(&fresh);
    fresh_blocks
        .into_iter()
        .for_each(|b| free_tagged(&fresh, b));
    let again: Vec<Sent> = (0..n_again)
        .map(|i| alloc_tagged(&heap, small_size(i), i))
        .collect();
    let committed = committed_range(&heap);
    assert!(
        committed <= max_committed.max(fresh_committed),
        "committed range {committed} after the stress, {max_committed} during, \
         {fresh_committed} in a fresh heap for the same blocks"
    );
    again.into_iter().for_each(|b| free_tagged(&heap, b));
    assert_eq!((heap.stats().in_use, heap.stats().allocations), (0, 0));
    eprintln!("remote: {n_blocks} blocks, {bytes} bytes, committed at most {max_committed}");
}

test!(other_thread_allocates_owner_frees_millions);
fn other_thread_allocates_owner_frees_millions() {
    let n_blocks = 1 << 20;
    let heap = stress_heap();
    let (tx, rx) = sync_channel::<Vec<Sent>>(IN_FLIGHT);
    let allocator = {
        let heap = heap.clone();
        thread::spawn(move || produce(&heap, n_blocks, &tx))
    };
    let mut n = 0;
    for batch in rx {
        for b in batch {
            free_tagged(&heap, b);
            n += 1;
        }
    }
    let (bytes, max_committed) = allocator.join().unwrap();
    assert_eq!(n, n_blocks);
    assert_empty_and_bounded(&heap, n_blocks, bytes, max_committed);
}

test!(both_directions_at_once_with_large_blocks);
/// Both directions at once, with large blocks mixed in (their remote frees
/// take another path): the owner and a second thread each allocate, and
/// each frees what the other allocated, while the owner also frees some
/// of its own blocks.
fn both_directions_at_once_with_large_blocks() {
    let n_each = 256 * BATCH;
    let heap = stress_heap();
    let (to_other, from_owner) = sync_channel::<Vec<Sent>>(IN_FLIGHT);
    let (to_owner, from_other) = sync_channel::<Vec<Sent>>(IN_FLIGHT);
    let size_of = |i: usize| {
        if i.is_multiple_of(997) {
            150_000 + i % 300_000
        } else {
            small_size(i)
        }
    };
    let other = {
        let heap = heap.clone();
        thread::spawn(move || {
            let mut freed = 0;
            for first in (0..n_each).step_by(BATCH) {
                let batch: Vec<Sent> = (first..first + BATCH)
                    .map(|i| alloc_tagged(&heap, size_of(i), i + (1 << 40)))
                    .collect();
                to_owner.send(batch).unwrap();
                // Free one batch of the owner's for each batch sent.
                if let Ok(batch) = from_owner.recv() {
                    batch.into_iter().for_each(|b| free_tagged(&heap, b));
                    freed += 1;
                }
            }
            drop(to_owner);
            for batch in from_owner {
                batch.into_iter().for_each(|b| free_tagged(&heap, b));
                freed += 1;
            }
            freed
        })
    };
    let mut own = Vec::new();
    for first in (0..n_each).step_by(BATCH) {
        let mut batch: Vec<Sent> = (first..first + BATCH)
            .map(|i| alloc_tagged(&heap, size_of(i), i))
            .collect();
        // Keep every eighth block to free locally later.
        own.extend(batch.iter().step_by(8).copied());
        batch = batch
            .into_iter()
            .enumerate()
            .filter(|(j, _)| j % 8 != 0)
            .map(|(_, b)| b)
            .collect();
        to_other.send(batch).unwrap();
        if let Ok(batch) = from_other.recv() {
            batch.into_iter().for_each(|b| free_tagged(&heap, b));
        }
    }
    drop(to_other);
    for batch in from_other {
        batch.into_iter().for_each(|b| free_tagged(&heap, b));
    }
    own.into_iter().for_each(|b| free_tagged(&heap, b));
    assert_eq!(other.join().unwrap(), n_each.div_ceil(BATCH));
    let s = heap.stats();
    assert_eq!((s.in_use, s.allocations), (0, 0), "{s:?}");
    assert_eq!(s.total_allocations, 2 * n_each as u64);
}

test!(every_class_freed_remotely_is_reused);
/// Remote frees of every size class, including the classes whose spans
/// are several pages long (blocks above 8 KiB): the freeing thread frees
/// the first half of each round while the owner still holds the second,
/// so both the owner's current spans and spans that ran dry (`FULL`)
/// receive remote frees. Every round fits in the memory of the first (its
/// committed range: a span made from pages never touched is charged for
/// what its carving reaches, and, retired and taken again, for its whole
/// pages, so the charge may grow towards the range; the range would grow
/// if freed blocks were not reused): remotely freed blocks of every class
/// are collected and reused.
fn every_class_freed_remotely_is_reused() {
    let sizes: Vec<usize> = [16, 48, 112, 640, 1000, 4096, 8200, 20_000, 65_536, 131_072]
        .into_iter()
        .collect();
    let heap = stress_heap();
    let mut committed_first = 0;
    for round in 0..6 {
        let blocks: Vec<Sent> = sizes
            .iter()
            .flat_map(|&size| {
                // Enough blocks of each size to fill a few spans.
                let n = (256 * 1024 / size).clamp(24, 512);
                (0..n).map(move |j| (size, j))
            })
            .enumerate()
            .map(|(i, (size, _))| alloc_tagged(&heap, size, i + (round << 32)))
            .collect();
        let (first, second) = blocks.split_at(blocks.len() / 2);
        let first = first.to_vec();
        let freer = {
            let heap = heap.clone();
            thread::spawn(move || first.into_iter().for_each(|b| free_tagged(&heap, b)))
        };
        freer.join().unwrap();
        let remote = heap.stats();
        assert_eq!(
            remote.allocations,
            second.len(),
            "round {round}: remote frees not counted: {remote:?}"
        );
        let second = second.to_vec();
        thread::spawn({
            let heap = heap.clone();
            move || second.into_iter().for_each(|b| free_tagged(&heap, b))
        })
        .join()
        .unwrap();
        let s = heap.stats();
        assert_eq!((s.in_use, s.allocations), (0, 0), "round {round}: {s:?}");
        let range = s.committed + s.purged;
        if round == 0 {
            committed_first = range;
        } else {
            assert!(
                range <= committed_first,
                "round {round}: committed range {range} after round 0's {committed_first}: remote frees not reused ({s:?})"
            );
        }
    }
}
