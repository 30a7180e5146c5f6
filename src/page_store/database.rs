//! The in-memory state of one database: its generation chain, the page index into the log, the page-count
//! history and the pinned readers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::commit::CommitHeader;
use super::generation::GenerationFile;

/// A page version that lives inside a log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogFrame {
    /// Log index of the commit.
    pub index: u64,
    /// Frame number within the commit record.
    pub frame: u32,
    /// The frame's checksum, as written.
    pub crc: u32,
    /// Offset of the commit record within the log entry's payload (0 for local commits; a Raft entry
    /// carries the record after its own header).
    pub base: u32,
}

/// Where the version of a page that a reader sees lies.
#[derive(Debug, Clone)]
pub(crate) enum Location {
    Log(LogFrame),
    Base { generation: Arc<GenerationFile>, slot: usize },
}

#[derive(Debug, Default)]
pub(crate) struct DbState {
    /// Page versions committed after the newest generation, oldest first, per page.
    pub versions: BTreeMap<u32, Vec<LogFrame>>,
    /// Database size after each commit newer than the newest generation.
    pub page_counts: BTreeMap<u64, u32>,
    /// The commits among those that shrank the database: a page past such a size is gone, and reads as
    /// absent until it is written again, even if the database grows back.
    pub shrinks: BTreeMap<u64, u32>,
    /// The generation chain in force, oldest first: a full generation followed by deltas.
    pub chain: Vec<Arc<GenerationFile>>,
    /// For each page held by the chain: the generation (index into `chain`) and slot of its newest image.
    pub base: HashMap<u32, (usize, usize)>,
    /// Database size at the newest generation.
    pub base_page_count: u32,
    /// Log index the newest generation reflects (0 before the first checkpoint).
    pub checkpoint_index: u64,
    /// Index of the newest commit the newest generation holds (0 if none).
    pub checkpoint_last_commit: u64,
    /// Readers pinned at each snapshot index.
    pub pinned: BTreeMap<u64, usize>,
}

impl DbState {
    /// Applies a commit at `index` whose record starts at `base` in the entry's payload: the page index
    /// points at its frames inside the log entry.
    pub fn apply(&mut self, index: u64, base: u32, commit: &CommitHeader) {
        debug_assert!(index > self.checkpoint_index, "applied entries are newer than the checkpoint");
        for (frame, (page_no, crc)) in commit.frames.iter().enumerate() {
            let versions = self.versions.entry(*page_no).or_default();
            debug_assert!(versions.last().is_none_or(|v| v.index < index), "commits apply in index order");
            versions.push(LogFrame { index, frame: frame as u32, crc: *crc, base });
        }
        if commit.db_page_count < self.page_count_at(index) {
            self.shrinks.insert(index, commit.db_page_count);
        }
        self.page_counts.insert(index, commit.db_page_count);
    }

    /// Log index of the newest change to this database at or before `snapshot` (a commit, or the newest
    /// generation's index).
    pub fn last_change_at(&self, snapshot: u64) -> u64 {
        self.page_counts.range(..=snapshot).next_back().map_or(self.checkpoint_index, |(index, _)| *index)
    }

    /// Index of the newest commit at or before `snapshot`. Unlike [`DbState::last_change_at`] it does not
    /// depend on when this node checkpointed, so every node answers alike for the same applied log.
    pub fn last_commit_at(&self, snapshot: u64) -> u64 {
        self.page_counts
            .range(..=snapshot)
            .next_back()
            .map_or(self.checkpoint_last_commit, |(index, _)| *index)
    }

    /// Database size in pages as of `snapshot`.
    pub fn page_count_at(&self, snapshot: u64) -> u32 {
        self.page_counts.range(..=snapshot).next_back().map_or(self.base_page_count, |(_, count)| *count)
    }

    /// The smallest size a commit in `(after, upto]` shrank the database to, if any did.
    pub fn shrunk_to(&self, after: u64, upto: u64) -> Option<u32> {
        if after >= upto {
            return None;
        }
        self.shrinks.range(after + 1..=upto).map(|(_, count)| *count).min()
    }

    /// The newest version of `page_no` at `snapshot`, if the page exists then.
    pub fn locate(&self, page_no: u32, snapshot: u64) -> Option<Location> {
        if page_no == 0 || page_no > self.page_count_at(snapshot) {
            return None;
        }
        let in_log = self
            .versions
            .get(&page_no)
            .and_then(|versions| versions.iter().rev().find(|v| v.index <= snapshot).copied());
        // A version written before a shrink that cut the page off is gone.
        let since = in_log.map_or(self.checkpoint_index, |v| v.index);
        if self.shrunk_to(since, snapshot).is_some_and(|count| count < page_no) {
            return None;
        }
        if let Some(frame) = in_log {
            return Some(Location::Log(frame));
        }
        let (chain_pos, slot) = self.base.get(&page_no)?;
        let generation = Arc::clone(self.chain.get(*chain_pos)?);
        Some(Location::Base { generation, slot: *slot })
    }

    pub fn pin(&mut self, snapshot: u64) {
        *self.pinned.entry(snapshot).or_default() += 1;
    }

    pub fn unpin(&mut self, snapshot: u64) {
        if let Some(count) = self.pinned.get_mut(&snapshot) {
            *count -= 1;
            if *count == 0 {
                self.pinned.remove(&snapshot);
            }
        }
    }

    pub fn oldest_pinned(&self) -> Option<u64> {
        self.pinned.keys().next().copied()
    }

    /// Lowest log index this database still needs from the log (its oldest commit not checkpointed).
    pub fn oldest_needed_index(&self) -> Option<u64> {
        self.page_counts.keys().next().copied()
    }

    /// The pages a checkpoint at `target` writes: for each page changed at or before `target`, its newest
    /// version then; with `full`, also every other page of the chain, so the result stands alone. Pages
    /// past the size at `target` are left out. Ascending page numbers.
    pub fn checkpoint_plan(&self, target: u64, full: bool) -> Vec<(u32, Location)> {
        let mut plan: BTreeMap<u32, Location> = BTreeMap::new();
        if full {
            for &page_no in self.base.keys() {
                if let Some(loc) = self.locate(page_no, target) {
                    plan.insert(page_no, loc);
                }
            }
        }
        for &page_no in self.versions.keys() {
            match self.locate(page_no, target) {
                Some(loc @ Location::Log(_)) => {
                    plan.insert(page_no, loc);
                }
                // Unchanged since the chain (only a full generation copies it) or gone.
                Some(Location::Base { .. }) | None => {}
            }
        }
        plan.into_iter().collect()
    }

    /// Puts a new generation at `target` in force: drops the log versions it covers and rebuilds the
    /// base map (from scratch for a full generation, as an overlay for a delta).
    pub fn install(&mut self, target: u64, generation: Arc<GenerationFile>) {
        self.shrinks = self.shrinks.split_off(&(target + 1));
        self.base_page_count = self.page_count_at(target);
        for versions in self.versions.values_mut() {
            versions.retain(|v| v.index > target);
        }
        self.versions.retain(|_, versions| !versions.is_empty());
        self.page_counts = self.page_counts.split_off(&(target + 1));
        self.checkpoint_index = target;
        if generation.meta.parent == 0 {
            self.chain.clear();
            self.base.clear();
        }
        self.push_generation(generation);
    }

    /// Adds a generation to the chain (at open, in order, or by `install`).
    pub fn push_generation(&mut self, generation: Arc<GenerationFile>) {
        // Chain pages cut off by a shrink since the parent are gone even if the database grew back; a
        // delta carries only the pages written since.
        let floor = generation.meta.db_page_floor;
        self.base.retain(|page_no, _| *page_no <= floor);
        let chain_pos = self.chain.len();
        for (slot, (page_no, _)) in generation.slots.iter().enumerate() {
            self.base.insert(*page_no, (chain_pos, slot));
        }
        let count = generation.meta.db_page_count;
        self.base.retain(|page_no, _| *page_no <= count);
        self.base_page_count = count;
        self.checkpoint_index = generation.meta.log_index;
        self.checkpoint_last_commit = generation.meta.last_commit_index;
        self.chain.push(generation);
    }

    /// Number of page versions the index holds.
    pub fn version_count(&self) -> usize {
        self.versions.values().map(Vec::len).sum()
    }
}
