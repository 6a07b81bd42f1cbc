//! The crash harness shared by the crash tests and the crash campaign:
//! run a workload on fault-injecting devices, crash at a chosen write or
//! sync, rebuild the devices a restarted machine would find, reopen, check,
//! and compare every version with the model.

use super::*;
use dms_engine::io::{Dev, FaultController, FaultDev};
use dms_engine::{FormatOptions, Store};
use proptest::test_runner::TestCaseError;
use std::sync::Arc;

pub const ORIGIN_BYTES: usize = 32 * 1024;
pub const COW_BYTES: usize = 4 << 20;

/// The devices and space policy of a crash workload.
#[derive(Clone, Copy, Debug)]
pub struct Rig {
    pub origin_bytes: usize,
    pub cow_bytes: usize,
    /// `Some(keep_min)`: the on-full rule is `delete-oldest`.
    pub keep_min: Option<u32>,
}

impl Rig {
    /// Room to spare: the device never fills.
    pub const PLAIN: Rig = Rig {
        origin_bytes: ORIGIN_BYTES,
        cow_bytes: COW_BYTES,
        keep_min: None,
    };
    /// The smallest COW device under a larger origin and `delete-oldest`:
    /// a few snapshots fill it, and writes delete the oldest.
    pub const FULL: Rig = Rig {
        origin_bytes: 1 << 20,
        cow_bytes: 1 << 20,
        keep_min: Some(1),
    };
}

/// Writes since the last durable point: (tag, offset, bytes).
pub type Pending = Vec<(u32, usize, Vec<u8>)>;

/// Does the engine match `base`, allowing pending bytes to be old or new,
/// and the snapshots in `may_be_gone` (deleted by the on-full rule) to be
/// missing?
pub fn matches(
    store: &Store,
    base: &Model,
    pending: &Pending,
    may_be_gone: &[u32],
) -> Result<(), String> {
    let mut tags = store.tags(ORIGIN).map_err(|e| e.to_string())?;
    tags.insert(0, 0);
    let expected: Vec<u32> = base.tags();
    let missing_ok = expected
        .iter()
        .filter(|t| !tags.contains(t))
        .all(|t| may_be_gone.contains(t));
    if !missing_ok || tags.iter().any(|t| !expected.contains(t)) {
        return Err(format!("tags {tags:?}, expected {expected:?}"));
    }
    dms_engine::testing::verify_zero_maps(store)?;
    for (tag, want) in base.versions.iter().filter(|(t, _)| tags.contains(t)) {
        let v = store.volume(ORIGIN, *tag).map_err(|e| e.to_string())?;
        let got = read_all(&v);
        holes_read_zeros(&v, *tag, &got)?;
        if got.len() != want.len() {
            return Err(format!(
                "tag {tag} is {} bytes, expected {}",
                got.len(),
                want.len()
            ));
        }
        for (b, (&g, &w)) in got.iter().zip(want).enumerate() {
            if g == w {
                continue;
            }
            let ok = pending.iter().any(|(t, off, data)| {
                t == tag && b >= *off && b < off + data.len() && data[b - off] == g
            });
            if !ok {
                return Err(format!(
                    "tag {tag} byte {b}: got {g}, expected {w} (or a pending write)"
                ));
            }
        }
    }
    Ok(())
}

pub struct Setup {
    ctl: Arc<FaultController>,
    origin: Arc<FaultDev>,
    cow: Arc<FaultDev>,
    store: Store,
    held: Held,
    rig: Rig,
    /// Snapshots the on-full rule deleted so far.
    gone: Vec<u32>,
}

/// Run crash workloads with the committer thread (the campaign's
/// `--background`): its commits and writes then race the workload, so a
/// crash point lands at a different place each time.
pub static BACKGROUND: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The held-data treatment of a crash workload: normally without the
/// committer thread (the device operations must repeat exactly), with the
/// default limit, a few chunks' worth, or one chunk (every write drains
/// what the one before held), picked from the workload itself.
pub fn held_for(ops: &[Op]) -> Held {
    Held {
        background: BACKGROUND.load(std::sync::atomic::Ordering::Relaxed),
        limit: match ops.len() % 3 {
            0 => None,
            1 => Some(3 * 4 * 4096),
            _ => Some(1),
        },
    }
}

pub fn setup(chunk_pages: u32, initial: &[u8], held: Held, rig: Rig) -> Setup {
    let ctl = FaultController::new();
    let origin = Arc::new(FaultDev::new("origin", initial.to_vec(), ctl.clone()));
    let cow = Arc::new(FaultDev::new("cow", vec![0u8; rig.cow_bytes], ctl.clone()));
    let store = Store::format(
        cow.clone(),
        &FormatOptions {
            chunk_pages,
            force: false,
        },
    )
    .unwrap();
    held.apply(&store);
    if let Some(keep_min) = rig.keep_min {
        store
            .set_policy(dms_engine::StorePolicy {
                on_full: dms_engine::OnFull::DeleteOldest,
                keep_min,
                ..Default::default()
            })
            .unwrap();
    }
    let dev: Dev = origin.clone();
    store.bind(ORIGIN, dev).unwrap();
    Setup {
        ctl,
        origin,
        cow,
        store,
        held,
        rig,
        gone: Vec::new(),
    }
}

/// Run the workload; with `crash_at`, crash there. Returns the model at the
/// last durable point, the model after the step in flight (if it may have
/// become durable), and the writes since the last durable point.
pub fn drive(s: &mut Setup, ops: &[Op], model: &mut Model) -> (Model, Option<Model>, Pending) {
    let mut durable = model.clone();
    let mut pending: Pending = Vec::new();
    for op in ops {
        let Some(step) = model.resolve(op) else {
            continue;
        };
        let mut after = model.clone();
        after.apply(&step);
        match &step {
            Step::Write { tag, offset, data } => pending.push((*tag, *offset, data.clone())),
            Step::Zero { tag, offset, len } => pending.push((*tag, *offset, vec![0u8; *len])),
            _ => {}
        }
        if let Step::GrowOrigin { to } = step {
            s.origin.grow(to);
        }
        let res = if let Step::Reopen = step {
            s.store.flush().and_then(|_| {
                let cow: Dev = s.cow.clone();
                let store = Store::open(cow)?;
                s.held.apply(&store);
                let dev: Dev = s.origin.clone();
                store.attach(ORIGIN, dev)?;
                s.store = store;
                Ok(())
            })
        } else {
            run(&s.store, &step)
        };
        // A full device with no snapshot left to delete: the write stops
        // part way; what it wrote is pending, the version reads what it
        // reads now.
        if let (Err(dms_engine::Error::NoSpace), false, Some(_)) =
            (&res, s.ctl.crashed(), s.rig.keep_min)
        {
            match &step {
                Step::Write { tag, .. } | Step::Zero { tag, .. } => {
                    let v = s.store.volume(ORIGIN, *tag).unwrap();
                    let mut got = vec![0u8; v.size() as usize];
                    if v.read_at(&mut got, 0).is_err() {
                        // The committer thread met the crash meanwhile.
                        assert!(s.ctl.crashed());
                        return (durable, None, pending);
                    }
                    model.versions.insert(*tag, got);
                }
                // Started (durably) but not merged to the end: it goes on
                // running.
                Step::Rollback { tag } => {
                    model.apply(&Step::RollbackStart { tag: *tag });
                    durable = model.clone();
                    pending.clear();
                }
                Step::Finish => {}
                _ => panic!("step {step:?} found the device full"),
            }
            forget_sacrificed(s, model);
            continue;
        }
        if res.is_err() {
            assert!(
                s.ctl.crashed(),
                "step {step:?} failed without a crash: {res:?}"
            );
            let structural = matches!(
                step,
                Step::SnapOrigin
                    | Step::SnapOf { .. }
                    | Step::Delete { .. }
                    | Step::Rollback { .. }
                    | Step::RollbackStart { .. }
                    | Step::GrowOrigin { .. }
            );
            return (durable, structural.then_some(after), pending);
        }
        let was_pending = model.pending.is_some();
        *model = after;
        forget_sacrificed(s, model);
        // Finishing commits only when a rollback was running.
        let flushes = match step {
            Step::Write { .. } | Step::Zero { .. } | Step::Clean | Step::Settle => false,
            Step::Finish => was_pending,
            _ => true,
        };
        if flushes {
            durable = model.clone();
            pending.clear();
        }
    }
    (durable, None, pending)
}

/// Take what the on-full rule deleted out of the model.
fn forget_sacrificed(s: &mut Setup, model: &mut Model) {
    for (_, tag) in s.store.take_sacrificed() {
        model.versions.remove(&tag);
        s.gone.push(tag);
    }
}

/// Snapshots a crash may have left deleted by the on-full rule: those it
/// deleted before, and (if the crash came in a write) any but the newest
/// `keep_min` of the model's.
fn may_be_gone(s: &Setup, model: &Model) -> Vec<u32> {
    let mut out = s.gone.clone();
    if let Some(keep_min) = s.rig.keep_min {
        let snaps: Vec<u32> = model.tags().into_iter().filter(|&t| t != 0).collect();
        out.extend(&snaps[..snaps.len().saturating_sub(keep_min as usize)]);
    }
    out
}

/// Writes and syncs a workload makes (a dry run without a crash).
pub fn count_ops(chunk_pages: u32, ops: &[Op]) -> u64 {
    count_ops_on(Rig::PLAIN, chunk_pages, ops)
}

/// [`count_ops`] on the given rig.
pub fn count_ops_on(rig: Rig, chunk_pages: u32, ops: &[Op]) -> u64 {
    let initial = pattern(rig.origin_bytes, 0x3C);
    let mut s = setup(chunk_pages, &initial, held_for(ops), rig);
    let base_ops = s.ctl.ops();
    let mut m = Model::new(initial);
    drive(&mut s, ops, &mut m);
    s.ctl.ops() - base_ops
}

/// Run the workload with a crash at its `at`-th write or sync, recover and
/// verify. Ok(false) if the workload ended before that point.
pub fn crash_at(chunk_pages: u32, ops: &[Op], at: u64, total: u64) -> Result<bool, TestCaseError> {
    crash_at_on(Rig::PLAIN, chunk_pages, ops, at, total)
}

/// The snapshots the on-full rule deletes in a dry run of the workload.
pub fn sacrificed_on(rig: Rig, chunk_pages: u32, ops: &[Op]) -> Vec<u32> {
    let initial = pattern(rig.origin_bytes, 0x3C);
    let mut s = setup(chunk_pages, &initial, held_for(ops), rig);
    let mut m = Model::new(initial);
    drive(&mut s, ops, &mut m);
    s.gone
}

/// [`crash_at`] on the given rig.
pub fn crash_at_on(
    rig: Rig,
    chunk_pages: u32,
    ops: &[Op],
    at: u64,
    total: u64,
) -> Result<bool, TestCaseError> {
    let initial = pattern(rig.origin_bytes, 0x3C);
    let mut s = setup(chunk_pages, &initial, held_for(ops), rig);
    s.ctl.crash_after(at);
    let mut model = Model::new(initial.clone());
    let (durable, maybe, pending) = drive(&mut s, ops, &mut model);
    if !s.ctl.crashed() {
        return Ok(false);
    }
    let mut gone = may_be_gone(&s, &durable);
    if let Some(a) = &maybe {
        gone.extend(may_be_gone(&s, a));
    }
    let seed = at.wrapping_mul(0x9E37_79B9) ^ u64::from(chunk_pages);
    let origin_img = s.origin.crash_image(seed);
    let cow_img = s.cow.crash_image(seed ^ 0xFFFF);
    drop(s);
    let ctl = FaultController::new();
    let origin: Dev = Arc::new(FaultDev::new("origin", origin_img, ctl.clone()));
    let cow: Dev = Arc::new(FaultDev::new("cow", cow_img, ctl));
    let store =
        Store::open(cow).map_err(|e| TestCaseError::fail(format!("crash at {at}: open: {e}")))?;
    store
        .attach(ORIGIN, origin)
        .map_err(|e| TestCaseError::fail(format!("crash at {at}: attach: {e}")))?;
    let report = store
        .check()
        .map_err(|e| TestCaseError::fail(format!("crash at {at}: check: {e}")))?;
    if !report.is_clean() {
        return Err(TestCaseError::fail(format!(
            "crash at {at}: {:?}",
            report.problems
        )));
    }
    let first = maybe.as_ref().map(|a| matches(&store, a, &pending, &gone));
    match first {
        Some(Ok(())) => {}
        _ => {
            if let Err(e) = matches(&store, &durable, &pending, &gone) {
                let other = first
                    .map(|r| r.err().unwrap_or_default())
                    .unwrap_or_default();
                return Err(TestCaseError::fail(format!(
                    "crash at op {at} of {total}: {e} {other}"
                )));
            }
        }
    }
    // A rollback left running finishes without changing what anyone reads.
    match store.finish_rollback(ORIGIN) {
        // Still no room for the rest of the merge: it stays pending.
        Err(dms_engine::Error::NoSpace) if rig.keep_min.is_some() => {}
        res => res.map_err(|e| TestCaseError::fail(format!("finish after crash {at}: {e}")))?,
    }
    let gone: Vec<u32> = gone
        .into_iter()
        .chain(store.take_sacrificed().into_iter().map(|(_, t)| t))
        .collect();
    let again = maybe.as_ref().map(|a| matches(&store, a, &pending, &gone));
    if !matches!(again, Some(Ok(()))) {
        matches(&store, &durable, &pending, &gone)
            .map_err(|e| TestCaseError::fail(format!("after finishing, crash at {at}: {e}")))?;
    }
    // The recovered store keeps working and cleans up to a clean check.
    store
        .clean()
        .map_err(|e| TestCaseError::fail(format!("clean after crash {at}: {e}")))?;
    let report = store.check().unwrap();
    if !report.is_clean() {
        return Err(TestCaseError::fail(format!(
            "after clean, crash at {at}: {:?}",
            report.problems
        )));
    }
    Ok(true)
}

pub fn crash_case(chunk_pages: u32, ops: &[Op], stride_div: u64) -> Result<u64, TestCaseError> {
    crash_case_on(Rig::PLAIN, chunk_pages, ops, stride_div)
}

/// [`crash_case`] on the given rig.
pub fn crash_case_on(
    rig: Rig,
    chunk_pages: u32,
    ops: &[Op],
    stride_div: u64,
) -> Result<u64, TestCaseError> {
    let total = count_ops_on(rig, chunk_pages, ops);
    let stride = (total / stride_div).max(1);
    let mut crashes = 0u64;
    let mut at = 1;
    while at <= total {
        if !crash_at_on(rig, chunk_pages, ops, at, total)? {
            break;
        }
        crashes += 1;
        at += stride;
    }
    Ok(crashes)
}
