//! The in-memory index of the log: index → term and where the record lies (still in memory, or on disk).

use std::collections::VecDeque;
use std::sync::Arc;

/// A position in the log: an index and the term of the entry there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPos {
    /// Raft index.
    pub index: u64,
    /// Raft term.
    pub term: u64,
}

/// Where an entry's record is.
#[derive(Debug, Clone)]
pub(crate) enum Loc {
    /// Accepted, not yet durable: the payload is served from memory.
    Pending(Arc<Vec<u8>>),
    /// Durable, in segment `seq` at byte `offset`; `len` is the payload length.
    Disk { seq: u64, offset: u64, len: u32 },
}

#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub term: u64,
    /// The operation sequence number that wrote this version of the entry (a re-append after a
    /// truncation gets a new one, so a late durability notice for the old version is ignored).
    pub lsn: u64,
    pub loc: Loc,
}

/// Slots for the contiguous live range of the log, plus what was purged and what comes next.
#[derive(Debug, Default)]
pub(crate) struct LogIndex {
    first: u64,
    slots: VecDeque<Slot>,
    /// The index the next append must have, when known (unknown only for a log that never held an entry).
    next: Option<u64>,
    purged: Option<LogPos>,
    /// The opaque bytes the newest purge carried (an embedder's own form of the purged log id).
    purged_meta: Option<Arc<Vec<u8>>>,
}

impl LogIndex {
    pub fn next_index(&self) -> Option<u64> {
        if self.slots.is_empty() {
            self.next
        } else {
            Some(self.first + self.slots.len() as u64)
        }
    }

    pub fn first_index(&self) -> Option<u64> {
        (!self.slots.is_empty()).then_some(self.first)
    }

    pub fn last(&self) -> Option<LogPos> {
        let slot = self.slots.back()?;
        Some(LogPos { index: self.first + self.slots.len() as u64 - 1, term: slot.term })
    }

    pub fn purged(&self) -> Option<LogPos> {
        self.purged
    }

    pub fn get(&self, index: u64) -> Option<&Slot> {
        let offset = index.checked_sub(self.first)?;
        self.slots.get(usize::try_from(offset).ok()?)
    }

    /// Appends a slot at `index`, which the caller checked equals `next_index()` (or it is unknown).
    pub fn push(&mut self, index: u64, slot: Slot) {
        if self.slots.is_empty() {
            self.first = index;
        }
        debug_assert_eq!(self.first + self.slots.len() as u64, index);
        self.slots.push_back(slot);
        self.next = Some(index + 1);
    }

    /// Removes every entry at or after `index`.
    pub fn truncate_from(&mut self, index: u64) {
        while self.last().is_some_and(|last| last.index >= index) {
            self.slots.pop_back();
        }
        if self.slots.is_empty() || self.next.is_none_or(|n| n > index) {
            self.next = Some(index);
        }
    }

    pub fn purged_meta(&self) -> Option<Arc<Vec<u8>>> {
        self.purged_meta.clone()
    }

    /// Removes every entry up to and including `pos.index`.
    pub fn purge_upto(&mut self, pos: LogPos, meta: Option<Arc<Vec<u8>>>) {
        if self.purged.is_some_and(|p| p.index >= pos.index) {
            return;
        }
        self.purged_meta = meta;
        while !self.slots.is_empty() && self.first <= pos.index {
            self.slots.pop_front();
            self.first += 1;
        }
        self.purged = Some(pos);
        if self.slots.is_empty() && self.next.is_none_or(|n| n <= pos.index) {
            self.next = Some(pos.index + 1);
        }
    }

    /// Marks the entry at `index` written by operation `lsn` as durable at `loc`; ignored if the slot was
    /// since truncated or rewritten.
    pub fn mark_durable(&mut self, index: u64, lsn: u64, loc: Loc) {
        let Some(offset) = index.checked_sub(self.first) else { return };
        let Some(slot) = usize::try_from(offset).ok().and_then(|o| self.slots.get_mut(o)) else { return };
        if slot.lsn == lsn {
            slot.loc = loc;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(term: u64) -> Slot {
        Slot { term, lsn: 0, loc: Loc::Disk { seq: 1, offset: 0, len: 0 } }
    }

    #[test]
    fn truncate_and_purge_move_the_bounds() {
        let mut index = LogIndex::default();
        for i in 5..10 {
            index.push(i, slot(1));
        }
        index.truncate_from(8);
        assert_eq!(index.last(), Some(LogPos { index: 7, term: 1 }));
        assert_eq!(index.next_index(), Some(8));
        index.purge_upto(LogPos { index: 6, term: 1 }, None);
        assert_eq!(index.first_index(), Some(7));
        index.purge_upto(LogPos { index: 20, term: 3 }, None);
        assert_eq!(index.first_index(), None);
        assert_eq!(index.next_index(), Some(21), "a purge past the end moves the next index");
        index.truncate_from(3);
        assert_eq!(index.next_index(), Some(3));
    }
}
