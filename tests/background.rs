//! Background work: rollback while the origin is in use, cleaning after
//! deletes, both surviving a killed daemon.

mod common;

use common::*;
use std::io::{Read, Seek, SeekFrom, Write};

const MIB: u64 = 1 << 20;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed ^ (i as u8).wrapping_mul(13) ^ (i >> 12) as u8)
        .collect()
}

fn write_file(path: &std::path::Path, data: &[u8], off: u64) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    for chunk in data.chunks(MIB as usize) {
        f.write_all(chunk).unwrap();
    }
    f.sync_all().unwrap();
}

/// An origin holding pattern A, snapshot 1 of it, then pattern B written
/// over the whole origin; snapshot 1 exposed as snap1, orig removed.
fn prepared(env: &Env, size: u64) -> (String, String) {
    let origin = env.image("o.img", size);
    let cow = env.image("c.img", size * 3);
    std::fs::write(&origin, pattern(0xA, size as usize)).unwrap();
    env.ok(&["create", "orig", &origin, &cow, "-bF"]);
    env.ok(&["snapshot", "orig", "-m", "A"]);
    write_file(&env.mapper("orig"), &pattern(0xB, size as usize), 0);
    env.ok(&["create", "snap1", &origin, &cow, "1"]);
    env.ok(&["remove", "orig"]);
    (origin, cow)
}

fn list_json(env: &Env) -> serde_json::Value {
    serde_json::from_str(&env.ok(&["list", "--json"])).unwrap()
}

/// SIGKILL the daemon and wait until it has ended: threads in the middle
/// of a sync keep a killed process, and its socket, a while.
fn kill_daemon(env: &Env) {
    let pid = env.daemon_pid();
    // SAFETY: kill(2) on the daemon's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    assert!(
        ended_within(pid, std::time::Duration::from_secs(20)),
        "the killed daemon {pid} is still there"
    );
}

#[test]
fn rollback_in_the_background_while_the_origin_is_written() {
    if !require("rollback_in_the_background_while_the_origin_is_written") {
        return;
    }
    let env = Env::new();
    let size = 128 * MIB;
    let (origin, cow) = prepared(&env, size);
    env.ok(&["rollback", "snap1", "1", "-b"]);
    // The origin's dm_dev comes back at once and is written with verification.
    env.ok(&["create", "orig", &origin, &cow]);
    let seen_rolling = list_json(&env)["origins"][0]["rollbacking"].is_object();
    let path = env.mapper("orig");
    let c = pattern(0xC, 16 * MIB as usize);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    for (i, piece) in c.chunks(64 * 1024).enumerate() {
        let off = (i * 64 * 1024) as u64 * 3 % (16 * MIB);
        f.seek(SeekFrom::Start(off)).unwrap();
        f.write_all(piece).unwrap();
        let mut back = vec![0u8; piece.len()];
        f.seek(SeekFrom::Start(off)).unwrap();
        f.read_exact(&mut back).unwrap();
        assert_eq!(back, piece, "a write at {off} did not read back");
    }
    f.sync_all().unwrap();
    env.ok(&["settle"]);
    assert!(list_json(&env)["origins"][0]["rollbacking"].is_null());
    // The writes landed; the rest of the origin is snapshot 1's old content.
    let mut want = pattern(0xA, size as usize);
    for (i, piece) in c.chunks(64 * 1024).enumerate() {
        let off = ((i * 64 * 1024) as u64 * 3 % (16 * MIB)) as usize;
        want[off..off + piece.len()].copy_from_slice(piece);
    }
    let got = std::fs::read(&path).unwrap();
    assert!(
        got == want,
        "the origin is wrong after the rollback (rollback seen running: {seen_rolling})"
    );
    assert!(
        std::fs::read(env.mapper("snap1")).unwrap() == pattern(0xA, size as usize),
        "snapshot 1 changed"
    );
    eprintln!("rollback seen running while writing: {seen_rolling}");
}

#[test]
fn a_rollback_and_a_cleaning_survive_a_killed_daemon() {
    if !require("a_rollback_and_a_cleaning_survive_a_killed_daemon") {
        return;
    }
    let env = Env::new();
    let size = 256 * MIB;
    let (origin, cow) = prepared(&env, size);
    // Kill the daemon right after the rollback starts.
    env.ok(&["rollback", "snap1", "1", "-b"]);
    let rolling = list_json(&env)["origins"][0]["rollbacking"].clone();
    kill_daemon(&env);
    // Any command starts it again; restoring snap1 resumes the rollback.
    env.ok(&["list"]);
    env.ok(&["settle"]);
    env.ok(&["create", "orig", &origin, &cow]);
    assert!(
        std::fs::read(env.mapper("orig")).unwrap() == pattern(0xA, size as usize),
        "origin after resumed rollback"
    );
    assert!(
        std::fs::read(env.mapper("snap1")).unwrap() == pattern(0xA, size as usize),
        "snapshot 1"
    );
    eprintln!("rollback state seen before the kill: {rolling}");

    // Cleaning: many snapshots with data, all deleted, the daemon killed at once.
    let baseline = list_json(&env)["origins"][0]["used_chunks"]
        .as_u64()
        .unwrap();
    env.ok(&["remove", "snap1"]);
    env.ok(&["delete", "orig", "1"]);
    env.ok(&["settle"]);
    let baseline_versions = list_json(&env)["origins"][0]["used_versions"]
        .as_u64()
        .unwrap();
    let before = list_json(&env)["origins"][0]["used_chunks"]
        .as_u64()
        .unwrap();
    for i in 0..12u64 {
        env.ok(&["snapshot", "orig", "-m", &format!("s{i}")]);
        write_file(
            &env.mapper("orig"),
            &pattern(i as u8, 8 * MIB as usize),
            i * 8 * MIB,
        );
    }
    let tags: Vec<String> = (2..14).map(|t| t.to_string()).collect();
    for t in &tags {
        env.ok(&["delete", "orig", t]);
    }
    kill_daemon(&env);
    env.ok(&["list"]);
    env.ok(&["settle"]);
    let v = list_json(&env);
    assert_eq!(v["origins"][0]["cleaning"], false);
    assert_eq!(
        v["origins"][0]["used_versions"].as_u64().unwrap(),
        baseline_versions
    );
    let after = v["origins"][0]["used_chunks"].as_u64().unwrap();
    assert_eq!(
        after, before,
        "used chunks did not come back (baseline at bind: {baseline})"
    );
    // Offline check: no leak, nothing used twice.
    env.ok(&["shutdown"]);
    let report = env.ok(&["check", &cow]);
    assert!(report.trim_end().ends_with("clean"), "{report}");
}
