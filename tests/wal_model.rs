//! Model-based property test: random sequences of append, truncate, purge, crash and reopen against a
//! simple in-memory model of the log. Every operation waits for durability, so a crash may lose nothing.

mod common;

use std::collections::BTreeMap;

use bop_storage::io::{CrashMode, SimDisk};
use bop_storage::wal::{LogPos, WalStore, WriterMode};
use common::{entry, payload, sim_store_with};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    Append { count: u64, len: usize },
    Truncate { back: u64 },
    Purge { keep: u64 },
    Crash { torn: bool },
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (1u64..8, 0usize..3000).prop_map(|(count, len)| Step::Append { count, len }),
        1 => (0u64..6).prop_map(|back| Step::Truncate { back }),
        1 => (0u64..10).prop_map(|keep| Step::Purge { keep }),
        1 => any::<bool>().prop_map(|torn| Step::Crash { torn }),
        1 => Just(Step::Reopen),
    ]
}

#[derive(Default)]
struct Model {
    entries: BTreeMap<u64, (u64, usize)>,
    purged: Option<LogPos>,
    next: u64,
    term: u64,
}

fn check(store: &WalStore, model: &Model) {
    let state = store.state();
    assert_eq!(state.purged, model.purged, "purge point");
    assert_eq!(state.first_index, model.entries.keys().next().copied(), "first index");
    assert_eq!(state.last.map(|p| p.index), model.entries.keys().next_back().copied(), "last index");
    for (&index, &(term, len)) in &model.entries {
        let got = store.read(index).expect("read").unwrap_or_else(|| panic!("entry {index} missing"));
        assert_eq!((got.term, got.payload), (term, payload(index, term, len)), "entry {index}");
    }
    if let Some(first) = model.entries.keys().next() {
        assert_eq!(store.read(first - 1).expect("read"), None, "nothing before the first entry");
    }
    assert_eq!(store.read(model.next).expect("read"), None, "nothing after the last entry");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_the_model(
        seed in any::<u64>(),
        direct in any::<bool>(),
        inline in any::<bool>(),
        steps in proptest::collection::vec(step(), 1..60),
    ) {
        let mut disk = if direct { SimDisk::new_direct(seed) } else { SimDisk::new(seed) };
        let writer = if inline { WriterMode::Inline } else { WriterMode::Threads };
        let mut store = sim_store_with(&disk, writer);
        let mut model = Model { next: 1, term: 1, ..Model::default() };
        for step in steps {
            match step {
                Step::Append { count, len } => {
                    let entries: Vec<_> = (model.next..model.next + count).map(|i| entry(i, model.term, len)).collect();
                    store.append(entries).expect("append").wait().expect("durable");
                    for index in model.next..model.next + count {
                        model.entries.insert(index, (model.term, len));
                    }
                    model.next += count;
                }
                Step::Truncate { back } => {
                    let floor = model.purged.map_or(0, |p| p.index);
                    let after = model.next.saturating_sub(1 + back).max(floor);
                    store.truncate_after(after).expect("truncate");
                    model.entries.retain(|&i, _| i <= after);
                    model.next = after + 1;
                    model.term += 1;
                }
                Step::Purge { keep } => {
                    let upto = model.next.saturating_sub(1 + keep);
                    if upto >= 1 && model.purged.is_none_or(|p| p.index < upto) {
                        let term = model.entries.get(&upto).map_or(model.term, |e| e.0);
                        store.purge_upto(LogPos { index: upto, term }).expect("purge");
                        model.entries.retain(|&i, _| i > upto);
                        model.purged = Some(LogPos { index: upto, term });
                    }
                }
                Step::Crash { torn } => {
                    let mode = if torn { CrashMode::TornSectors } else { CrashMode::LoseUnsynced };
                    disk = disk.crash(mode);
                    drop(store);
                    store = sim_store_with(&disk, writer);
                }
                Step::Reopen => {
                    store.close().expect("close");
                    drop(store);
                    store = sim_store_with(&disk, writer);
                }
            }
            check(&store, &model);
        }
    }
}
