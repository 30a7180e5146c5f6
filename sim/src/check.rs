//! Linearizability of a history of register operations, checked key by key (registers compose: a history
//! is linearizable iff each key's sub-history is) with the Wing–Gong search as refined by Lowe: walk the
//! history in real-time order, linearize a pending call whenever the model allows it, backtrack at a
//! return whose call is not linearized yet, and remember every (linearized set, state) already explored so
//! no configuration is searched twice.

use std::collections::{BTreeMap, HashSet};

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    /// Wrote `value`.
    Write(u64),
    /// Read the register and saw this (`None`: never written).
    Read(Option<u64>),
}

/// One client operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The register.
    pub key: u64,
    /// What it did.
    pub op: Op,
    /// When it was invoked (any totally ordered clock consistent with real time).
    pub call: u64,
    /// When it returned; `None` when the outcome is unknown (a write that failed or timed out may still
    /// take effect at any moment after its call, or never).
    pub ret: Option<u64>,
}

/// Why a history is not linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The key whose sub-history has no linearization.
    pub key: u64,
    /// Its operations, in call order.
    pub operations: Vec<Operation>,
    /// The operation (index into `operations`) whose return the deepest search could not get past.
    pub blocked: usize,
}

impl Violation {
    /// An acknowledged write that a later read did not see, as `(write, read)` indices into `operations`:
    /// the read was invoked after the write returned, yet saw the register as it was before the write —
    /// never written, or holding a value all of whose writes had returned before this write was invoked.
    /// No linearization can explain that, whatever else happened (the register never goes back to "never
    /// written", and the value read was not written again after the write), so it names what went wrong:
    /// the write was lost (or the read came from a node that had not seen it). `None` when the history fails
    /// in another way (a value seen, then unseen; a value never written; ...). The earliest such read wins.
    pub fn lost_write(&self) -> Option<(usize, usize)> {
        let ops = &self.operations;
        // For each value, when its last write returned (`None`: one of its writes has no known return).
        let mut written: BTreeMap<u64, Option<u64>> = BTreeMap::new();
        for op in ops {
            if let Op::Write(v) = op.op {
                let last = written.entry(v).or_insert(Some(0));
                *last = match (*last, op.ret) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
            }
        }
        let mut reads: Vec<usize> = (0..ops.len()).filter(|&i| matches!(ops[i].op, Op::Read(_))).collect();
        reads.sort_by_key(|&i| ops[i].call);
        for r in reads {
            let read = &ops[r];
            // The write must have been invoked after this instant for the read's value to be older than it.
            let older_than = match read.op {
                Op::Read(None) => None,
                Op::Read(Some(u)) => match written.get(&u) {
                    Some(Some(last)) => Some(*last),
                    // Never written (another shape of violation), or possibly still taking effect.
                    _ => continue,
                },
                Op::Write(_) => continue,
            };
            let lost = ops.iter().position(|w| {
                matches!(w.op, Op::Write(_))
                    && w.ret.is_some_and(|ret| ret < read.call)
                    && older_than.is_none_or(|t| w.call > t)
            });
            if let Some(w) = lost {
                return Some((w, r));
            }
        }
        None
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "key {}: no linearization of {} operations; stuck at the return of #{} (operations around it, [call, return]):",
            self.key,
            self.operations.len(),
            self.blocked
        )?;
        let from = self.blocked.saturating_sub(16);
        for (i, op) in self.operations.iter().enumerate().skip(from).take(24) {
            let ret = op.ret.map_or("?".to_owned(), |r| r.to_string());
            let mark = if i == self.blocked { " <-" } else { "" };
            write!(f, "\n    #{i} [{}, {ret}] {:?}{mark}", op.call, op.op)?;
        }
        Ok(())
    }
}

/// Checks every key's sub-history; returns the keys that have no linearization.
pub fn check(history: &[Operation]) -> Vec<Violation> {
    let mut by_key: BTreeMap<u64, Vec<Operation>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key).or_default().push(op.clone());
    }
    let mut violations = Vec::new();
    for (key, ops) in by_key {
        // A write of unknown outcome whose value nobody read can always be placed after everything else
        // (its interval never ends), and must be placed where no read follows it: dropping it changes
        // nothing, and keeping it would multiply the configurations to search by two.
        let read: HashSet<u64> = ops
            .iter()
            .filter_map(|o| match o.op {
                Op::Read(Some(v)) => Some(v),
                _ => None,
            })
            .collect();
        let mut ops: Vec<Operation> = ops
            .into_iter()
            .filter(|o| !matches!(o.op, Op::Write(v) if o.ret.is_none() && !read.contains(&v)))
            .collect();
        ops.sort_by_key(|o| o.call);
        if let Err(blocked) = search(&ops) {
            violations.push(Violation { key, operations: ops, blocked });
        }
    }
    violations
}

#[derive(Clone, Copy)]
struct Entry {
    op: usize,
    is_call: bool,
}

/// Whether one register's operations have a linearization (starting from "never written").
pub fn linearizable(ops: &[Operation]) -> bool {
    search(ops).is_ok()
}

/// The search: `Err(op)` names the operation whose return the deepest attempt could not get past.
fn search(ops: &[Operation]) -> Result<(), usize> {
    // Events in time order; an unknown outcome returns after everything. Calls sort before returns at the
    // same instant, which only makes operations more concurrent (never a false violation).
    let mut events: Vec<(u64, u8, Entry)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.call, 0, Entry { op: i, is_call: true }));
        events.push((op.ret.unwrap_or(u64::MAX), 1, Entry { op: i, is_call: false }));
    }
    events.sort_by_key(|&(time, order, entry)| (time, order, entry.op));
    let n = events.len();
    if n == 0 {
        return Ok(());
    }
    // A doubly linked list over the events, with a head sentinel at index n.
    const NIL: usize = usize::MAX;
    let head = n;
    let mut next: Vec<usize> = (0..=n).map(|i| if i + 1 < n { i + 1 } else { NIL }).collect();
    let mut prev: Vec<usize> = (0..=n).map(|i| if i == 0 { head } else { i - 1 }).collect();
    next[head] = 0;
    prev[head] = NIL;
    let mut ret_of = vec![0usize; ops.len()];
    for (pos, (_, _, e)) in events.iter().enumerate() {
        if !e.is_call {
            ret_of[e.op] = pos;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, at: usize| {
        let (p, q) = (prev[at], next[at]);
        next[p] = q;
        if q != NIL {
            prev[q] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, at: usize| {
        let (p, q) = (prev[at], next[at]);
        next[p] = at;
        if q != NIL {
            prev[q] = at;
        }
    };
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state: Option<u64> = None;
    let mut seen: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<u64>)> = Vec::new();
    let mut cur = next[head];
    let (mut deepest, mut blocked) = (0usize, 0usize);
    while next[head] != NIL {
        if cur == NIL {
            return Err(blocked);
        }
        let entry = events[cur].2;
        if entry.is_call {
            let op = &ops[entry.op];
            let after = match op.op {
                Op::Write(v) => Some(Some(v)),
                Op::Read(seen_value) => (seen_value == state).then_some(state),
            };
            if let Some(after) = after {
                let mut bits = linearized.clone();
                bits[entry.op / 64] |= 1 << (entry.op % 64);
                if seen.insert((bits.clone(), after)) {
                    stack.push((cur, state));
                    state = after;
                    linearized = bits;
                    unlink(&mut next, &mut prev, cur);
                    unlink(&mut next, &mut prev, ret_of[entry.op]);
                    cur = next[head];
                    continue;
                }
            }
            cur = next[cur];
        } else {
            // A return whose call is not linearized: undo the most recent choice and try the next call.
            if stack.len() >= deepest {
                deepest = stack.len();
                blocked = entry.op;
            }
            let Some((call, before)) = stack.pop() else { return Err(blocked) };
            let op = events[call].2.op;
            state = before;
            linearized[op / 64] &= !(1 << (op % 64));
            relink(&mut next, &mut prev, ret_of[op]);
            relink(&mut next, &mut prev, call);
            cur = next[call];
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(key: u64, op: Op, call: u64, ret: Option<u64>) -> Operation {
        Operation { key, op, call, ret }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            op(1, Op::Read(None), 0, Some(1)),
            op(1, Op::Write(5), 2, Some(3)),
            op(1, Op::Read(Some(5)), 4, Some(5)),
            op(1, Op::Write(6), 6, Some(7)),
            op(1, Op::Read(Some(6)), 8, Some(9)),
        ];
        assert!(check(&h).is_empty());
    }

    #[test]
    fn stale_read_after_a_completed_write_is_caught() {
        let h = vec![
            op(1, Op::Write(5), 0, Some(1)),
            op(1, Op::Write(6), 2, Some(3)),
            op(1, Op::Read(Some(5)), 4, Some(5)),
        ];
        let v = check(&h);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].key, 1);
    }

    #[test]
    fn concurrent_write_may_be_seen_either_way() {
        // The write overlaps both reads: old-then-new is fine...
        let ok = vec![
            op(1, Op::Write(1), 0, Some(1)),
            op(1, Op::Write(2), 2, Some(10)),
            op(1, Op::Read(Some(1)), 3, Some(4)),
            op(1, Op::Read(Some(2)), 5, Some(6)),
        ];
        assert!(check(&ok).is_empty());
        // ...but new-then-old is not.
        let bad = vec![
            op(1, Op::Write(1), 0, Some(1)),
            op(1, Op::Write(2), 2, Some(10)),
            op(1, Op::Read(Some(2)), 3, Some(4)),
            op(1, Op::Read(Some(1)), 5, Some(6)),
        ];
        assert_eq!(check(&bad).len(), 1);
    }

    #[test]
    fn unknown_writes_may_take_effect_late_or_never() {
        let h = vec![
            op(1, Op::Write(1), 0, Some(1)),
            op(1, Op::Write(2), 2, None),
            op(1, Op::Read(Some(1)), 10, Some(11)),
            op(1, Op::Read(Some(2)), 20, Some(21)),
        ];
        assert!(check(&h).is_empty(), "a write of unknown outcome may apply after later reads began");
        let never = vec![op(1, Op::Write(2), 2, None), op(1, Op::Read(None), 10, Some(11))];
        assert!(check(&never).is_empty(), "or never");
        // But once it was seen it cannot be unseen without another write.
        let flicker = vec![
            op(1, Op::Write(1), 0, Some(1)),
            op(1, Op::Write(2), 2, None),
            op(1, Op::Read(Some(2)), 10, Some(11)),
            op(1, Op::Read(Some(1)), 20, Some(21)),
        ];
        assert_eq!(check(&flicker).len(), 1);
    }

    #[test]
    fn many_unknown_writes_that_nobody_read_are_cheap() {
        let mut h = vec![op(1, Op::Write(1), 0, Some(1))];
        for i in 0..200u64 {
            h.push(op(1, Op::Write(100 + i), 2 + i, None));
        }
        h.push(op(1, Op::Read(Some(1)), 500, Some(501)));
        h.push(op(1, Op::Read(Some(150)), 502, Some(503)));
        h.push(op(1, Op::Read(Some(150)), 504, Some(505)));
        assert!(check(&h).is_empty());
        h.push(op(1, Op::Read(Some(1)), 506, Some(507)));
        assert_eq!(check(&h).len(), 1, "the value 1 cannot come back after 150 was read");
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        let h = vec![op(3, Op::Write(9), 0, Some(1)), op(3, Op::Read(None), 5, Some(6))];
        let v = check(&h);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].lost_write(), Some((0, 1)), "the write, and the read that missed it");
        // Overwritten by an acknowledged write, then read back: the second write was lost.
        let h = vec![
            op(3, Op::Write(1), 0, Some(1)),
            op(3, Op::Write(2), 2, Some(3)),
            op(3, Op::Read(Some(2)), 4, Some(5)),
            op(3, Op::Read(Some(1)), 6, Some(7)),
        ];
        let v = check(&h);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].lost_write(), Some((1, 3)));
    }

    #[test]
    fn other_violations_are_not_lost_writes() {
        // A value never written.
        let v = check(&[op(2, Op::Read(Some(42)), 0, Some(1))]);
        assert_eq!(v[0].lost_write(), None);
        // A value seen, then unseen, by reads concurrent with its write: the write returned after both.
        let v = check(&[
            op(1, Op::Write(1), 0, Some(1)),
            op(1, Op::Write(2), 2, Some(10)),
            op(1, Op::Read(Some(2)), 3, Some(4)),
            op(1, Op::Read(Some(1)), 5, Some(6)),
        ]);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].lost_write(), None);
        // The same with a write of unknown outcome.
        let v = check(&[
            op(1, Op::Write(1), 0, Some(1)),
            op(1, Op::Write(2), 2, None),
            op(1, Op::Read(Some(2)), 10, Some(11)),
            op(1, Op::Read(Some(1)), 20, Some(21)),
        ]);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].lost_write(), None);
        // A value read back whose write overlaps the later write: not certainly older.
        let v = check(&[
            op(1, Op::Write(1), 0, Some(5)),
            op(1, Op::Write(2), 2, Some(3)),
            op(1, Op::Read(Some(2)), 6, Some(7)),
            op(1, Op::Read(Some(1)), 8, Some(9)),
            op(1, Op::Read(Some(2)), 10, Some(11)),
        ]);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].lost_write(), None);
    }

    #[test]
    fn value_never_written_is_caught() {
        let h = vec![op(2, Op::Read(Some(42)), 0, Some(1))];
        assert_eq!(check(&h).len(), 1);
    }

    #[test]
    fn keys_are_checked_independently() {
        let h = vec![
            op(1, Op::Write(1), 0, Some(1)),
            op(2, Op::Read(Some(1)), 2, Some(3)),
            op(1, Op::Read(Some(1)), 4, Some(5)),
        ];
        let v = check(&h);
        assert_eq!(v.iter().map(|v| v.key).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn many_concurrent_clients_check_quickly() {
        // 6 clients, 350 operations on one key, each write overlapping the others of its round: a search
        // without the memo would be exponential (this test would not finish).
        let mut h = Vec::new();
        let mut value = 0;
        for round in 0..50u64 {
            let base = round * 10;
            for c in 0..6u64 {
                value += 1;
                h.push(op(1, Op::Write(value), base + c, Some(base + c + 6)));
            }
            h.push(op(1, Op::Read(Some(value)), base + 9, Some(base + 9)));
        }
        // The read at base+9 overlaps writes of this round whose calls precede it; the last write wins in
        // some order, so the history is linearizable.
        assert!(check(&h).is_empty());
    }
}
