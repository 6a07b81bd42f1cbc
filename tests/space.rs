//! `dms du` and `dms prune` through the daemon: what du says deleting a
//! tag frees is what deleting it frees; prune keeps exactly what its rule
//! says and never an exposed snapshot.

mod common;

use common::*;
use std::os::unix::fs::FileExt;

const MIB: u64 = 1 << 20;
const CB: u64 = 4096;

fn write(path: &std::path::Path, chunk: u64, n: u64, byte: u8) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&vec![byte; (n * CB) as usize], chunk * CB)
        .unwrap();
    f.sync_all().unwrap();
}

/// Make an image file larger (or smaller) underneath.
fn set_len(path: &str, bytes: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(bytes)
        .unwrap();
}

fn du(env: &Env, dm: &str) -> serde_json::Value {
    serde_json::from_str(&env.ok(&["du", dm, "--json"])).unwrap()
}

fn data_chunks(env: &Env, cow: &str) -> u64 {
    let j: serde_json::Value = serde_json::from_str(&env.ok(&["check", cow, "--json"])).unwrap();
    assert_eq!(j["clean"], true);
    j["data_chunks"].as_u64().unwrap()
}

/// Tags of an origin's snapshots, from `dms list --json`.
fn snapshot_tags(env: &Env, dm: &str) -> Vec<u64> {
    let j: serde_json::Value = serde_json::from_str(&env.ok(&["list", dm, "--json"])).unwrap();
    j["origins"][0]["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["tag"].as_u64().unwrap())
        .filter(|&t| t != 0)
        .collect()
}

#[test]
fn du_says_what_each_delete_frees() {
    if !require("du_says_what_each_delete_frees") {
        return;
    }
    let env = Env::new();
    let origin = env.image("o.img", 16 * MIB);
    let cow = env.image("c.img", 64 * MIB);
    env.ok(&["create", "orig", &origin, &cow, "-bf"]);
    let o = env.mapper("orig");
    env.ok(&["snapshot", "orig", "-m", "one"]); // 1
    write(&o, 0, 3, 1);
    env.ok(&["snapshot", "orig"]); // 2
    write(&o, 5, 2, 2);
    write(&o, 0, 1, 2);
    env.ok(&["snapshot", "orig", "1"]); // 3, of 1: a ghost above 1
    env.ok(&["create", "s3", &origin, &cow, "3"]);
    write(&env.mapper("s3"), 8, 4, 3);
    env.ok(&["snapshot", "orig"]); // 4
    write(&o, 10, 6, 4);
    let u = du(&env, "orig");
    let tags = u["tags"].as_array().unwrap();
    let row = |t: u64| tags.iter().find(|r| r["tag"] == t).unwrap().clone();
    assert_eq!(row(1)["owned"], 3);
    assert_eq!(row(2)["owned"], 3);
    assert_eq!(row(2)["shared"], 2, "1 and 3 read 2's chunks 5 and 6");
    assert_eq!(row(3)["owned"], 4);
    assert_eq!(row(3)["dm_dev"], "s3");
    assert_eq!(row(1)["memo"], "one");
    let text = env.ok(&["du", "orig"]);
    assert!(
        text.contains("Tag Owned Shared Frees DM_Dev Memo"),
        "{text}"
    );
    // Delete them one by one: each frees what du said just before.
    env.ok(&["remove", "s3"]);
    for t in [2u64, 4, 1, 3] {
        let u = du(&env, "orig");
        let want = u["tags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["tag"] == t)
            .unwrap()["freed_if_deleted"]
            .as_u64()
            .unwrap();
        let before = data_chunks(&env, &cow);
        env.ok(&["delete", "orig", &t.to_string()]);
        env.ok(&["settle"]);
        let after = data_chunks(&env, &cow);
        assert_eq!(before - after, want, "deleting {t}");
    }
    assert_eq!(du(&env, "orig")["chunks"], 0);
    env.fails(&["du", "nosuch"], 1);
}

#[test]
fn prune_keeps_what_the_rule_says() {
    if !require("prune_keeps_what_the_rule_says") {
        return;
    }
    let env = Env::new();
    let origin = env.image("o.img", 4 * MIB);
    let cow = env.image("c.img", 16 * MIB);
    env.ok(&["create", "orig", &origin, &cow, "-bf"]);
    for i in 0..6u8 {
        write(&env.mapper("orig"), u64::from(i), 1, i + 1);
        env.ok(&["snapshot", "orig"]);
    }
    env.ok(&["create", "old", &origin, &cow, "2", "--read-only"]);
    let tags = |env: &Env| snapshot_tags(env, "orig");
    // Everything is younger than an hour: nothing goes.
    assert_eq!(
        env.ok(&["prune", "orig", "--keep-last", "1", "--keep-within", "1h"]),
        ""
    );
    assert_eq!(tags(&env), vec![1, 2, 3, 4, 5, 6]);
    let dry = env.ok(&["prune", "orig", "--keep-last", "2", "--dry-run"]);
    assert_eq!(
        dry,
        "kept 2: exposed as dm_dev old\nwould delete 1\nwould delete 3\nwould delete 4\n"
    );
    assert_eq!(
        tags(&env),
        vec![1, 2, 3, 4, 5, 6],
        "a dry run deletes nothing"
    );
    let out = env.ok(&["prune", "orig", "--keep-last", "2"]);
    assert!(out.contains("deleted 4") && out.contains("kept 2"), "{out}");
    assert_eq!(tags(&env), vec![2, 5, 6]);
    env.fails(
        &["prune", "orig", "--keep-last", "2", "--keep-within", "7"],
        2,
    );
    env.fails(&["prune", "orig"], 2);
    env.ok(&["settle"]);
    let c = env.ok(&["check", &cow]);
    assert!(c.ends_with("clean\n"), "{c}");
}

#[test]
fn a_full_cow_device_grown_underneath_takes_the_writes_online() {
    if !require("a_full_cow_device_grown_underneath_takes_the_writes_online") {
        return;
    }
    let env = Env::new();
    let origin = env.image("o.img", 8 * MIB);
    let cow = env.image("c.img", 2 * MIB);
    env.ok(&["create", "orig", &origin, &cow, "-bf"]);
    write(&env.mapper("orig"), 0, 2048, 1);
    env.ok(&["snapshot", "orig"]);
    env.ok(&["create", "s1", &origin, &cow, "1", "--read-only"]);
    let snap = std::fs::read(env.mapper("s1")).unwrap();
    // First writes after the snapshot until the COW device is full.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(env.mapper("orig"))
        .unwrap();
    let mut stopped = None;
    for c in 0..2048u64 {
        if let Err(e) = f
            .write_all_at(&[2; CB as usize], c * CB)
            .and_then(|()| f.sync_data())
        {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            stopped = Some(c);
            break;
        }
    }
    let stopped = stopped.expect("the COW device filled");
    let list = env.ok(&["list", "orig"]);
    assert!(list.contains("cow-status : full"), "{list}");
    // Larger underneath, then grow: the same writes go through.
    set_len(&cow, 32 * MIB);
    let out = env.ok(&["grow", "orig"]);
    assert!(out.contains("2097152 -> 33554432 bytes"), "{out}");
    for c in stopped..2048 {
        f.write_all_at(&[2; CB as usize], c * CB).unwrap();
    }
    f.sync_all().unwrap();
    assert!(
        std::fs::read(env.mapper("s1")).unwrap() == snap,
        "the snapshot changed"
    );
    assert!(std::fs::read(env.mapper("orig"))
        .unwrap()
        .iter()
        .all(|&b| b == 2));
    let list = env.ok(&["list", "orig"]);
    assert!(list.contains("cow-status : valid"), "{list}");
    let c = env.ok(&["check", &cow]);
    assert!(c.ends_with("clean\n"), "{c}");
    // Again: nothing to do (a smaller device is refused: engine/tests/grow.rs).
    assert!(env.ok(&["grow", "s1"]).contains("as before"));
    env.fails(&["grow", "nosuch"], 1);
}

#[test]
fn crossing_the_low_water_mark_runs_the_hook_once() {
    if !require("crossing_the_low_water_mark_runs_the_hook_once") {
        return;
    }
    let env = Env::new();
    let origin = env.image("o.img", 16 * MIB);
    let cow = env.image("c.img", 4 * MIB); // 1,024 chunks
    env.ok(&["create", "orig", &origin, &cow, "-bf"]);
    let hooks = env.path("hooks.log");
    let hook = format!(
        "echo \"$DMS_DM_DEV $DMS_USED_PERCENT $DMS_LOW_WATER\" >> {}",
        hooks.display()
    );
    env.ok(&["policy", "orig", "--low-water", "30", "--hook", &hook]);
    let shown = env.ok(&["policy", "orig"]);
    assert!(shown.contains("low-water : 30%"), "{shown}");
    env.fails(&["policy", "orig", "--low-water", "101"], 2);
    let lines = || {
        std::fs::read_to_string(&hooks)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let wait_for = |n: usize| {
        for _ in 0..100 {
            if lines() >= n {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("the hook ran {} times, not {n}", lines());
    };
    env.ok(&["snapshot", "orig"]);
    // First writes after the snapshot: copy-outs fill the COW device.
    write(&env.mapper("orig"), 0, 400, 1);
    wait_for(1);
    let line = std::fs::read_to_string(&hooks).unwrap();
    assert!(
        line.starts_with("orig ") && line.trim_end().ends_with(" 30"),
        "{line}"
    );
    assert!(env.ok(&["list", "orig"]).contains("cow-status : low"));
    assert!(env.ok(&["dmsetup", "status", "orig"]).contains(" low "));
    // More writes over the mark: no second run.
    write(&env.mapper("orig"), 400, 100, 2);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(lines(), 1);
    // Grown: under the mark again; crossing it again runs the hook again.
    set_len(&cow, 16 * MIB);
    env.ok(&["grow", "orig"]);
    assert!(env.ok(&["list", "orig"]).contains("cow-status : valid"));
    write(&env.mapper("orig"), 500, 1500, 3);
    wait_for(2);
    // The policy is the store's: it survives the daemon.
    env.ok(&["shutdown"]);
    // (The next command starts a daemon, which exposes orig again.)
    assert!(env.ok(&["policy", "orig"]).contains("low-water : 30%"));
}

#[test]
fn on_full_delete_oldest_keeps_the_origin_writable() {
    if !require("on_full_delete_oldest_keeps_the_origin_writable") {
        return;
    }
    let env = Env::new();
    let origin = env.image("o.img", 8 * MIB); // 2,048 chunks
                                              // Room for the exposed tag 1's copy of the whole origin, and about
                                              // three quarters more.
    let cow = env.image("c.img", 16 * MIB);
    env.ok(&["create", "orig", &origin, &cow, "-bf"]);
    env.ok(&[
        "policy",
        "orig",
        "--on-full",
        "delete-oldest",
        "--keep-min",
        "2",
    ]);
    let shown = env.ok(&["policy", "orig", "--json"]);
    let p: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(p["on_full"], "delete-oldest", "{shown}");
    assert_eq!(p["keep_min"], 2, "{shown}");
    env.fails(&["policy", "orig", "--on-full", "maybe"], 2);
    let o = env.mapper("orig");
    // Tag 1, exposed the whole time: never deleted.
    env.ok(&["snapshot", "orig"]);
    env.ok(&["create", "s1", &origin, &cow, "1", "--read-only"]);
    let first = std::fs::read(env.mapper("s1")).unwrap();
    let mut model: Vec<(u64, Vec<u8>)> = Vec::new();
    let f = std::fs::OpenOptions::new().write(true).open(&o).unwrap();
    for round in 0..14u64 {
        let tag: u64 = env.ok(&["snapshot", "orig"]).trim().parse().unwrap_or(0);
        let tag = if tag == 0 {
            *snapshot_tags(&env, "orig").last().unwrap()
        } else {
            tag
        };
        model.push((tag, std::fs::read(&o).unwrap()));
        // A quarter of the origin rewritten: its copy-outs for every
        // snapshot that still shares it. Every write succeeds.
        let region = round % 4 * 512;
        for c in region..region + 512 {
            f.write_all_at(&[round as u8 + 1; CB as usize], c * CB)
                .unwrap_or_else(|e| panic!("round {round}, chunk {c}: {e}"));
        }
        f.sync_all().unwrap();
    }
    let tags = snapshot_tags(&env, "orig");
    assert!(tags.contains(&1), "the exposed snapshot went: {tags:?}");
    assert_eq!(std::fs::read(env.mapper("s1")).unwrap(), first);
    let newest: Vec<u64> = model.iter().rev().take(2).map(|m| m.0).collect();
    assert!(newest.iter().all(|t| tags.contains(t)), "{tags:?}");
    // Oldest first: what is left of the unexposed ones is the newest run.
    let made: Vec<u64> = model.iter().map(|m| m.0).collect();
    let kept: Vec<u64> = made.iter().copied().filter(|t| tags.contains(t)).collect();
    assert!(kept.len() < made.len(), "nothing was deleted: {tags:?}");
    assert_eq!(kept[..], made[made.len() - kept.len()..], "{tags:?}");
    for (tag, want) in model.iter().filter(|m| kept.contains(&m.0)) {
        let name = format!("t{tag}");
        env.ok(&[
            "create",
            &name,
            &origin,
            &cow,
            &tag.to_string(),
            "--read-only",
        ]);
        assert!(
            std::fs::read(env.mapper(&name)).unwrap() == *want,
            "snapshot {tag} changed"
        );
        env.ok(&["remove", &name]);
    }
    let log = std::fs::read_to_string(env.run.path().join("daemon.log")).unwrap_or_default();
    assert!(
        log.matches("deleted the oldest snapshot").count() >= made.len() - kept.len(),
        "{log}"
    );
    let c = env.ok(&["check", &cow]);
    assert!(c.ends_with("clean\n"), "{c}");
}

fn file_size(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

fn blockdev_size(dev: &str) -> u64 {
    sh(&format!("blockdev --getsize64 {dev}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn an_origin_grown_underneath_grows_its_dm_devs_and_its_snapshots_keep_theirs() {
    let test = "an_origin_grown_underneath_grows_its_dm_devs_and_its_snapshots_keep_theirs";
    if !require_tools(test, &["nbdinfo", "losetup", "blockdev"]) {
        return;
    }
    let env = Env::new();
    let origin = env.image("o.img", 8 * MIB);
    let cow = env.image("c.img", 64 * MIB);
    // The origin with a loop device of the daemon's, and one of a user's.
    env.ok(&["create", "orig", &origin, &cow, "-bf", "--loop"]);
    let o = env.mapper("orig");
    write(&o, 0, 2048, 1);
    env.ok(&["snapshot", "orig"]); // 1: 8 MiB
    env.ok(&["create", "s1", &origin, &cow, "1", "--read-only"]);
    let snap = std::fs::read(env.mapper("s1")).unwrap();
    let theirs = sh(&format!("losetup --find --show {}", o.display()));
    let theirs = theirs.trim().to_string();
    let loops: Vec<String> = sh(&format!("losetup -j {} -O NAME -n", o.display()))
        .lines()
        .map(|l| l.trim().to_string())
        .collect();
    assert_eq!(loops.len(), 2, "{loops:?}");
    let uri = |e: &str| {
        format!(
            "nbd+unix:///{e}?socket={}",
            env.run.path().join("nbd.sock").display()
        )
    };
    let nbd_size = |e: &str| -> u64 {
        sh(&format!("nbdinfo --size '{}'", uri(e)))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(nbd_size("orig"), 8 * MIB);
    // A second origin in the same store, whose device grows too.
    let other = env.image("p.img", 4 * MIB);
    env.ok(&["create", "p", &other, &cow, "-b"]);
    set_len(&other, 6 * MIB);
    // Larger underneath, then grow.
    set_len(&origin, 12 * MIB);
    let out = env.ok(&["grow", "orig"]);
    assert!(out.contains("8388608 -> 12582912 bytes"), "{out}");
    // The other origin is named, not grown.
    assert!(
        out.contains("its device has 6291456 bytes, the origin 4194304"),
        "{out}"
    );
    assert_eq!(file_size(&env.mapper("p")), 4 * MIB);
    assert!(env.ok(&["grow", "p"]).contains("4194304 -> 6291456 bytes"));
    env.ok(&["remove", "p"]);
    assert_eq!(file_size(&o), 12 * MIB);
    for l in &loops {
        assert_eq!(blockdev_size(l), 12 * MIB, "{l}");
    }
    assert_eq!(nbd_size("orig"), 12 * MIB);
    // The snapshot keeps its size and content.
    assert_eq!(file_size(&env.mapper("s1")), 8 * MIB);
    assert_eq!(nbd_size("s1"), 8 * MIB);
    assert!(std::fs::read(env.mapper("s1")).unwrap() == snap);
    // Writes into the new space copy nothing out; a new snapshot has the
    // new size.
    let used = data_chunks(&env, &cow);
    write(&o, 2048, 1024, 2);
    assert_eq!(data_chunks(&env, &cow), used);
    env.ok(&["snapshot", "orig"]); // 2: 12 MiB
    let sizes = |env: &Env| -> Vec<(u64, u64)> {
        let j: serde_json::Value =
            serde_json::from_str(&env.ok(&["list", "orig", "--json"])).unwrap();
        j["origins"][0]["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["tag"].as_u64().unwrap(), r["size"].as_u64().unwrap()))
            .collect()
    };
    assert_eq!(
        sizes(&env),
        vec![(0, 12 * MIB), (1, 8 * MIB), (2, 12 * MIB)]
    );
    let table = env.ok(&["dmsetup", "table", "orig"]);
    assert!(
        table.starts_with(&format!("0 {} ", 12 * MIB / 512)),
        "{table}"
    );
    // A rollback of the smaller snapshot is refused clearly.
    sh(&format!("losetup -d {theirs}"));
    env.ok(&["remove", "orig"]);
    let why = env.fails(&["rollback", "s1", "1"], 1);
    assert!(why.contains("before the origin grew"), "{why}");
    env.ok(&["create", "orig", &origin, &cow]);
    let c = env.ok(&["check", &cow]);
    assert!(c.ends_with("clean\n"), "{c}");
    // Across a restart: the same sizes, the origin dm_dev back.
    env.ok(&["shutdown"]);
    assert_eq!(
        sizes(&env),
        vec![(0, 12 * MIB), (1, 8 * MIB), (2, 12 * MIB)]
    );
    assert_eq!(file_size(&env.mapper("orig")), 12 * MIB);
    assert_eq!(file_size(&env.mapper("s1")), 8 * MIB);
    assert!(std::fs::read(env.mapper("s1")).unwrap() == snap);
}

#[test]
fn a_refused_grow_changes_nothing_and_a_rollback_stopped_by_a_full_device_goes_on_after_one() {
    let test =
        "a_refused_grow_changes_nothing_and_a_rollback_stopped_by_a_full_device_goes_on_after_one";
    if !require(test) {
        return;
    }
    let env = Env::new();
    let origin = env.image("o.img", 4 * MIB); // 1,024 chunks
    let cow = env.image("c.img", 8 * MIB);
    env.ok(&["create", "orig", &origin, &cow, "-bf"]);
    let o = env.mapper("orig");
    write(&o, 0, 1024, 1);
    env.ok(&["snapshot", "orig"]); // 1: all 1s
    write(&o, 0, 1024, 2); // 1,024 copies for 1
    env.ok(&["snapshot", "orig"]); // 2: all 2s
    env.ok(&["remove", "orig"]);
    env.ok(&["create", "s2", &origin, &cow, "2", "--read-only"]);
    // A shrunk origin device refuses the whole grow: the COW device that
    // grew meanwhile is not taken either (on a store of its own: a shrunk
    // file has lost its end).
    let (o2, c2) = (env.image("o2.img", 4 * MIB), env.image("c2.img", 4 * MIB));
    env.ok(&["create", "p", &o2, &c2, "-bf"]);
    let p_total = |env: &Env| -> u64 {
        let j: serde_json::Value = serde_json::from_str(&env.ok(&["list", "p", "--json"])).unwrap();
        j["origins"][0]["total_chunks"].as_u64().unwrap()
    };
    let before = p_total(&env);
    set_len(&c2, 8 * MIB);
    set_len(&o2, 2 * MIB);
    let why = env.fails(&["grow", "p"], 1);
    assert!(why.contains("was bound with"), "{why}");
    assert_eq!(p_total(&env), before);
    env.ok(&["remove", "p"]);
    // Rolling tag 1 back copies the origin's 2s out for tag 2 first: 1,024
    // more chunks than the device has. The rollback stops; settle says so.
    env.ok(&["create", "s1", &origin, &cow, "1"]);
    env.ok(&["rollback", "s1", "1", "-b"]);
    let why = env.fails(&["settle"], 1);
    assert!(why.contains("stopped") && why.contains("full"), "{why}");
    // The device grown: the rollback goes on by itself and ends.
    set_len(&cow, 16 * MIB);
    let out = env.ok(&["grow", "s1"]);
    assert!(out.contains("8388608 -> 16777216 bytes"), "{out}");
    env.ok(&["settle"]);
    env.ok(&["remove", "s1"]);
    env.ok(&["create", "orig", &origin, &cow]);
    let count = |p: std::path::PathBuf| {
        let mut n = [0usize; 256];
        for b in std::fs::read(p).unwrap() {
            n[b as usize] += 1;
        }
        (0..256)
            .filter(|&b| n[b] > 0)
            .map(|b| (b, n[b]))
            .collect::<Vec<_>>()
    };
    let (a, b) = (count(env.mapper("orig")), count(env.mapper("s2")));
    let all = |v: usize| vec![(v, 4 * MIB as usize)];
    assert!(
        a == all(1) && b == all(2),
        "orig {a:?}, s2 {b:?}\n{}",
        std::fs::read_to_string(env.run.path().join("daemon.log")).unwrap_or_default()
    );
    let c = env.ok(&["check", &cow]);
    assert!(c.ends_with("clean\n"), "{c}");
}
