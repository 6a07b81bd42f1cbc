//! Operation sequences: the model test's workloads, chosen by the fuzzer,
//! with every version compared byte for byte against the oracle after every
//! step, and the store checked clean at the end and after a reopen.
//!
//! Input: one byte picking the chunk size, then 6-byte ops `[kind, pick,
//! offset lo, offset hi, len, seed]`.
#![no_main]

#[path = "../../engine/tests/common/mod.rs"]
mod common;

use common::{compare, pattern, run, Model, Op, Step, ORIGIN};
use dms_engine::io::{Dev, MemDev};
use dms_engine::{FormatOptions, Store};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

const SIZE: usize = 64 * 1024;

fn op(e: &[u8]) -> Op {
    let pick = usize::from(e[1]);
    let offset = usize::from(u16::from_le_bytes([e[2], e[3]])) % SIZE;
    // Lengths up to 16 KiB, some crossing many chunks, some a few bytes.
    let len = (usize::from(e[4]) * 67 + 1).min(SIZE - offset);
    match e[0] % 14 {
        0..=4 => Op::Write {
            pick,
            offset,
            len,
            seed: e[5],
        },
        5 => Op::Zero { pick, offset, len },
        6 => Op::SnapOrigin,
        7 => Op::SnapOf { pick },
        8 => Op::Delete { pick },
        9 => Op::Rollback { pick },
        10 => Op::RollbackBg { pick },
        11 => Op::Finish,
        12 => Op::Clean,
        _ => {
            if e[5] & 1 == 0 {
                Op::Flush
            } else {
                Op::Reopen
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let chunk_pages = 1 << (first % 4);
    let initial = pattern(SIZE, 0xA5);
    let origin: Dev = Arc::new(MemDev::from_bytes("origin", &initial));
    let cow = Arc::new(MemDev::new("cow", 8 << 20));
    let mut store = Store::format(
        cow.clone(),
        &FormatOptions {
            chunk_pages,
            force: false,
        },
    )
    .unwrap();
    store.bind(ORIGIN, origin.clone()).unwrap();
    let mut model = Model::new(initial);
    for (i, e) in rest.chunks_exact(6).take(48).enumerate() {
        let Some(step) = model.resolve(&op(e)) else {
            continue;
        };
        if let Step::Reopen = step {
            store.flush().unwrap();
            drop(store);
            store = Store::open(cow.clone()).unwrap();
            store.attach(ORIGIN, origin.clone()).unwrap();
        }
        run(&store, &step).unwrap_or_else(|e| panic!("step {i} {step:?}: {e}"));
        model.apply(&step);
        if let Err(e) = compare(&store, &model) {
            panic!("after step {i} {step:?}: {e}");
        }
    }
    store.finish_rollback(ORIGIN).unwrap();
    store.clean().unwrap();
    let report = store.check().unwrap();
    assert!(report.is_clean(), "check: {:?}", report.problems);
    drop(store);
    let store = Store::open(cow).unwrap();
    store.attach(ORIGIN, origin).unwrap();
    compare(&store, &model).unwrap();
    assert!(store.check().unwrap().is_clean());
});
