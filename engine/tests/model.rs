//! Model-based property test: random workloads on engine and oracle, every
//! version compared byte for byte after every step.

mod common;

use common::*;
use dms_engine::io::{Dev, MemDev};
use dms_engine::{FormatOptions, Store};
use proptest::prelude::*;
use std::sync::Arc;

const ORIGIN_BYTES: usize = 64 * 1024;
const COW_BYTES: u64 = 8 << 20;

fn cases() -> u32 {
    std::env::var("DMS_MODEL_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000)
}

fn run_case(chunk_pages: u32, ops: &[Op]) -> Result<(), TestCaseError> {
    let initial = pattern(ORIGIN_BYTES, 0xA5);
    let origin = Arc::new(MemDev::from_bytes("origin", &initial));
    let cow = Arc::new(MemDev::new("cow", COW_BYTES));
    let origin_dev: Dev = origin.clone();
    let mut store = Store::format(
        cow.clone(),
        &FormatOptions {
            chunk_pages,
            force: false,
        },
    )
    .unwrap();
    store.bind(ORIGIN, origin_dev.clone()).unwrap();
    let mut model = Model::new(initial);
    for (i, op) in ops.iter().enumerate() {
        let Some(step) = model.resolve(op) else {
            continue;
        };
        if let Step::Reopen = step {
            store.flush().unwrap();
            drop(store);
            store = Store::open(cow.clone()).unwrap();
            store.attach(ORIGIN, origin_dev.clone()).unwrap();
        }
        run(&store, &step).map_err(|e| TestCaseError::fail(format!("step {i} {step:?}: {e}")))?;
        model.apply(&step);
        compare(&store, &model)
            .map_err(|e| TestCaseError::fail(format!("after step {i} {step:?}: {e}")))?;
    }
    // Finish any rollback, clean everything up, check the metadata.
    store.finish_rollback(ORIGIN).unwrap();
    compare(&store, &model).map_err(|e| TestCaseError::fail(format!("after finishing: {e}")))?;
    store.clean().unwrap();
    let report = store.check().unwrap();
    prop_assert!(report.is_clean(), "check: {:?}", report.problems);
    compare(&store, &model).map_err(TestCaseError::fail)?;
    // After a reopen too.
    drop(store);
    let store = Store::open(cow).unwrap();
    store.attach(ORIGIN, origin_dev).unwrap();
    compare(&store, &model).map_err(TestCaseError::fail)?;
    let report = store.check().unwrap();
    prop_assert!(
        report.is_clean(),
        "check after reopen: {:?}",
        report.problems
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_version_matches_the_model_chunk_1(ops in prop::collection::vec(op_strategy(ORIGIN_BYTES), 1..40)) {
        run_case(1, &ops)?;
    }

    #[test]
    fn every_version_matches_the_model_chunk_4(ops in prop::collection::vec(op_strategy(ORIGIN_BYTES), 1..40)) {
        run_case(4, &ops)?;
    }
}
