//! Change-feed semantics: at-least-once delivery, start positions, truncation, stale cursors,
//! cursor removal.

mod manifest_support;

use bop_storage::manifest::{
    Batch, Change, DatabaseId, FeedStart, Manifest, ManifestConfig, ManifestError, Vote,
};
use manifest_support::{create, small_config};

fn open_with(dir: &std::path::Path, config: ManifestConfig) -> Manifest {
    Manifest::open(dir, config).unwrap()
}

fn vote(term: u64) -> Batch {
    let mut batch = Batch::new();
    batch.set_vote(Vote { term, node_id: 1, committed: false });
    batch
}

fn commit_votes(manifest: &Manifest, terms: std::ops::RangeInclusive<u64>) {
    for term in terms {
        manifest.commit(vote(term)).unwrap();
    }
}

fn seqs(manifest: &Manifest, cursor: &str) -> Vec<u64> {
    let page = manifest.read_feed(cursor, 1000).unwrap();
    page.entries.iter().map(|entry| entry.seq).collect()
}

#[test]
fn entries_describe_their_batch() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = open_with(dir.path(), small_config());
    manifest.register_cursor("c", FeedStart::Oldest).unwrap();

    let mut batch = create("orders");
    batch.set_vote(Vote { term: 1, node_id: 1, committed: false });
    let outcome = manifest.commit(batch).unwrap();

    let page = manifest.read_feed("c", 10).unwrap();
    assert_eq!(page.head_seq, outcome.seq);
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.entries[0].seq, outcome.seq);
    assert_eq!(page.entries[0].changes, vec![Change::DatabaseCreated { id: DatabaseId(1) }, Change::VoteSet]);
}

#[test]
fn delivery_is_at_least_once_until_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = open_with(dir.path(), small_config());
    manifest.register_cursor("c", FeedStart::Oldest).unwrap();
    commit_votes(&manifest, 1..=3);

    // Reading without acknowledging returns the same entries again, also after a reopen.
    assert_eq!(seqs(&manifest, "c"), vec![1, 2, 3]);
    assert_eq!(seqs(&manifest, "c"), vec![1, 2, 3]);
    drop(manifest);
    let manifest = open_with(dir.path(), small_config());
    assert_eq!(seqs(&manifest, "c"), vec![1, 2, 3]);

    // Acknowledging advances the cursor; an older ack is a no-op; beyond the head is an error.
    manifest.ack_cursor("c", 2).unwrap();
    assert_eq!(seqs(&manifest, "c"), vec![3]);
    manifest.ack_cursor("c", 1).unwrap();
    assert_eq!(seqs(&manifest, "c"), vec![3]);
    assert!(matches!(
        manifest.ack_cursor("c", 4),
        Err(ManifestError::CursorAckBeyondHead { seq: 4, head: 3, .. })
    ));

    // Pages are bounded.
    commit_votes(&manifest, 4..=10);
    let page = manifest.read_feed("c", 2).unwrap();
    let page_seqs: Vec<u64> = page.entries.iter().map(|entry| entry.seq).collect();
    assert_eq!(page_seqs, vec![3, 4]);
}

#[test]
fn start_positions() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = open_with(dir.path(), small_config());
    commit_votes(&manifest, 1..=5);

    manifest.register_cursor("oldest", FeedStart::Oldest).unwrap();
    manifest.register_cursor("latest", FeedStart::Latest).unwrap();
    manifest.register_cursor("at-4", FeedStart::At(4)).unwrap();
    manifest.register_cursor("at-next", FeedStart::At(6)).unwrap();

    assert_eq!(seqs(&manifest, "oldest"), vec![1, 2, 3, 4, 5]);
    assert!(seqs(&manifest, "latest").is_empty());
    assert_eq!(seqs(&manifest, "at-4"), vec![4, 5]);
    assert!(seqs(&manifest, "at-next").is_empty());
    assert!(matches!(
        manifest.register_cursor("too-far", FeedStart::At(7)),
        Err(ManifestError::CursorStartOutOfRange { seq: 7, oldest_available: 1, head: 5, .. })
    ));
    assert!(matches!(
        manifest.register_cursor("oldest", FeedStart::Latest),
        Err(ManifestError::CursorExists { .. })
    ));

    commit_votes(&manifest, 6..=6);
    assert_eq!(seqs(&manifest, "latest"), vec![6]);
    assert_eq!(seqs(&manifest, "at-next"), vec![6]);
}

#[test]
fn truncation_follows_the_oldest_acknowledged_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = open_with(dir.path(), small_config());
    manifest.register_cursor("slow", FeedStart::Oldest).unwrap();
    manifest.register_cursor("fast", FeedStart::Oldest).unwrap();
    commit_votes(&manifest, 1..=10);

    // Nothing is acknowledged by both: nothing goes.
    manifest.ack_cursor("fast", 8).unwrap();
    assert_eq!(manifest.read(|r| r.feed_bounds()).unwrap(), (1, 10));

    // The slow cursor acknowledges 3: entries 1..=3 go, in the ack's own commit.
    manifest.ack_cursor("slow", 3).unwrap();
    assert_eq!(manifest.read(|r| r.feed_bounds()).unwrap(), (4, 10));
    assert_eq!(seqs(&manifest, "slow"), (4..=10).collect::<Vec<_>>());

    // Removing the slow cursor releases truncation up to the fast one.
    manifest.remove_cursor("slow").unwrap();
    assert_eq!(manifest.read(|r| r.feed_bounds()).unwrap(), (9, 10));
    assert!(matches!(manifest.read_feed("slow", 10), Err(ManifestError::CursorNotFound { .. })));
    let metrics = manifest.metrics();
    assert_eq!(metrics.feed_len, 2);
    assert_eq!(metrics.feed_truncated_entries, 8);
    assert_eq!(metrics.feed_truncations, 2);
    assert_eq!(metrics.cursor_lag_max, 2);

    // An Oldest cursor registered now starts at the oldest entry still there.
    manifest.register_cursor("late", FeedStart::Oldest).unwrap();
    assert_eq!(seqs(&manifest, "late"), vec![9, 10]);
}

#[test]
fn without_cursors_the_feed_keeps_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = open_with(dir.path(), ManifestConfig { feed_retention_entries_max: 5, ..small_config() });

    commit_votes(&manifest, 1..=12);

    assert_eq!(manifest.read(|r| r.feed_bounds()).unwrap(), (8, 12));
    assert_eq!(manifest.metrics().feed_len, 5);
}

#[test]
fn a_lagging_cursor_goes_stale_and_stops_holding_truncation_back() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = open_with(
        dir.path(),
        ManifestConfig { feed_cursor_lag_entries_max: 4, feed_retention_entries_max: 2, ..small_config() },
    );
    manifest.register_cursor("sleepy", FeedStart::Oldest).unwrap();

    // Within the lag bound the cursor holds every entry.
    commit_votes(&manifest, 1..=4);
    assert_eq!(manifest.read(|r| r.feed_bounds()).unwrap(), (1, 4));
    assert_eq!(seqs(&manifest, "sleepy"), vec![1, 2, 3, 4]);

    // One more entry puts it 5 behind: it is marked stale and truncation proceeds (retention 2).
    commit_votes(&manifest, 5..=5);
    assert_eq!(manifest.read(|r| r.feed_bounds()).unwrap(), (4, 5));
    let cursor = manifest.read(|r| r.cursor("sleepy")).unwrap().unwrap();
    assert!(cursor.stale);
    assert_eq!(manifest.metrics().cursors_stale, 1);

    // The subscriber learns it with a typed error, on read and on ack.
    match manifest.read_feed("sleepy", 10) {
        Err(ManifestError::CursorStale { name, acked, oldest_available }) => {
            assert_eq!(name, "sleepy");
            assert_eq!(acked, 0);
            assert_eq!(oldest_available, 4);
        }
        other => panic!("expected CursorStale, got {other:?}"),
    }
    assert!(matches!(manifest.ack_cursor("sleepy", 5), Err(ManifestError::CursorStale { .. })));

    // Staleness is durable; removal and re-registration recover.
    drop(manifest);
    let manifest = open_with(dir.path(), small_config());
    assert!(matches!(manifest.read_feed("sleepy", 10), Err(ManifestError::CursorStale { .. })));
    manifest.remove_cursor("sleepy").unwrap();
    manifest.register_cursor("sleepy", FeedStart::Oldest).unwrap();
    assert_eq!(seqs(&manifest, "sleepy"), vec![4, 5]);
}

#[test]
fn cursor_names_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = open_with(dir.path(), small_config());
    assert!(matches!(
        manifest.register_cursor("", FeedStart::Latest),
        Err(ManifestError::InvalidName { .. })
    ));
    assert!(matches!(
        manifest.register_cursor("a b", FeedStart::Latest),
        Err(ManifestError::InvalidName { .. })
    ));
    assert!(matches!(manifest.remove_cursor("missing"), Err(ManifestError::CursorNotFound { .. })));
}
