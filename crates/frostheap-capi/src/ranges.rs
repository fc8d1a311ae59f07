//! The record behind the library's `mmap` (`mapped.rs`): which ranges of a process's
//! anonymous private memory count against the limit and which are
//! reservations, as a sorted array of disjoint ranges (neighbours of the
//! same state merged), searched by bisection. No allocation: it lives in
//! static memory and runs under `malloc`. Its own tests (`tests/ranges.rs`)
//! include this file, as the library itself is a `cdylib`.

/// The state of a recorded range of anonymous private memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Writable, or made writable since it was mapped: charged.
    Counted = 0,
    /// Mapped without write access, or `MAP_NORESERVE`: not charged.
    Reserved = 1,
}

#[derive(Clone, Copy, Debug)]
struct Range {
    start: usize,
    end: usize,
    state: State,
}

/// Ranges a table holds at most.
pub(crate) const CAP: usize = 1 << 16;

/// The ranges, sorted by start and disjoint; `len` of them are live.
pub(crate) struct Table {
    ranges: [Range; CAP],
    len: usize,
}

/// What a change to the table did to the charged bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Change {
    /// Bytes that counted and no longer do.
    pub(crate) removed: usize,
    /// Bytes that count and did not.
    pub(crate) added: usize,
}

impl Table {
    /// An empty table (all zeroes: a static one lies in `.bss`, and only
    /// the pages its ranges reach are ever touched).
    pub(crate) const fn new() -> Table {
        Table {
            ranges: [Range {
                start: 0,
                end: 0,
                state: State::Counted,
            }; CAP],
            len: 0,
        }
    }

    /// How many ranges are recorded.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The index of the first range that ends after `addr`.
    fn first_after(&self, addr: usize) -> usize {
        self.ranges[..self.len].partition_point(|r| r.end <= addr)
    }

    /// Bytes of `[start, end)` in recorded ranges of `state`.
    pub(crate) fn bytes(&self, start: usize, end: usize, state: State) -> usize {
        self.ranges[self.first_after(start)..self.len]
            .iter()
            .take_while(|r| r.start < end)
            .filter(|r| r.state == state)
            .map(|r| r.end.min(end) - r.start.max(start))
            .sum()
    }

    /// Records `[start, end)` as `state` (`None`: not anonymous private
    /// memory, or unmapped), replacing what was recorded there. `None` if
    /// the table has no room for the pieces (nothing changed).
    pub(crate) fn assign(
        &mut self,
        start: usize,
        end: usize,
        state: Option<State>,
    ) -> Option<Change> {
        if start >= end {
            return Some(Change::default());
        }
        let i = self.first_after(start);
        let mut j = i;
        while j < self.len && self.ranges[j].start < end {
            j += 1;
        }
        let counted_before = self.bytes(start, end, State::Counted);
        // What replaces ranges i..j: the part of the first before `start`,
        // the new range, the part of the last after `end`.
        let mut pieces = [Range {
            start: 0,
            end: 0,
            state: State::Counted,
        }; 3];
        let mut n = 0;
        let push = |r: Range, pieces: &mut [Range; 3], n: &mut usize| {
            if *n > 0 && pieces[*n - 1].end == r.start && pieces[*n - 1].state == r.state {
                pieces[*n - 1].end = r.end;
            } else {
                pieces[*n] = r;
                *n += 1;
            }
        };
        if i < j && self.ranges[i].start < start {
            let r = self.ranges[i];
            push(Range { end: start, ..r }, &mut pieces, &mut n);
        }
        if let Some(state) = state {
            push(Range { start, end, state }, &mut pieces, &mut n);
        }
        if i < j && self.ranges[j - 1].end > end {
            let r = self.ranges[j - 1];
            push(Range { start: end, ..r }, &mut pieces, &mut n);
        }
        // Neighbours of the same state that touch the pieces merge in.
        let (mut lo, mut hi) = (i, j);
        if n > 0 && lo > 0 {
            let left = self.ranges[lo - 1];
            if left.end == pieces[0].start && left.state == pieces[0].state {
                pieces[0].start = left.start;
                lo -= 1;
            }
        }
        if n > 0 && hi < self.len {
            let right = self.ranges[hi];
            if right.start == pieces[n - 1].end && right.state == pieces[n - 1].state {
                pieces[n - 1].end = right.end;
                hi += 1;
            }
        }
        let new_len = self.len - (hi - lo) + n;
        if new_len > CAP {
            return None;
        }
        self.ranges.copy_within(hi..self.len, lo + n);
        self.ranges[lo..lo + n].copy_from_slice(&pieces[..n]);
        self.len = new_len;
        Some(if state == Some(State::Counted) {
            Change {
                removed: 0,
                added: (end - start) - counted_before,
            }
        } else {
            Change {
                removed: counted_before,
                added: 0,
            }
        })
    }

    /// The state recorded at `addr` (`None`: nothing recorded there).
    pub(crate) fn state_at(&self, addr: usize) -> Option<State> {
        let i = self.first_after(addr);
        (i < self.len && self.ranges[i].start <= addr).then(|| self.ranges[i].state)
    }

    /// Whether [`Table::moved`] of `[old, old + old_len)` to a new length
    /// `new_len` finds room for every piece it writes: each of its
    /// `assign`s adds at most two ranges (a split on both sides), one per
    /// recorded piece of what it copies and three more (what the new
    /// range replaces, the old range's removal, the growth).
    pub(crate) fn has_room_to_move(&self, old: usize, old_len: usize, new_len: usize) -> bool {
        let copy_end = old.saturating_add(old_len.min(new_len));
        let pieces = self.ranges[self.first_after(old)..self.len]
            .iter()
            .take_while(|r| r.start < copy_end)
            .count();
        self.len + 2 * (pieces + 3) <= CAP
    }

    /// Records what `mremap(2)` did: `[old, old + old_len)` became
    /// `[new, new + new_len)`, each page keeping its own state (a
    /// `PROT_NONE` part of a mapping stays uncounted wherever the mapping
    /// goes, and a shrink gives back just the pages it cuts). A growth
    /// takes the state of the old range's last page: the kernel extends
    /// the mapping that holds it, with its protection. With `keep_old`
    /// (`MREMAP_DONTUNMAP`) the old range stays as it was. The new range
    /// replaces whatever was recorded there (`MREMAP_FIXED`). Ranges that
    /// overlap only when the kernel moved nothing (`new == old`).
    ///
    /// Needs the room [`Table::has_room_to_move`] finds: a piece that
    /// finds none stays as it was.
    pub(crate) fn moved(
        &mut self,
        old: usize,
        old_len: usize,
        new: usize,
        new_len: usize,
        keep_old: bool,
    ) -> Change {
        let mut total = Change::default();
        let mut add = |c: Option<Change>| {
            if let Some(c) = c {
                total.removed += c.removed;
                total.added += c.added;
            }
        };
        let tail = if old_len > 0 {
            self.state_at(old + old_len - 1)
        } else {
            None
        };
        let copy_end = old + old_len.min(new_len);
        if new != old {
            add(self.assign(new, new + new_len, None));
            // The old range's pieces, one by one, at the same offsets in
            // the new one (which the kernel never lets overlap the old).
            let mut at = old;
            while at < copy_end {
                let i = self.first_after(at);
                let Some(r) = self.ranges[i..self.len]
                    .first()
                    .filter(|r| r.start < copy_end)
                    .copied()
                else {
                    break;
                };
                let (lo, hi) = (r.start.max(at), r.end.min(copy_end));
                add(self.assign(new + (lo - old), new + (hi - old), Some(r.state)));
                at = hi;
            }
            if !keep_old {
                add(self.assign(old, old + old_len, None));
            }
        } else if new_len < old_len {
            add(self.assign(old + new_len, old + old_len, None));
        }
        if new_len > old_len {
            add(self.assign(new + old_len, new + new_len, tail));
        }
        total
    }

    /// Turns the parts of `[start, end)` recorded as `from` into `to`
    /// (the rest stays as it is).
    pub(crate) fn convert(&mut self, start: usize, end: usize, from: State, to: State) -> Change {
        let mut total = Change::default();
        let mut at = start;
        while at < end {
            let i = self.first_after(at);
            let Some(r) = self.ranges[i..self.len]
                .iter()
                .take_while(|r| r.start < end)
                .find(|r| r.state == from)
                .copied()
            else {
                break;
            };
            let (lo, hi) = (r.start.max(at), r.end.min(end));
            match self.assign(lo, hi, Some(to)) {
                Some(c) => {
                    total.removed += c.removed;
                    total.added += c.added;
                }
                None => break, // no room: the rest stays as it was
            }
            at = hi;
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Box<Table> {
        // 1.5 MiB: on the heap, not on a test thread's stack.
        let mut t = Box::<Table>::new_uninit();
        // SAFETY: all zeroes is an empty table (see Table::new).
        unsafe {
            t.as_mut_ptr().write_bytes(0, 1);
            t.assume_init()
        }
    }

    fn live(t: &Table) -> Vec<(usize, usize, State)> {
        t.ranges[..t.len]
            .iter()
            .map(|r| (r.start, r.end, r.state))
            .collect()
    }

    #[test]
    fn assign_splits_merges_and_counts_what_changed() {
        use State::{Counted as C, Reserved as R};
        let mut t = table();
        // A reservation, committed in the middle, then on both sides.
        assert_eq!(t.assign(0, 100, Some(R)), Some(Change::default()));
        let c = t.assign(40, 60, Some(C)).unwrap();
        assert_eq!(
            c,
            Change {
                removed: 0,
                added: 20
            }
        );
        assert_eq!(live(&t), [(0, 40, R), (40, 60, C), (60, 100, R)]);
        // Over pages that count already: only the rest is added.
        let c = t.assign(30, 70, Some(C)).unwrap();
        assert_eq!(
            c,
            Change {
                removed: 0,
                added: 20
            }
        );
        assert_eq!(live(&t), [(0, 30, R), (30, 70, C), (70, 100, R)]);
        assert_eq!(t.bytes(0, 100, C), 40);
        assert_eq!(t.bytes(20, 35, R), 10);
        // Uncommitted back to a reservation: merges into one range.
        let c = t.convert(0, 100, C, R);
        assert_eq!(
            c,
            Change {
                removed: 40,
                added: 0
            }
        );
        assert_eq!(live(&t), [(0, 100, R)]);
        // Counted again by protection, then unmapped in the middle.
        let c = t.convert(10, 90, R, C);
        assert_eq!(
            c,
            Change {
                removed: 0,
                added: 80
            }
        );
        let c = t.assign(50, 60, None).unwrap();
        assert_eq!(
            c,
            Change {
                removed: 10,
                added: 0
            }
        );
        assert_eq!(
            live(&t),
            [(0, 10, R), (10, 50, C), (60, 90, C), (90, 100, R)]
        );
        // A range elsewhere, then everything unmapped.
        t.assign(200, 300, Some(C)).unwrap();
        let c = t.assign(0, 1000, None).unwrap();
        assert_eq!(
            c,
            Change {
                removed: 170,
                added: 0
            }
        );
        assert_eq!(t.len, 0);
    }

    #[test]
    fn adjacent_mappings_of_one_state_are_one_range() {
        let mut t = table();
        for i in 0..1000 {
            t.assign(i * 10, i * 10 + 10, Some(State::Counted)).unwrap();
        }
        assert_eq!(live(&t), [(0, 10_000, State::Counted)]);
        // Every other one unmapped: 500 ranges, 5,000 bytes released.
        let mut released = 0;
        for i in (0..1000).step_by(2) {
            released += t.assign(i * 10, i * 10 + 10, None).unwrap().removed;
        }
        assert_eq!((t.len, released), (500, 5000));
        assert_eq!(t.bytes(0, 10_000, State::Counted), 5000);
    }

    #[test]
    fn a_move_keeps_each_pages_state() {
        use State::{Counted as C, Reserved as R};
        let mut t = table();
        // 40 pages of 10: the first 39 made PROT_NONE, the last writable.
        t.assign(0, 400, Some(C)).unwrap();
        t.convert(0, 390, C, R);
        // Shrunk in place to its first 39 pages: the counted page goes,
        // and nothing that stays becomes counted.
        let c = t.moved(0, 400, 0, 390, false);
        assert_eq!(
            c,
            Change {
                removed: 10,
                added: 0
            }
        );
        assert_eq!(live(&t), [(0, 390, R)]);
        // A mapping of both states moved and grown: the pieces keep their
        // offsets, the growth takes the last page's state, the old range
        // is gone, and what the new one replaced is released.
        let mut t = table();
        t.assign(0, 100, Some(R)).unwrap();
        t.assign(100, 200, Some(C)).unwrap();
        t.assign(1000, 1100, Some(C)).unwrap();
        let c = t.moved(0, 200, 1000, 300, false);
        assert_eq!(
            c,
            Change {
                removed: 200,
                added: 200
            }
        );
        assert_eq!(live(&t), [(1000, 1100, R), (1100, 1300, C)]);
        // Moved and shrunk into its reserved part: nothing counts.
        let c = t.moved(1000, 300, 5000, 50, false);
        assert_eq!(
            c,
            Change {
                removed: 200,
                added: 0
            }
        );
        assert_eq!(live(&t), [(5000, 5050, R)]);
        // Grown in place from a reserved last page: still reserved.
        assert_eq!(t.moved(5000, 50, 5000, 80, false), Change::default());
        assert_eq!(live(&t), [(5000, 5080, R)]);
        // MREMAP_DONTUNMAP: the old range stays, the new one counts as
        // it did.
        let mut t = table();
        t.assign(0, 30, Some(C)).unwrap();
        t.assign(30, 60, Some(R)).unwrap();
        let c = t.moved(0, 60, 100, 60, true);
        assert_eq!(
            c,
            Change {
                removed: 0,
                added: 30
            }
        );
        assert_eq!(
            live(&t),
            [(0, 30, C), (30, 60, R), (100, 130, C), (130, 160, R)]
        );
        assert!(t.has_room_to_move(0, 60, 60));
        assert_eq!(t.state_at(129), Some(C));
        assert_eq!(t.state_at(160), None);
    }

    #[test]
    fn a_full_table_refuses_a_split_and_changes_nothing() {
        let mut t = table();
        for i in 0..CAP {
            // Alternating states: nothing merges.
            let state = if i % 2 == 0 {
                State::Counted
            } else {
                State::Reserved
            };
            t.assign(i * 10, i * 10 + 10, Some(state)).unwrap();
        }
        assert_eq!(t.len, CAP);
        let before = live(&t);
        assert_eq!(t.assign(3, 7, None), None);
        assert_eq!(live(&t), before);
        // Replacing a whole range needs no room.
        assert_eq!(
            t.assign(0, 10, Some(State::Counted)),
            Some(Change::default())
        );
        // No room to move a range exactly: the caller falls back.
        assert!(!t.has_room_to_move(0, 10, 20));
    }
}
