//! Pipelined commits: a database's commits that were proposed to the sink but are not applied yet, as the
//! pages a pipelined connection reads on top of the page store.
//!
//! Only a connection marked pipelined ([`crate::Connection::set_pipelined`]) sees them; every other reader
//! reads the page store alone, so nothing of a commit is visible before it is applied. Each commit names the
//! commit it was built on (the newest one in here, or the database's newest applied commit), and the sink's
//! apply refuses it unless that is the database's newest commit then: a commit that fails takes everything
//! built on it with it. See docs/design.md ("Pipelined commits").

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};

use bop_storage::page_store::{ReadSnapshot, PAGE_SIZE};

/// One proposed commit: the newest image of every page it changed and the database size after it.
pub(crate) struct Speculative {
    /// Its log index.
    pub index: u64,
    pub pages: HashMap<u32, Box<[u8]>>,
    pub page_count: u32,
}

impl Speculative {
    pub fn bytes(&self) -> usize {
        self.pages.len() * PAGE_SIZE
    }
}

/// A database's proposed commits, oldest first.
#[derive(Default)]
pub(crate) struct Pipeline {
    pub entries: VecDeque<Arc<Speculative>>,
    /// The database's commit (log index) the oldest entry was built on.
    pub base: u64,
    /// Bumped whenever entries are thrown away because one of them failed (or may have): a transaction
    /// built on a view older than that must not be proposed.
    pub epoch: u64,
    /// Page bytes the entries hold.
    pub bytes: usize,
    /// The newest index whose commit its owner learned was applied as proposed ([`Pipeline::applied`]):
    /// at or below it, the database's commit at an entry's index is that entry (and not another commit
    /// that took its index after it was lost).
    pub confirmed: u64,
}

impl Pipeline {
    /// Drops what `snapshot` already shows: entries applied (their index is the database's newest commit
    /// in the snapshot, or older) are the page store's now; if one was decided otherwise (refused), or
    /// another commit came in between, every entry goes (each rests on a view the database never had).
    pub fn reconcile(&mut self, snapshot: &ReadSnapshot) {
        if self.entries.is_empty() {
            return;
        }
        let applied = snapshot.index();
        let last = snapshot.last_commit_index();
        if let Some(pos) = self.entries.iter().rposition(|e| e.index <= applied) {
            if self.entries[pos].index != last {
                self.fail();
                return;
            }
            self.drain_through(pos);
        }
        if !self.entries.is_empty() && self.base != last {
            self.fail();
        }
    }

    /// The entry at `index` was applied: it and the entries before it are the page store's now.
    pub fn applied(&mut self, index: u64) {
        self.confirmed = self.confirmed.max(index);
        if let Some(pos) = self.entries.iter().position(|e| e.index == index) {
            self.drain_through(pos);
        }
    }

    fn drain_through(&mut self, pos: usize) {
        for entry in self.entries.drain(..=pos) {
            self.bytes -= entry.bytes();
            self.base = entry.index;
        }
    }

    /// An entry failed, or may have: nothing in here can be built on any more.
    pub fn fail(&mut self) {
        self.entries.clear();
        self.bytes = 0;
        self.epoch += 1;
    }

    /// Adds a commit proposed on top of the newest entry (or, with none, on the database's commit `base`).
    pub fn push(&mut self, entry: Arc<Speculative>, base: u64) {
        if self.entries.is_empty() {
            self.base = base;
        }
        self.bytes += entry.bytes();
        self.entries.push_back(entry);
    }
}

/// What one read transaction of a pipelined connection sees of the pipeline, fixed at its start: the
/// entries, and the frames of theirs SQLite was handed.
#[derive(Default)]
pub(crate) struct PipelineView {
    pub entries: Vec<Arc<Speculative>>,
    pub epoch: u64,
    /// Frames handed out: `(entry, page)`, or `None` for a page that reads as zeros (a hole).
    frames: Vec<Option<(usize, u32)>>,
    frame_of: HashMap<u32, u32>,
}

/// What a page of a pipelined read transaction is.
pub(crate) enum Found {
    /// The `n`th frame of the view.
    Frame(u32),
    /// Not in the pipeline: read it from the snapshot.
    Snapshot,
}

impl PipelineView {
    pub fn new(entries: Vec<Arc<Speculative>>, epoch: u64) -> Self {
        PipelineView { entries, epoch, frames: Vec::new(), frame_of: HashMap::new() }
    }

    /// Whether `entry` (an entry an earlier read transaction saw) is one of this view's.
    pub fn holds(&self, entry: &Weak<Speculative>) -> bool {
        self.entries.iter().any(|e| std::ptr::eq(Arc::as_ptr(e), entry.as_ptr()))
    }

    /// The newest entry, if there is one.
    pub fn newest(&self) -> Option<&Arc<Speculative>> {
        self.entries.last()
    }

    /// The newest entry's index and database size, if there is one.
    pub fn tip(&self) -> Option<(u64, u32)> {
        self.entries.last().map(|e| (e.index, e.page_count))
    }

    /// Where page `page_no` (inside the newest entry's size) is: the newest entry that wrote it, a hole if
    /// an entry after every version cut it off, else the snapshot with `snapshot_pages` pages (past them: a
    /// hole too).
    pub fn find(&mut self, page_no: u32, snapshot_pages: u32) -> Found {
        if let Some(&n) = self.frame_of.get(&page_no) {
            return Found::Frame(n);
        }
        let mut at = None;
        for (i, entry) in self.entries.iter().enumerate().rev() {
            if entry.pages.contains_key(&page_no) {
                at = Some(Some((i, page_no)));
                break;
            }
            if entry.page_count < page_no {
                at = Some(None);
                break;
            }
        }
        let at = match at {
            Some(at) => at,
            None if page_no <= snapshot_pages => return Found::Snapshot,
            None => None,
        };
        let n = self.frames.len() as u32;
        self.frames.push(at);
        self.frame_of.insert(page_no, n);
        Found::Frame(n)
    }

    /// Forgets which frame each page was found at (a commit of this read transaction added an entry, which
    /// may hold newer versions); frames handed out stay readable.
    pub fn forget_lookups(&mut self) {
        self.frame_of.clear();
    }

    /// Copies frame `n` into `buffer`.
    pub fn read(&self, n: u32, buffer: &mut [u8]) -> Result<(), String> {
        match self.frames.get(n as usize) {
            Some(Some((entry, page_no))) => {
                let page = self.entries[*entry].pages.get(page_no).ok_or("pipelined page missing")?;
                buffer.copy_from_slice(page);
                Ok(())
            }
            Some(None) => {
                buffer.fill(0);
                Ok(())
            }
            None => Err(format!("no pipelined frame {n}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{mpsc, Arc};
    use std::time::Duration;

    use bop_storage::page_store::{Db, Manager, ManagerConfig};
    use parking_lot::Mutex;

    use crate::{FrameSink, LocalSink, OpenMode, Params, SinkError, SqlConfig, SqlEngine, Value};

    /// A proposed commit: its frames, the database size after it, its base.
    type Proposed = (Vec<(u32, Vec<u8>)>, u32, u64);

    /// Commits locally; proposes by keeping the commit for the test to apply when it likes.
    #[derive(Default)]
    struct HeldSink {
        proposed: Mutex<Vec<Proposed>>,
    }

    impl FrameSink for HeldSink {
        fn commit(
            &self,
            db: &Db,
            frames: &[(u32, &[u8])],
            pages: u32,
            read_index: u64,
        ) -> Result<u64, SinkError> {
            LocalSink.commit(db, frames, pages, read_index)
        }

        fn pipelines(&self) -> bool {
            true
        }

        fn propose_after(
            &self,
            db: &Db,
            frames: &[(u32, &[u8])],
            pages: u32,
            base: u64,
        ) -> Result<u64, SinkError> {
            let mut proposed = self.proposed.lock();
            // Nothing else commits in the test: the next commits to be applied take the next indexes.
            let index = db.snapshot()?.index() + 1 + proposed.len() as u64;
            proposed.push((frames.iter().map(|(n, page)| (*n, page.to_vec())).collect(), pages, base));
            Ok(index)
        }
    }

    /// An engine in `dir` whose proposals wait in its sink for the test.
    fn held_engine(dir: &std::path::Path) -> (SqlEngine, Arc<HeldSink>) {
        let manager = Manager::open(ManagerConfig::new(dir.join("node"))).expect("manager");
        let sink = Arc::new(HeldSink::default());
        let engine =
            SqlEngine::new(manager, Arc::clone(&sink) as Arc<dyn FrameSink>, SqlConfig::new(dir.join("sql")))
                .expect("engine");
        (engine, sink)
    }

    fn count(conn: &mut crate::Connection) -> i64 {
        let rows = conn.query("SELECT count(*) FROM t", &Params::None).expect("count");
        match rows.rows[0][0] {
            Value::Integer(n) => n,
            ref other => panic!("count is {other:?}"),
        }
    }

    /// A pipelined connection's commit that another commit replaced at the same log index (its leader lost
    /// the entry, and a later leader's commit to the same database was applied there) is not taken for its
    /// own: the next read transaction reads the database as it is, not SQLite's cached pages of the lost
    /// commit. Before, the index alone decided whether SQLite kept its cache, and the connection went on
    /// reading its lost commit's pages; a writer connection kept between groups would have built on them.
    #[test]
    fn a_proposed_commit_replaced_at_its_index_is_not_read_from_the_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (engine, sink) = held_engine(dir.path());
        let mut other = engine.open("db", OpenMode::CreateIfMissing).expect("open");
        other.execute("CREATE TABLE t(x)", &Params::None).expect("create");
        let mut conn = engine.open("db", OpenMode::Existing).expect("open");
        let _pipeline = conn.set_pipelined(true).expect("pipelined");
        conn.execute("INSERT INTO t VALUES (1)", &Params::None).expect("insert");
        assert_eq!(count(&mut conn), 1, "the writer sees its proposed commit");
        // The proposal is lost; another commit takes its index (nothing tells the pipeline yet, as when
        // the answerer has not learned the entry's fate).
        sink.proposed.lock().clear();
        let db = engine.manager().open_database("db").expect("db");
        let lost_at = db.snapshot().expect("snapshot").index() + 1;
        other.execute("INSERT INTO t VALUES (2), (3)", &Params::None).expect("the other commit");
        assert_eq!(db.snapshot().expect("snapshot").last_commit_index(), lost_at, "the same index");
        assert_eq!(count(&mut conn), 2, "the database as it is");
        assert_eq!(count(&mut other), 2);
    }

    /// A commit applied (and reported applied to the pipeline) between a pipelined read transaction's pin of
    /// its snapshot and its look at the pipeline is seen all the same: the transaction reads the snapshot
    /// plus the pipeline as they were at one moment. Before, the commit had left the pipeline but was not in
    /// the older snapshot, so the writer's next transaction missed it (and its commit, built on a stale base,
    /// was refused: "transaction built on a commit that did not become the database's newest", seen under
    /// load in the peer benchmark).
    #[test]
    fn a_commit_applied_while_a_read_transaction_starts_is_not_missed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (engine, sink) = held_engine(dir.path());
        let mut setup = engine.open("db", OpenMode::CreateIfMissing).expect("open");
        setup.execute("CREATE TABLE t(x)", &Params::None).expect("create");
        let mut conn = engine.open("db", OpenMode::Existing).expect("open");
        let pipeline = conn.set_pipelined(true).expect("pipelined");
        conn.execute("INSERT INTO t VALUES (1)", &Params::None).expect("insert");
        assert_eq!(count(&mut conn), 1, "the writer sees its proposed commit");
        assert_eq!(count(&mut setup), 0, "no other connection does");
        let (frames, pages, _base) = sink.proposed.lock().remove(0);
        let db = engine.manager().open_database("db").expect("db");
        let expected = db.snapshot().expect("snapshot").index() + 1;
        let (done_tx, done) = mpsc::channel();
        let apply = move || {
            let frames: Vec<(u32, &[u8])> = frames.iter().map(|(n, page)| (*n, &page[..])).collect();
            let index = db.commit(&frames, pages).expect("apply").index;
            assert_eq!(index, expected);
            pipeline.applied(index);
            let _ = done_tx.send(());
        };
        crate::wal::AFTER_PIN.with(|hook| {
            *hook.borrow_mut() = Some(Box::new(move || {
                // Applied from another thread, as the node's state machine and the writer's answerer do; it
                // may have to wait for the reader to be done with the pipeline (a bounded wait here).
                let applier = std::thread::spawn(apply);
                let _ = done.recv_timeout(Duration::from_millis(200));
                drop(applier);
            }));
        });
        assert_eq!(count(&mut conn), 1, "the applied commit is seen in the next read transaction");
        assert_eq!(count(&mut conn), 1);
        assert_eq!(count(&mut setup), 1);
    }
}
