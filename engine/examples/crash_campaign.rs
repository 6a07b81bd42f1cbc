//! Crash campaign: K random workloads, each crashed at one random write or
//! sync; the restarted machine finds the durable image plus a random subset
//! of unsynced writes, some torn. Each run reopens the store, checks it,
//! compares every version with the model, finishes any rollback and cleans.
//! Every third run fills the smallest COW device under the on-full rule
//! `delete-oldest`, so crashes land in its deletions and cleaning.
//!
//! `cargo run --release -p dms-engine --example crash_campaign -- --runs 10000 [--seed N] [--background]`
//!
//! With `--background` the store's committer thread runs during the
//! workload (normally it is stopped so that runs repeat exactly): its
//! commits and device writes race the workload's.

#[path = "../tests/common/mod.rs"]
mod common;

use common::crashsim::*;
use common::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let runs = arg("--runs", 2000);
    let background = args.iter().any(|a| a == "--background");
    BACKGROUND.store(background, std::sync::atomic::Ordering::Relaxed);
    let seed = arg("--seed", 1);
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let strategy = ops_strategy(ORIGIN_BYTES, 1..30);
    // Every third run: the smallest COW device under a large origin, with
    // the on-full rule deleting the oldest snapshots.
    let full = ops_strategy(Rig::FULL.origin_bytes, 1..30);
    let t = Instant::now();
    let (mut crashes, mut losses, mut ops_total) = (0u64, 0u64, 0u64);
    let mut x = seed ^ 0x5DEE_CE66;
    for run in 0..runs {
        let rig = if run % 3 == 2 { Rig::FULL } else { Rig::PLAIN };
        let ops = if run % 3 == 2 { &full } else { &strategy }
            .new_tree(&mut runner)
            .expect("a workload")
            .current();
        let chunk_pages = if run % 2 == 0 { 1 } else { 4 };
        let total = count_ops_on(rig, chunk_pages, &ops);
        if total == 0 {
            continue;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = 1 + x % total;
        ops_total += total;
        match crash_at_on(rig, chunk_pages, &ops, at, total) {
            Ok(true) => crashes += 1,
            Ok(false) => {}
            Err(e) => {
                losses += 1;
                eprintln!("run {run} ({rig:?}, chunk {chunk_pages}, crash at {at} of {total}): {e}\n  ops: {ops:?}");
            }
        }
    }
    println!(
        "crash campaign: seed {seed}, {runs} runs{}, {crashes} crash points, {ops_total} device operations, {losses} losses, {:.1} s",
        if background { " (committer thread running)" } else { "" },
        t.elapsed().as_secs_f64()
    );
    if losses > 0 {
        std::process::exit(1);
    }
}
