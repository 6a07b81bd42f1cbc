//! The `dms` command end to end: the seed's usage example on real loop
//! devices and ext4, the raw dmsetup strings, every refusal, and a daemon
//! killed during writes.

mod common;

use common::*;
use std::io::{Read, Seek, SeekFrom, Write};

const MIB: u64 = 1 << 20;

#[test]
fn the_seed_usage_example() {
    if !require("the_seed_usage_example") {
        return;
    }
    let env = Env::new();
    let origin = env.image("sdb1.img", 128 * MIB);
    let cow = env.image("sdc1.img", 256 * MIB);

    // Init the COW device, bind the origin, create orig.
    let l = env
        .ok(&["create", "orig", &origin, &cow, "-bF", "--loop"])
        .trim()
        .to_string();
    assert!(l.starts_with("/dev/loop"), "{l}");
    sh(&format!("mkfs.ext4 -q {l}"));
    let m_orig = env.mount(&l, "orig");
    touch(&m_orig, "this-is-orig");
    assert_eq!(files(&m_orig), ["this-is-orig"]);

    // Snapshot of the origin, exposed as snap1.
    env.ok(&["snapshot", "orig", "-m", "snap1"]);
    let l1 = env
        .ok(&["create", "snap1", &origin, &cow, "1", "--loop"])
        .trim()
        .to_string();
    let m1 = env.mount(&l1, "snap1");
    touch(&m1, "this-is-snap1");
    assert_eq!(files(&m1), ["this-is-orig", "this-is-snap1"]);

    // Snapshot of snap1, exposed as snap2.
    env.ok(&["s", "orig", "1", "-m", "snap2"]);
    let l2 = env
        .ok(&["c", "snap2", &origin, &cow, "2", "--loop"])
        .trim()
        .to_string();
    let m2 = env.mount(&l2, "snap2");
    touch(&m2, "this-is-snap2");
    assert_eq!(
        files(&m2),
        ["this-is-orig", "this-is-snap1", "this-is-snap2"]
    );
    // The origin did not change.
    assert_eq!(files(&m_orig), ["this-is-orig"]);

    // The list layout.
    let list = env.ok(&["list"]);
    let lines: Vec<&str> = list.lines().collect();
    let keys: Vec<&str> = lines
        .iter()
        .take(8)
        .map(|l| l.split(" : ").next().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "origin-device",
            "cow-device",
            "chunk-size",
            "used-versions",
            "used-chunks",
            "cow-status",
            "cleaning",
            "rollbacking"
        ]
    );
    assert!(lines[0].ends_with("sdb1.img"), "{}", lines[0]);
    assert_eq!(lines[2], "chunk-size : 1 page(s)");
    assert!(
        lines[3].starts_with("used-versions : 0% (3/"),
        "{}",
        lines[3]
    );
    assert_eq!(lines[5], "cow-status : valid");
    assert_eq!(lines[6], "cleaning : no");
    assert_eq!(lines[7], "rollbacking : no");
    assert_eq!(lines[8], "YYYY/MM/DD HH:MM:SS Tag R Chunks DM_Dev Memo");
    let rows: Vec<Vec<&str>> = lines[9..]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{list}");
    for (row, (tag, dev, memo)) in rows.iter().zip([
        ("0", "orig", "\"ORIGIN\""),
        ("1", "snap1", "\"snap1\""),
        ("2", "snap2", "\"snap2\""),
    ]) {
        assert_eq!(row.len(), 7, "{row:?}");
        assert_eq!(row[0].len(), 10, "date {row:?}");
        assert_eq!(row[1].len(), 8, "time {row:?}");
        assert_eq!((row[2], row[3], row[5], row[6]), (tag, ".", dev, memo));
        assert!(row[4].parse::<u64>().is_ok());
    }
    assert_eq!(rows[0][4], "0", "the origin owns no exceptions");
    let json: serde_json::Value = serde_json::from_str(&env.ok(&["list", "--json"])).unwrap();
    assert_eq!(json["origins"][0]["snapshots"].as_array().unwrap().len(), 3);
    assert_eq!(json["origins"][0]["snapshots"][2]["memo"], "snap2");

    // Roll snap2 back into the origin.
    env.umount(&m_orig);
    env.ok(&["remove", "orig"]);
    env.ok(&["rollback", "snap2", "2"]);
    let l = env
        .ok(&["create", "orig", &origin, &cow, "--loop"])
        .trim()
        .to_string();
    let m_orig = env.mount(&l, "orig");
    assert_eq!(
        files(&m_orig),
        ["this-is-orig", "this-is-snap1", "this-is-snap2"]
    );
    touch(&m_orig, "this-is-orig-after-rollback");
    // The snapshots kept their content.
    assert_eq!(files(&m1), ["this-is-orig", "this-is-snap1"]);

    // Stop everything and look at the origin device itself.
    for m in [&m_orig, &m1, &m2] {
        env.umount(m);
    }
    env.ok(&["dmsetup", "remove_all"]);
    assert!(env.ok(&["dmsetup", "status"]).contains("No devices found"));
    let direct = env.mount(&format!("-o loop,ro {origin}"), "direct");
    assert_eq!(
        files(&direct),
        [
            "this-is-orig",
            "this-is-orig-after-rollback",
            "this-is-snap1",
            "this-is-snap2"
        ]
    );
    env.umount(&direct);
}

#[test]
fn raw_dmsetup_strings_share_the_parser() {
    if !require("raw_dmsetup_strings_share_the_parser") {
        return;
    }
    let env = Env::new();
    let origin = env.image("o.img", 16 * MIB);
    let cow = env.image("c.img", 64 * MIB);
    let sectors = (16 * MIB / 512).to_string();
    env.ok(&[
        "dmsetup",
        "create",
        "o",
        "--table",
        &format!("0 {sectors} dm-snap-mv co {origin} {cow} -b -F -c 4"),
    ]);
    env.ok(&["dmsetup", "message", "o", "0", "so", "-m", "first"]);
    env.ok(&["dmsetup", "message", "o", "0", "ss", "1", "-m", "second"]);
    env.ok(&[
        "dmsetup",
        "create",
        "s2",
        "--table",
        &format!("0 {sectors} dm-snap-mv cs {origin} {cow} 2"),
    ]);
    let table = env.ok(&["dmsetup", "table", "s2"]);
    assert_eq!(
        table.trim(),
        format!("0 {sectors} dm-snap-mv cs {origin} {cow} 2")
    );
    let all = env.ok(&["dmsetup", "table"]);
    assert!(
        all.contains(&format!("o: 0 {sectors} dm-snap-mv co {origin} {cow}")),
        "{all}"
    );
    let status = env.ok(&["dmsetup", "status", "o"]);
    let f: Vec<&str> = status.split_whitespace().collect();
    assert_eq!(&f[..3], ["0", sectors.as_str(), "dm-snap-mv"], "{status}");
    assert!(
        f[3].contains('/') && f[5] == "3/16777216" && f[6] == "valid" && f[7] == "-" && f[8] == "-",
        "{status}"
    );
    let list = env.ok(&["list", "o"]);
    assert!(list.contains("chunk-size : 4 page(s)"), "{list}");
    // Writes through the exposed files, origin and snapshot at once.
    std::fs::OpenOptions::new()
        .write(true)
        .open(env.mapper("o"))
        .unwrap()
        .write_all(&[7u8; 8192])
        .unwrap();
    let mut buf = vec![0u8; 8192];
    std::fs::File::open(env.mapper("s2"))
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    assert!(
        buf.iter().all(|&b| b == 0),
        "the snapshot kept the old data"
    );
    env.ok(&["dmsetup", "remove", "s2"]);
    env.ok(&["dmsetup", "message", "o", "0", "ds", "2"]);
    env.ok(&["dmsetup", "message", "o", "0", "ds", "1"]);
    env.ok(&["settle"]);
    env.ok(&["dmsetup", "message", "o", "0", "do"]);
    assert!(env.ok(&["dmsetup", "status"]).contains("No devices found"));
}

#[test]
fn refusals_are_one_line_and_change_nothing() {
    if !require("refusals_are_one_line_and_change_nothing") {
        return;
    }
    let env = Env::new();
    let origin = env.image("o.img", 64 * MIB);
    let cow = env.image("c.img", 64 * MIB);
    let other = env.image("other.img", 64 * MIB);
    let l = env
        .ok(&["create", "orig", &origin, &cow, "-bF", "--loop"])
        .trim()
        .to_string();
    env.ok(&["snapshot", "orig", "-m", "one"]);
    let before = env.ok(&["list", "--json"]);
    let snapshot_state = |env: &Env| {
        let v: serde_json::Value = serde_json::from_str(&env.ok(&["list", "--json"])).unwrap();
        v["origins"][0]["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["tag"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };

    // A busy device: mounted through its loop device.
    sh(&format!("mkfs.ext4 -q {l}"));
    let m = env.mount(&l, "orig");
    assert!(env.fails(&["remove", "orig"], 1).contains("busy"));
    env.umount(&m);
    // A busy device: a process holds the file open.
    {
        let _held = std::fs::File::open(env.mapper("orig")).unwrap();
        let e = env.fails(&["remove", "orig"], 1);
        assert!(e.contains("busy") && e.contains("open file handle"), "{e}");
    }
    // A name already in use.
    assert!(env
        .fails(&["create", "orig", &origin, &cow], 1)
        .contains("already exists"));
    // Snapshots of unknown and deleted tags; ss 0; ds 0.
    assert!(env
        .fails(&["snapshot", "orig", "9"], 1)
        .contains("no snapshot with tag 9"));
    env.ok(&["snapshot", "orig", "-m", "two"]);
    env.ok(&["delete", "orig", "2"]);
    assert!(env.fails(&["snapshot", "orig", "2"], 1).contains("tag 2"));
    assert!(env
        .fails(&["dmsetup", "message", "orig", "0", "ss", "0"], 1)
        .contains("tag 0"));
    assert!(env
        .fails(&["dmsetup", "message", "orig", "0", "ds", "0"], 1)
        .contains("tag 0"));
    assert!(env
        .fails(&["create", "snapx", &origin, &cow, "7"], 1)
        .contains("tag 7"));
    // Rollback while the origin's dm_dev is exposed.
    assert!(env
        .fails(&["rollback", "orig", "1"], 1)
        .contains("remove it first"));
    // Deleting a tag that is exposed.
    env.ok(&["create", "snap1", &origin, &cow, "1"]);
    assert!(env.fails(&["delete", "orig", "1"], 1).contains("snap1"));
    // A read-only dm_dev gets a read-only loop device.
    let ro = env
        .ok(&["create", "ro1", &origin, &cow, "1", "--loop", "--read-only"])
        .trim()
        .to_string();
    assert_eq!(
        sh(&format!("blockdev --getro {ro}")).trim(),
        "1",
        "{ro} is writable"
    );
    assert!(env.fails(&["delete", "orig", "1"], 1).contains("ro1"));
    env.ok(&["remove", "ro1"]);
    // Names that would confuse listings, and stacking on a dm_dev.
    env.fails(&["create", "sp ace", &origin, &cow], 2);
    let mapped = env.mapper("orig").display().to_string();
    assert!(env
        .fails(&["create", "stacked", &mapped, &other, "-bF"], 1)
        .contains("cannot stand on another"));
    // Unbinding an origin with snapshots.
    assert!(env.fails(&["delete", "orig"], 1).contains("snapshot"));
    // Formatting a COW device that holds a store, without -F.
    env.ok(&["remove", "snap1"]);
    env.ok(&["remove", "orig"]);
    let cow_sum = sh(&format!("md5sum {cow}"));
    let e = env.fails(&["create", "x", &other, &cow, "-bf"], 1);
    assert!(e.contains("already holds a dms store"), "{e}");
    // Bad chunk sizes, bad flags: usage errors.
    env.fails(
        &[
            "create",
            "x",
            &other,
            &env.image("new.img", 64 * MIB),
            "-bF",
            "-c",
            "3",
        ],
        2,
    );
    env.fails(&["create", "x", &other, &cow, "-F"], 2);
    env.fails(&["create", "x", &other, &cow, "1", "-b"], 2);
    env.fails(&["frobnicate"], 2);
    env.fails(&["dmsetup", "message", "x", "0", "zz"], 2);
    assert!(env
        .fails(&["dmsetup", "message", "nodev", "0", "so"], 1)
        .contains("does not exist"));
    // A missing device.
    assert!(env
        .fails(&["create", "x", "/nonexistent/disk", &cow], 1)
        .contains("no such"));
    assert!(env
        .fails(&["create", "x", "nosuchdisk9", &cow], 1)
        .contains("/dev/nosuchdisk9"));
    // A device another process holds.
    {
        // This test's process holds the lock, as flock(1) would.
        use std::os::fd::AsRawFd;
        let holder = std::fs::File::open(&other).unwrap();
        // SAFETY: flock(2) on a file this scope keeps open.
        let rc = unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(rc, 0, "flock {other}");
        let e = env.fails(&["create", "x", &origin, &other, "-bF"], 1);
        assert!(e.contains("in use by another process"), "{e}");
    }
    // Nothing changed.
    assert_eq!(
        sh(&format!("md5sum {cow}")),
        cow_sum,
        "a refusal wrote to the COW device"
    );
    env.ok(&["create", "orig", &origin, &cow]);
    assert_eq!(snapshot_state(&env), [0, 1]);
    let _ = before;
}

#[test]
fn a_killed_daemon_comes_back_with_every_snapshot() {
    if !require("a_killed_daemon_comes_back_with_every_snapshot") {
        return;
    }
    let env = Env::new();
    let origin = env.image("o.img", 16 * MIB);
    let cow = env.image("c.img", 64 * MIB);
    env.ok(&["create", "orig", &origin, &cow, "-bF"]);
    let pat = |seed: u8, len: usize| -> Vec<u8> {
        (0..len)
            .map(|i| seed ^ (i as u8).wrapping_mul(29) ^ (i >> 12) as u8)
            .collect()
    };
    let write = |data: &[u8], off: u64| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(env.mapper("orig"))
            .unwrap();
        f.seek(SeekFrom::Start(off)).unwrap();
        f.write_all(data).unwrap();
        f.sync_all().unwrap();
    };
    let read = |name: &str| std::fs::read(env.mapper(name)).unwrap();
    write(&pat(1, 16 * MIB as usize), 0);
    env.ok(&["snapshot", "orig", "-m", "a"]);
    write(&pat(2, 4 * MIB as usize), 0);
    env.ok(&["snapshot", "orig", "-m", "b"]);
    env.ok(&["create", "snap1", &origin, &cow, "1"]);
    let snap1 = read("snap1");
    assert_eq!(snap1, pat(1, 16 * MIB as usize));
    // Flushed before the kill: 1 MiB at 1 MiB.
    write(&pat(3, MIB as usize), MIB);
    let orig_flushed = read("orig")[..4 * MIB as usize].to_vec();
    // A writer hammers the upper half without flushing while the daemon dies.
    let path = env.mapper("orig");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            loop {
                let off = 8 * MIB + (n * 37 % 2000) * 4096;
                if f.seek(SeekFrom::Start(off)).is_err() || f.write_all(&[n as u8; 4096]).is_err() {
                    return n;
                }
                n += 1;
                done.store(n, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    // Killed in the middle of the writes, however slowly they start.
    let t = std::time::Instant::now();
    while done.load(std::sync::atomic::Ordering::Relaxed) < 100
        && t.elapsed() < std::time::Duration::from_secs(20)
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let pid = env.daemon_pid();
    // SAFETY: kill(2) on the daemon's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let writes = writer.join().unwrap();
    assert!(writes > 0, "the writer never wrote");
    assert!(
        ended_within(pid, std::time::Duration::from_secs(20)),
        "the killed daemon is still there"
    );
    // Any dms command starts the daemon again; the registry brings the devices back.
    let list = env.ok(&["list"]);
    assert!(
        list.contains(" orig ") && list.contains(" snap1 "),
        "{list}"
    );
    assert_eq!(read("snap1"), snap1, "snapshot 1 changed");
    env.ok(&["create", "snap2", &origin, &cow, "2"]);
    let mut want2 = pat(1, 16 * MIB as usize);
    want2[..4 * MIB as usize].copy_from_slice(&pat(2, 4 * MIB as usize));
    assert_eq!(read("snap2"), want2, "snapshot 2 changed");
    assert_eq!(
        read("orig")[..4 * MIB as usize],
        orig_flushed[..],
        "flushed data lost"
    );
}

#[test]
fn check_dump_and_delta_offline_including_damaged_stores() {
    if !require("check_dump_and_delta_offline_including_damaged_stores") {
        return;
    }
    let env = Env::new();
    let origin = env.image("o.img", 8 * MIB);
    let cow = env.image("c.img", 32 * MIB);
    env.ok(&["create", "orig", &origin, &cow, "-bF"]);
    let write = |off: u64, byte: u8, len: usize| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(env.mapper("orig"))
            .unwrap();
        f.seek(SeekFrom::Start(off)).unwrap();
        f.write_all(&vec![byte; len]).unwrap();
        f.sync_all().unwrap();
    };
    write(0, 1, 8192);
    env.ok(&["snapshot", "orig", "-m", "one"]);
    write(40960, 2, 3 * 4096);
    env.ok(&["snapshot", "orig", "-m", "two"]);
    write(40960, 3, 4096);
    // A daemon holds the store: the tools go through it, on its committed
    // state, and see what they see offline.
    let live = env.ok(&["check", &cow]);
    assert!(
        live.trim_end().ends_with("clean") && live.contains("4 exceptions"),
        "{live}"
    );
    let live_delta = env.ok(&["delta", &cow, "1", "2"]);
    env.ok(&["shutdown"]);
    assert_eq!(env.ok(&["delta", &cow, "1", "2"]), live_delta);
    let report = env.ok(&["check", &cow]);
    assert!(
        report.trim_end().ends_with("clean") && report.contains("4 exceptions"),
        "{report}"
    );
    let dump: serde_json::Value = serde_json::from_str(&env.ok(&["dump", &cow, "--json"])).unwrap();
    let o = &dump["origins"][0];
    assert_eq!(o["versions"].as_array().unwrap().len(), 3);
    assert_eq!(o["exceptions"].as_array().unwrap().len(), 4);
    let own2: serde_json::Value =
        serde_json::from_str(&env.ok(&["dump", &cow, "--json", "--tag", "2"])).unwrap();
    assert_eq!(
        own2["origins"][0]["exceptions"].as_array().unwrap().len(),
        1
    );
    let delta = env.ok(&["delta", &cow, "1", "2"]);
    assert!(
        delta.contains("3 chunk(s) may differ") && delta.contains("chunks 10+3"),
        "{delta}"
    );
    let delta0: serde_json::Value =
        serde_json::from_str(&env.ok(&["delta", &cow, "2", "0", "--json"])).unwrap();
    assert_eq!(delta0["runs"][0]["chunk"], 10);
    assert_eq!(delta0["runs"][0]["chunks"], 1);
    // Damage: every metadata page, a flipped byte each, is named by check and dump.
    let pristine = std::fs::read(&cow).unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&env.ok(&["check", &cow, "--json"])).unwrap();
    let pages: Vec<u64> = report["metadata"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert!(pages.len() >= 4, "{report}");
    for page in pages {
        let mut img = pristine.clone();
        img[(page * 4096 + 100) as usize] ^= 0x10;
        std::fs::write(&cow, &img).unwrap();
        let err = env.fails(&["check", &cow], 1);
        assert!(
            err.contains(&format!("metadata block {page} ")),
            "page {page}: {err}"
        );
        let err = env.fails(&["dump", &cow], 1);
        assert!(
            err.contains(&format!("metadata block {page} ")),
            "dump, page {page}: {err}"
        );
    }
    // Both superblocks damaged: not a store.
    let mut img = pristine.clone();
    img[60] ^= 1;
    img[4096 + 60] ^= 1;
    std::fs::write(&cow, &img).unwrap();
    assert!(env
        .fails(&["check", &cow], 1)
        .contains("does not hold a dms store"));
    std::fs::write(&cow, &pristine).unwrap();
    assert!(env.ok(&["check", &cow]).trim_end().ends_with("clean"));
}
