//! Held overwrites seen from outside: writes after a snapshot are
//! acknowledged before their copy-outs are committed, and every way a user
//! makes data durable (fsync of a mapper file, an NBD FUA write or flush,
//! `dms remove`, `dms shutdown`) puts it on the origin device first.

mod common;

use common::*;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::process::Command;

const MIB: u64 = 1 << 20;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed ^ (i as u8).wrapping_mul(29) ^ (i >> 12) as u8)
        .collect()
}

fn read_at(path: &std::path::Path, off: u64, len: usize) -> Vec<u8> {
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    let mut b = vec![0u8; len];
    f.read_exact(&mut b).unwrap();
    b
}

/// An origin of `size` holding pattern 1 and snapshot 1 of it.
fn snapshotted(env: &Env, size: u64) -> (String, String) {
    let origin = env.path("o.img");
    std::fs::write(&origin, pattern(1, size as usize)).unwrap();
    let origin = origin.display().to_string();
    let cow = env.image("c.img", size * 3);
    env.ok(&["create", "orig", &origin, &cow, "-bF"]);
    env.ok(&["snapshot", "orig"]);
    (origin, cow)
}

#[test]
fn an_fsync_of_the_mapper_file_puts_held_writes_on_the_origin_device() {
    if !require("an_fsync_of_the_mapper_file_puts_held_writes_on_the_origin_device") {
        return;
    }
    let env = Env::new();
    let size = 16 * MIB;
    let (origin, _) = snapshotted(&env, size);
    let data = pattern(2, 4 * MIB as usize);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(env.mapper("orig"))
        .unwrap();
    // Scattered 4 KiB writes, each a first write after the snapshot.
    for k in 0..1024u64 {
        let at = (k * 3 % 4096) * 4096;
        f.write_all_at(&data[(k as usize * 4096)..(k as usize + 1) * 4096], at)
            .unwrap();
    }
    // Reads through the mapper see them at once.
    let mut b = vec![0u8; 4096];
    f.read_exact_at(&mut b, 3 * 4096).unwrap();
    assert_eq!(b, data[4096..8192]);
    f.sync_all().unwrap();
    // After the fsync every write is in the origin file itself.
    let on_disk = read_at(std::path::Path::new(&origin), 0, size as usize);
    for k in 0..1024u64 {
        let at = ((k * 3 % 4096) * 4096) as usize;
        assert_eq!(
            on_disk[at..at + 4096],
            data[(k as usize * 4096)..(k as usize + 1) * 4096],
            "write {k} is not on the origin device after fsync"
        );
    }
    // The snapshot still reads the old content.
    env.ok(&[
        "create",
        "snap1",
        &origin,
        &env.path("c.img").display().to_string(),
        "1",
    ]);
    let snap = read_at(&env.mapper("snap1"), 0, size as usize);
    assert!(snap == pattern(1, size as usize), "the snapshot changed");
}

#[test]
fn shutdown_and_remove_write_held_data_out() {
    if !require("shutdown_and_remove_write_held_data_out") {
        return;
    }
    let env = Env::new();
    let size = 8 * MIB;
    let (origin, cow) = snapshotted(&env, size);
    let data = pattern(3, MIB as usize);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(env.mapper("orig"))
            .unwrap();
        f.seek(SeekFrom::Start(MIB)).unwrap();
        f.write_all(&data).unwrap();
        // No fsync.
    }
    env.ok(&["remove", "orig"]);
    assert!(
        read_at(std::path::Path::new(&origin), MIB, MIB as usize) == data,
        "dms remove left writes held"
    );
    env.ok(&["create", "orig", &origin, &cow]);
    let more = pattern(4, MIB as usize);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(env.mapper("orig"))
            .unwrap();
        f.seek(SeekFrom::Start(4 * MIB)).unwrap();
        f.write_all(&more).unwrap();
    }
    env.ok(&["shutdown"]);
    assert!(
        read_at(std::path::Path::new(&origin), 4 * MIB, MIB as usize) == more,
        "dms shutdown left writes held"
    );
    let report = env.ok(&["check", &cow]);
    assert!(report.contains("clean"), "{report}");
}

#[test]
fn nbd_fua_writes_and_flushes_reach_the_origin_device_while_connected() {
    if !require("nbd_fua_writes_and_flushes_reach_the_origin_device_while_connected") {
        return;
    }
    if Command::new("qemu-io").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").is_err(),
            "qemu-io is missing and CI must run this test"
        );
        eprintln!("SKIPPED nbd_fua_writes_and_flushes_reach_the_origin_device: qemu-io missing");
        return;
    }
    let env = Env::new();
    let (origin, _) = snapshotted(&env, 8 * MIB);
    let uri = format!(
        "nbd+unix:///orig?socket={}",
        env.run.path().join("nbd.sock").display()
    );
    let qemu = |cmds: &[&str]| {
        let mut c = Command::new("qemu-io");
        c.args(["-f", "raw"]);
        for cmd in cmds {
            c.args(["-c", cmd]);
        }
        let out = c.arg(&uri).output().unwrap();
        assert!(
            out.status.success(),
            "qemu-io {cmds:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // A FUA write, a plain write and a flush; the client then stays
    // connected while the origin file is looked at.
    let mut client = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -f -P 0x5a 1M 64k"])
        .args([
            "-c",
            "write -P 0x6b 2M 64k",
            "-c",
            "flush",
            "-c",
            "sleep 20000",
        ])
        .arg(&uri)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let on_origin = || {
        let o = std::path::Path::new(&origin);
        read_at(o, MIB, 65536).iter().all(|&b| b == 0x5a)
            && read_at(o, 2 * MIB, 65536).iter().all(|&b| b == 0x6b)
    };
    let t = std::time::Instant::now();
    while !on_origin() && t.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = client.kill();
    let _ = client.wait();
    assert!(
        on_origin(),
        "flushed NBD writes are not on the origin device"
    );
    qemu(&["read -P 0x5a 1M 64k", "read -P 0x6b 2M 64k"]);
}

#[test]
fn ext4_on_the_origin_stays_consistent_across_snapshots_under_load() {
    if !require("ext4_on_the_origin_stays_consistent_across_snapshots_under_load") {
        return;
    }
    let env = Env::new();
    let size = 64 * MIB;
    let origin = env.image("o.img", size);
    let cow = env.image("c.img", size * 4);
    let lo = env.ok(&["create", "orig", &origin, &cow, "-bF", "--loop"]);
    let lo = lo.trim().to_string();
    sh(&format!("mkfs.ext4 -q {lo}"));
    let m = env.mount(&lo, "orig");
    // Files written while snapshots are taken: each snapshot freezes the
    // filesystem, so each is a consistent image of it.
    let writer = {
        let m = m.clone();
        std::thread::spawn(move || {
            for i in 0..40u8 {
                let p = m.join(format!("f{i}"));
                std::fs::write(&p, pattern(i, 256 * 1024)).unwrap();
            }
        })
    };
    let mut tags = Vec::new();
    for _ in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        env.ok(&["snapshot", "orig"]);
        tags.push(tags.len() + 1);
    }
    writer.join().unwrap();
    sh("sync");
    env.umount(&m);
    sh(&format!("fsck.ext4 -n -f {lo}"));
    for t in tags {
        let name = format!("s{t}");
        let dev = env.ok(&["create", &name, &origin, &cow, &t.to_string(), "--loop"]);
        let dev = dev.trim().to_string();
        sh(&format!("fsck.ext4 -n -f {dev}"));
        let sm = env.mount(&dev, &name);
        for f in files(&sm) {
            let i: u8 = f[1..].parse().unwrap();
            let got = std::fs::read(sm.join(&f)).unwrap();
            // A file is whole or (caught mid-write) a prefix of itself.
            let want = pattern(i, 256 * 1024);
            assert!(
                got.len() <= want.len() && got == want[..got.len()],
                "snapshot {t}: {f} is damaged"
            );
        }
        env.umount(&sm);
        env.ok(&["remove", &name]);
    }
}
