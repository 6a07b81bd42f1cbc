//! The oracle: a model that keeps every version's full content in memory,
//! and the operations the property tests run against model and engine.
#![allow(dead_code)]

pub mod crashsim;

use dms_engine::{Store, Volume};
use proptest::prelude::*;
use std::collections::BTreeMap;

pub const ORIGIN: &str = "origin";

/// One step of a workload. Tags are picked by index into the live tags, so
/// a sequence stays meaningful whatever was deleted before.
#[derive(Clone, Debug)]
pub enum Op {
    Write {
        pick: usize,
        offset: usize,
        len: usize,
        seed: u8,
    },
    Zero {
        pick: usize,
        offset: usize,
        len: usize,
    },
    SnapOrigin,
    SnapOf {
        pick: usize,
    },
    Delete {
        pick: usize,
    },
    Rollback {
        pick: usize,
    },
    /// Start a rollback and leave it running (origin I/O goes on meanwhile).
    RollbackBg {
        pick: usize,
    },
    /// Finish a pending rollback.
    Finish,
    Flush,
    Clean,
    Reopen,
    /// Let the committer write held overwrites out (commit, then device
    /// writes; no origin sync).
    Settle,
    /// Make the origin device larger by `bytes` and grow the origin.
    GrowOrigin {
        bytes: usize,
    },
}

pub fn op_strategy(size: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (any::<usize>(), 0..size, 1..size / 2, any::<u8>())
            .prop_map(move |(pick, offset, len, seed)| Op::Write { pick, offset, len: len.min(size - offset), seed }),
        2 => (any::<usize>(), 0..size, 1..size / 4)
            .prop_map(move |(pick, offset, len)| Op::Zero { pick, offset, len: len.min(size - offset) }),
        3 => Just(Op::SnapOrigin),
        2 => any::<usize>().prop_map(|pick| Op::SnapOf { pick }),
        2 => any::<usize>().prop_map(|pick| Op::Delete { pick }),
                1 => any::<usize>().prop_map(|pick| Op::Rollback { pick }),
        2 => any::<usize>().prop_map(|pick| Op::RollbackBg { pick }),
        1 => Just(Op::Finish),
        1 => Just(Op::Flush),
        1 => Just(Op::Clean),
        1 => Just(Op::Reopen),
        2 => Just(Op::Settle),
        1 => prop_oneof![Just(4096usize), Just(12288), Just(6144)].prop_map(|bytes| Op::GrowOrigin { bytes }),
    ]
}

/// A workload: ops of `op_strategy`, and now and then a stream of origin
/// writes each starting where the one before ended (a journal, a log), the
/// pattern that makes the engine copy chunks out ahead of the writer.
pub fn ops_strategy(size: usize, count: std::ops::Range<usize>) -> impl Strategy<Value = Vec<Op>> {
    let group = prop_oneof![
        8 => op_strategy(size).prop_map(|op| vec![op]),
        1 => (0..size, prop_oneof![Just(2048usize), Just(4096), Just(6144), Just(8192)], 3..17usize, any::<u8>())
            .prop_map(move |(start, len, n, seed)| {
                (0..n)
                    .map(|i| start + i * len)
                    .take_while(|&at| at < size)
                    .enumerate()
                    .map(|(i, at)| Op::Write { pick: 0, offset: at, len: len.min(size - at), seed: seed.wrapping_add(i as u8) })
                    .collect()
            }),
    ];
    prop::collection::vec(group, count).prop_map(|groups| groups.into_iter().flatten().collect())
}

/// How a workload's store treats held overwrites.
#[derive(Clone, Copy, Debug)]
pub struct Held {
    /// The committer thread drains held data as it comes (racing the
    /// workload's reads); without it only flushes, structural commands,
    /// the limit and Settle do, so runs are exactly repeatable.
    pub background: bool,
    /// Bound on held bytes (None: the default).
    pub limit: Option<u64>,
}

impl Held {
    /// Deterministic: no committer thread, default limit.
    pub const MANUAL: Held = Held {
        background: false,
        limit: None,
    };

    pub fn apply(&self, store: &Store) {
        dms_engine::testing::set_background_committer(store, self.background);
        if let Some(l) = self.limit {
            store.set_held_limit(l);
        }
    }
}

/// Held-data settings for the model test: manual or background, with the
/// default limit, a few chunks, or so little that every write drains.
pub fn held_strategy() -> impl Strategy<Value = Held> {
    (any::<bool>(), 0..3u8).prop_map(|(background, l)| Held {
        background,
        limit: match l {
            0 => None,
            1 => Some(5 * 4096 * 4),
            _ => Some(1),
        },
    })
}

/// Every version's content.
#[derive(Clone, Debug)]
pub struct Model {
    pub versions: BTreeMap<u32, Vec<u8>>,
    pub next_tag: u32,
    /// The tag of a rollback started and not finished.
    pub pending: Option<u32>,
    /// The origin's first size: ops give offsets in it, and they are
    /// scaled to a version's own size.
    pub base: usize,
    /// Times the origin grew (at most [`MAX_GROWS`]).
    pub grown: u32,
}

/// Grows of the origin a workload makes at most.
pub const MAX_GROWS: u32 = 3;

impl Model {
    pub fn new(origin: Vec<u8>) -> Model {
        let base = origin.len();
        let mut versions = BTreeMap::new();
        versions.insert(0, origin);
        Model {
            versions,
            next_tag: 1,
            pending: None,
            base,
            grown: 0,
        }
    }

    pub fn tags(&self) -> Vec<u32> {
        self.versions.keys().copied().collect()
    }

    fn pick_any(&self, pick: usize) -> u32 {
        let t = self.tags();
        t[pick % t.len()]
    }

    fn pick_snapshot(&self, pick: usize) -> Option<u32> {
        let t: Vec<u32> = self.tags().into_iter().filter(|&t| t != 0).collect();
        (!t.is_empty()).then(|| t[pick % t.len()])
    }

    /// Resolve an op's picks to concrete tags: what both sides then run.
    pub fn resolve(&self, op: &Op) -> Option<Step> {
        if let Some(p) = self.pending {
            // While a rollback runs: no second one, no snapshot of the origin,
            // no deleting the tag being rolled back; those finish it instead.
            match *op {
                Op::Rollback { .. }
                | Op::RollbackBg { .. }
                | Op::SnapOrigin
                | Op::GrowOrigin { .. } => return Some(Step::Finish),
                Op::Delete { pick } if self.pick_snapshot(pick) == Some(p) => {
                    return Some(Step::Finish)
                }
                _ => {}
            }
        }
        Some(match *op {
            Op::Write {
                pick,
                offset,
                len,
                seed,
            } => {
                let tag = self.pick_any(pick);
                let (offset, len) = self.scale(tag, offset, len);
                let data: Vec<u8> = (0..len)
                    .map(|i| seed.wrapping_add((i * 7 + i / 13) as u8) | 1)
                    .collect();
                Step::Write { tag, offset, data }
            }
            Op::Zero { pick, offset, len } => {
                let tag = self.pick_any(pick);
                let (offset, len) = self.scale(tag, offset, len);
                Step::Zero { tag, offset, len }
            }
            Op::SnapOrigin => Step::SnapOrigin,
            Op::SnapOf { pick } => Step::SnapOf {
                tag: self.pick_snapshot(pick)?,
            },
            Op::Delete { pick } => Step::Delete {
                tag: self.pick_snapshot(pick)?,
            },
            // A snapshot taken before the origin grew cannot be rolled
            // back into it (engine/tests/grow.rs shows the refusal).
            Op::Rollback { pick } => Step::Rollback {
                tag: self.pick_snapshot(pick).filter(|t| self.same_size(*t))?,
            },
            Op::RollbackBg { pick } => Step::RollbackStart {
                tag: self.pick_snapshot(pick).filter(|t| self.same_size(*t))?,
            },
            Op::GrowOrigin { bytes } => {
                if self.grown >= MAX_GROWS {
                    return None;
                }
                Step::GrowOrigin {
                    to: self.versions[&0].len() + bytes,
                }
            }
            Op::Finish => Step::Finish,
            Op::Flush => Step::Flush,
            Op::Clean => Step::Clean,
            Op::Reopen => Step::Reopen,
            Op::Settle => Step::Settle,
        })
    }

    /// An op's offset and length (in the first size) within `tag`'s size.
    fn scale(&self, tag: u32, offset: usize, len: usize) -> (usize, usize) {
        let size = self.versions[&tag].len();
        let at = ((offset as u128 * size as u128) / self.base as u128) as usize;
        let at = at.min(size - 1);
        (at, len.min(size - at))
    }

    fn same_size(&self, tag: u32) -> bool {
        self.versions[&tag].len() == self.versions[&0].len()
    }

    pub fn apply(&mut self, step: &Step) {
        match step {
            Step::Write { tag, offset, data } => self.versions.get_mut(tag).unwrap()
                [*offset..*offset + data.len()]
                .copy_from_slice(data),
            Step::Zero { tag, offset, len } => {
                self.versions.get_mut(tag).unwrap()[*offset..*offset + len].fill(0)
            }
            Step::SnapOrigin => {
                let c = self.versions[&0].clone();
                self.versions.insert(self.next_tag, c);
                self.next_tag += 1;
            }
            Step::SnapOf { tag } => {
                let c = self.versions[tag].clone();
                self.versions.insert(self.next_tag, c);
                self.next_tag += 1;
            }
            Step::Delete { tag } => {
                self.versions.remove(tag);
            }
            Step::Rollback { tag } => {
                let c = self.versions[tag].clone();
                self.versions.insert(0, c);
            }
            Step::RollbackStart { tag } => {
                let c = self.versions[tag].clone();
                self.versions.insert(0, c);
                self.pending = Some(*tag);
            }
            Step::Finish => self.pending = None,
            Step::GrowOrigin { to } => {
                self.versions.get_mut(&0).unwrap().resize(*to, 0);
                self.grown += 1;
            }
            Step::Flush | Step::Clean | Step::Reopen | Step::Settle => {}
        }
    }
}

/// An op with its tags resolved.
#[derive(Clone, Debug)]
pub enum Step {
    Write {
        tag: u32,
        offset: usize,
        data: Vec<u8>,
    },
    Zero {
        tag: u32,
        offset: usize,
        len: usize,
    },
    SnapOrigin,
    SnapOf {
        tag: u32,
    },
    Delete {
        tag: u32,
    },
    Rollback {
        tag: u32,
    },
    RollbackStart {
        tag: u32,
    },
    Finish,
    Flush,
    Clean,
    Reopen,
    Settle,
    /// Grow the origin to `to` bytes (the caller grows its device first).
    GrowOrigin {
        to: usize,
    },
}

/// Run a step on the engine (Reopen, and growing the origin's device, are
/// the caller's business).
pub fn run(store: &Store, step: &Step) -> dms_engine::Result<()> {
    match step {
        Step::Write { tag, offset, data } => {
            store.volume(ORIGIN, *tag)?.write_at(data, *offset as u64)
        }
        Step::Zero { tag, offset, len } => store
            .volume(ORIGIN, *tag)?
            .discard(*offset as u64, *len as u64),
        Step::SnapOrigin => store.snapshot_origin(ORIGIN, "so").map(|_| ()),
        Step::SnapOf { tag } => store.snapshot_of(ORIGIN, *tag, "ss").map(|_| ()),
        Step::Delete { tag } => store.delete(ORIGIN, *tag),
        Step::Rollback { tag } => store.rollback(ORIGIN, *tag),
        Step::RollbackStart { tag } => store.rollback_start(ORIGIN, *tag),
        Step::Finish => store.finish_rollback(ORIGIN),
        Step::Flush => store.flush(),
        Step::Clean => store.clean().map(|_| ()),
        Step::Reopen => Ok(()),
        Step::Settle => dms_engine::testing::settle(store),
        Step::GrowOrigin { to } => {
            let (_, after) = store.grow_origin(ORIGIN)?;
            assert_eq!(after, *to as u64, "the origin grew to the device's size");
            Ok(())
        }
    }
}

pub fn read_all(v: &Volume) -> Vec<u8> {
    let mut buf = vec![0u8; v.size() as usize];
    v.read_at(&mut buf, 0).unwrap();
    buf
}

/// Block status never calls data "never stored": every extent of `v`
/// (tag `tag`) reported as a hole is zeros in `content`.
pub fn holes_read_zeros(v: &Volume, tag: u32, content: &[u8]) -> Result<(), String> {
    for x in v.extents(0, v.size()).map_err(|e| e.to_string())? {
        let (a, b) = (x.offset as usize, (x.offset + x.len) as usize);
        if x.hole && content[a..b].iter().any(|&c| c != 0) {
            return Err(format!(
                "tag {tag}: {a}..{b} is reported a hole but holds data"
            ));
        }
    }
    Ok(())
}

/// Compare every version of the engine with the model.
pub fn compare(store: &Store, model: &Model) -> Result<(), String> {
    dms_engine::testing::verify_zero_maps(store)?;
    let mut tags = store.tags(ORIGIN).map_err(|e| e.to_string())?;
    tags.insert(0, 0);
    if tags != model.tags() {
        return Err(format!(
            "tags differ: engine {tags:?}, model {:?}",
            model.tags()
        ));
    }
    for (tag, want) in &model.versions {
        let v = store.volume(ORIGIN, *tag).map_err(|e| e.to_string())?;
        if v.size() != want.len() as u64 {
            return Err(format!(
                "tag {tag} is {} bytes, want {}",
                v.size(),
                want.len()
            ));
        }
        let got = read_all(&v);
        holes_read_zeros(&v, *tag, want)?;
        if &got != want {
            let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
            return Err(format!(
                "tag {tag} differs first at byte {at}: got {} want {}",
                got[at], want[at]
            ));
        }
    }
    Ok(())
}

/// A workload on a fresh store and the oracle, every version compared
/// after every step; then any rollback finished, everything cleaned and
/// checked, and compared again after a reopen. The first difference.
pub fn run_workload(
    chunk_pages: u32,
    origin_bytes: usize,
    cow_bytes: u64,
    ops: &[Op],
) -> Result<(), String> {
    run_workload_held(chunk_pages, origin_bytes, cow_bytes, Held::MANUAL, ops)
}

/// [`run_workload`] with the given treatment of held overwrites.
pub fn run_workload_held(
    chunk_pages: u32,
    origin_bytes: usize,
    cow_bytes: u64,
    held: Held,
    ops: &[Op],
) -> Result<(), String> {
    use dms_engine::io::{Dev, MemDev};
    use dms_engine::FormatOptions;
    use std::sync::Arc;
    let e = |what: &str, err: dms_engine::Error| format!("{what}: {err}");
    let initial = pattern(origin_bytes, 0xA5);
    let origin_mem = Arc::new(MemDev::from_bytes("origin", &initial));
    let origin: Dev = origin_mem.clone();
    let cow = Arc::new(MemDev::new("cow", cow_bytes));
    let mut store = Store::format(
        cow.clone(),
        &FormatOptions {
            chunk_pages,
            force: false,
        },
    )
    .map_err(|err| e("format", err))?;
    held.apply(&store);
    store
        .bind(ORIGIN, origin.clone())
        .map_err(|err| e("bind", err))?;
    let mut model = Model::new(initial);
    for (i, op) in ops.iter().enumerate() {
        let Some(step) = model.resolve(op) else {
            continue;
        };
        if let Step::Reopen = step {
            store.flush().map_err(|err| e("flush", err))?;
            drop(store);
            store = Store::open(cow.clone()).map_err(|err| e("reopen", err))?;
            held.apply(&store);
            store
                .attach(ORIGIN, origin.clone())
                .map_err(|err| e("attach", err))?;
        }
        if let Step::GrowOrigin { to } = step {
            origin_mem.grow(to as u64);
        }
        run(&store, &step).map_err(|err| format!("step {i} {step:?}: {err}"))?;
        model.apply(&step);
        compare(&store, &model).map_err(|err| format!("after step {i} {step:?}: {err}"))?;
    }
    store
        .finish_rollback(ORIGIN)
        .map_err(|err| e("finish", err))?;
    compare(&store, &model).map_err(|err| format!("after finishing: {err}"))?;
    store.clean().map_err(|err| e("clean", err))?;
    let report = store.check().map_err(|err| e("check", err))?;
    if !report.is_clean() {
        return Err(format!("check: {:?}", report.problems));
    }
    compare(&store, &model)?;
    drop(store);
    let store = Store::open(cow).map_err(|err| e("reopen", err))?;
    store
        .attach(ORIGIN, origin)
        .map_err(|err| e("attach", err))?;
    compare(&store, &model)?;
    let report = store.check().map_err(|err| e("check", err))?;
    if !report.is_clean() {
        return Err(format!("check after reopen: {:?}", report.problems));
    }
    Ok(())
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| seed ^ (i as u8).wrapping_mul(31) ^ ((i >> 8) as u8))
        .collect()
}
