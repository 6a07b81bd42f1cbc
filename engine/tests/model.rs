//! Model-based property test: random workloads on engine and oracle, every
//! version compared byte for byte after every step.

mod common;

use common::*;
use proptest::prelude::*;

const ORIGIN_BYTES: usize = 64 * 1024;
const COW_BYTES: u64 = 8 << 20;
const AHEAD_ORIGIN_BYTES: usize = 256 * 1024;

fn cases() -> u32 {
    std::env::var("DMS_MODEL_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000)
}

fn run_case(chunk_pages: u32, held: Held, ops: &[Op]) -> Result<(), TestCaseError> {
    run_workload_held(chunk_pages, ORIGIN_BYTES, COW_BYTES, held, ops).map_err(TestCaseError::fail)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_version_matches_the_model_chunk_1(held in held_strategy(), ops in ops_strategy(ORIGIN_BYTES, 1..40)) {
        run_case(1, held, &ops)?;
    }

    /// A larger origin (four stripe groups of 4 KiB chunks), so that
    /// writers going in order cross into new groups and get chunks copied
    /// out ahead of them.
    #[test]
    fn every_version_matches_the_model_with_copy_outs_ahead(held in held_strategy(), ops in ops_strategy(AHEAD_ORIGIN_BYTES, 1..30)) {
        run_workload_held(1, AHEAD_ORIGIN_BYTES, COW_BYTES, held, &ops).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn every_version_matches_the_model_chunk_4(held in held_strategy(), ops in ops_strategy(ORIGIN_BYTES, 1..40)) {
        run_case(4, held, &ops)?;
    }
}
