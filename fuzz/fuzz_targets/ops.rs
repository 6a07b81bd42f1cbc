//! Operation sequences: the model test's workloads, chosen by the fuzzer,
//! with every version compared byte for byte against the oracle after every
//! step, and the store checked clean at the end and after a reopen.
//!
//! Input: one byte picking the chunk size (and, in its high bits, how held
//! overwrites are treated: the default limit, a few chunks, or one), then
//! 6-byte ops `[kind, pick, offset lo, offset hi, len, seed]`. The committer
//! thread is stopped, so that an input always runs the same way.
#![no_main]

#[path = "../../engine/tests/common/mod.rs"]
mod common;

use common::{run_workload_held, Held, Op};
use libfuzzer_sys::fuzz_target;

const SIZE: usize = 64 * 1024;

fn op(e: &[u8]) -> Op {
    let pick = usize::from(e[1]);
    let offset = usize::from(u16::from_le_bytes([e[2], e[3]])) % SIZE;
    // Lengths up to 16 KiB, some crossing many chunks, some a few bytes.
    let len = (usize::from(e[4]) * 67 + 1).min(SIZE - offset);
    match e[0] % 16 {
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
        13 => Op::Settle,
        14 => Op::GrowOrigin {
            bytes: [4096, 12288, 6144][usize::from(e[5]) % 3],
        },
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
    let ops: Vec<Op> = rest.chunks_exact(6).take(48).map(op).collect();
    let held = Held {
        background: false,
        limit: match (first >> 2) % 3 {
            0 => None,
            1 => Some(4 * 4096 * 8),
            _ => Some(1),
        },
    };
    if let Err(e) = run_workload_held(1 << (first % 4), SIZE, 8 << 20, held, &ops) {
        panic!("{e}");
    }
});
