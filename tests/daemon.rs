//! The daemon as a service: signals, the log, the unit file, the manual and
//! completions, `dms list` while a snapshot runs, stores with nothing
//! exposed, and commands that come right after a file is closed.

mod common;

use common::*;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn kill(pid: i32, sig: libc::c_int) {
    // SAFETY: kill(2) with a pid read from the daemon's pid file.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill {pid} {sig}");
}

fn alive(pid: i32) -> bool {
    !process_gone(pid)
}

fn mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let p = path.display().to_string();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(p.as_str()))
}

fn loops_on(dir: &Path) -> Vec<String> {
    let out = sh("losetup -a");
    let d = dir.display().to_string();
    out.lines()
        .filter(|l| l.contains(&d))
        .map(|l| l.to_string())
        .collect()
}

fn read_at(path: &Path, off: u64, len: usize) -> Vec<u8> {
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    let mut b = vec![0u8; len];
    f.read_exact(&mut b).unwrap();
    b
}

fn log(env: &Env) -> String {
    std::fs::read_to_string(env.run.path().join("daemon.log")).unwrap_or_default()
}

/// A daemon started with a test hook set in its environment; returns once
/// it answers on its control socket.
fn daemon_with(env: &Env, hook: &str, value: &str) -> std::process::Child {
    let daemon = Command::new(bin())
        .arg("daemon")
        .env("DMS_RUN_DIR", env.run.path())
        .env(hook, value)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !env.run.path().join("control.sock").exists() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the daemon with {hook}={value} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon
}

#[test]
fn sigterm_with_idle_devices_stops_cleanly_and_loses_no_write() {
    if !require("sigterm_with_idle_devices_stops_cleanly_and_loses_no_write") {
        return;
    }
    let env = Env::new();
    let origin = env.image("o.img", 16 * MIB);
    let cow = env.image("c.img", 48 * MIB);
    let lo = env.ok(&["create", "orig", &origin, &cow, "-bF", "--loop"]);
    let lo = lo.trim().to_string();
    env.ok(&["snapshot", "orig"]);
    // Writes after the snapshot, acknowledged, never flushed by anyone.
    let data: Vec<u8> = (0..4 * MIB as usize)
        .map(|i| (i / 4096) as u8 ^ 0x5a)
        .collect();
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&lo).unwrap();
        f.seek(SeekFrom::Start(MIB)).unwrap();
        f.write_all(&data).unwrap();
    }
    let pid = env.daemon_pid();
    kill(pid, libc::SIGTERM);
    assert!(
        ended_within(pid, Duration::from_secs(20)),
        "the daemon did not stop"
    );
    let mapper = env.run.path().join("mapper");
    assert!(!mounted(&mapper), "the mapper directory is still mounted");
    // A loop device still open elsewhere (udev probing it after the last
    // write) goes when that lets go: detaching only marks it.
    let t = Instant::now();
    while !loops_on(env.run.path()).is_empty() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        loops_on(env.run.path()).is_empty(),
        "loop devices left: {:?}",
        loops_on(env.run.path())
    );
    assert!(
        read_at(Path::new(&origin), MIB, data.len()) == data,
        "an acknowledged write is not on the origin device"
    );
    assert!(env.ok(&["check", &cow]).contains("clean"));
    assert!(log(&env).contains("stopping (signal)"), "{}", log(&env));
}

#[test]
fn sigterm_with_a_mounted_filesystem_keeps_serving_and_a_second_stops_after_a_flush() {
    if !require("sigterm_with_a_mounted_filesystem_keeps_serving_and_a_second_stops_after_a_flush")
    {
        return;
    }
    let env = Env::new();
    let origin = env.image("o.img", 64 * MIB);
    let cow = env.image("c.img", 192 * MIB);
    let lo = env.ok(&["create", "orig", &origin, &cow, "-bF", "--loop"]);
    let lo = lo.trim().to_string();
    sh(&format!("mkfs.ext4 -q {lo}"));
    let m = env.mount(&lo, "orig");
    env.ok(&["snapshot", "orig"]);
    env.ok(&["create", "snap1", &origin, &cow, "1"]);
    let pid = env.daemon_pid();
    kill(pid, libc::SIGTERM);
    let t = Instant::now();
    let says_why = |l: &str| l.contains("not stopping yet") && l.contains("is mounted on");
    while !says_why(&log(&env)) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        says_why(&log(&env)),
        "the log does not say why: {}",
        log(&env)
    );
    // It goes on waiting (it looks again every half second).
    std::thread::sleep(Duration::from_millis(1500));
    assert!(alive(pid), "the daemon stopped under a mounted filesystem");
    // It still serves: the filesystem works, and so does the snapshot.
    std::fs::write(m.join("after-sigterm"), b"still here").unwrap();
    sh("sync");
    let snap = env.mapper("snap1");
    let mark = vec![0xC3u8; 64 * 1024];
    {
        // Acknowledged, not flushed: the stop must write it out.
        let mut f = std::fs::OpenOptions::new().write(true).open(&snap).unwrap();
        f.seek(SeekFrom::Start(40 * MIB)).unwrap();
        f.write_all(&mark).unwrap();
    }
    kill(pid, libc::SIGTERM);
    assert!(
        ended_within(pid, Duration::from_secs(20)),
        "a second SIGTERM did not stop it"
    );
    assert!(log(&env).contains("stopping now"), "{}", log(&env));
    let _ = Command::new("umount").arg("-l").arg(&m).status();
    let _ = Command::new("losetup").args(["-d", &lo]).status();
    // The lazy unmount lets go of the old loop device in its own time; a
    // new daemon attaching the same number meanwhile would lose it to the
    // old one's autoclear.
    let backing = format!(
        "/sys/block/{}/loop/backing_file",
        lo.trim_start_matches("/dev/")
    );
    for _ in 0..100 {
        if !Path::new(&backing).exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Everything reached the devices: the snapshot's write, the filesystem.
    // A new daemon exposes both dm_devs again from the registry.
    env.ok(&["list"]);
    assert!(read_at(&env.mapper("snap1"), 40 * MIB, mark.len()) == mark);
    env.ok(&["remove", "snap1"]);
    env.ok(&["remove", "orig"]);
    env.ok(&["shutdown"]);
    assert!(env.ok(&["check", &cow]).contains("clean"));
    sh(&format!("fsck.ext4 -n -f {origin}"));
}

#[test]
fn sighup_reopens_the_log() {
    if !require("sighup_reopens_the_log") {
        return;
    }
    let env = Env::new();
    let origin = env.image("o.img", 8 * MIB);
    let cow = env.image("c.img", 24 * MIB);
    env.ok(&["create", "orig", &origin, &cow, "-bF"]);
    let logf = env.run.path().join("daemon.log");
    let rotated = env.run.path().join("daemon.log.1");
    std::fs::rename(&logf, &rotated).unwrap();
    kill(env.daemon_pid(), libc::SIGHUP);
    let t = Instant::now();
    while !log(&env).contains("log reopened") && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        log(&env).contains("log reopened"),
        "no new log after SIGHUP"
    );
    assert!(std::fs::read_to_string(&rotated)
        .unwrap()
        .contains("listening"));
}

#[test]
fn dms_list_does_not_wait_behind_a_snapshot() {
    if !require("dms_list_does_not_wait_behind_a_snapshot") {
        return;
    }
    let env = Env::new();
    let origin = env.image("o.img", 8 * MIB);
    let cow = env.image("c.img", 24 * MIB);
    // A daemon whose snapshots take two seconds while frozen (a test hook
    // standing in for a big filesystem's freeze and a slow disk's syncs).
    let mut daemon = daemon_with(&env, "DMS_TEST_SNAPSHOT_PAUSE_MS", "2000");
    env.ok(&["create", "orig", &origin, &cow, "-bF"]);
    let started = Instant::now();
    let snap = {
        let run = env.run.path().to_path_buf();
        std::thread::spawn(move || {
            let status = Command::new(bin())
                .args(["snapshot", "orig"])
                .env("DMS_RUN_DIR", run)
                .status()
                .unwrap();
            (status, Instant::now())
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let listed = env.ok(&["list"]);
    let listed_at = Instant::now();
    let (status, snap_done) = snap.join().unwrap();
    assert!(status.success());
    assert!(listed.contains("origin-device"));
    let snap_took = snap_done - started;
    assert!(snap_took >= Duration::from_secs(2), "{snap_took:?}");
    // The point: list answered while the snapshot was under way.
    assert!(
        listed_at + Duration::from_millis(500) < snap_done,
        "list waited for the snapshot ({snap_took:?})"
    );
    env.ok(&["shutdown"]);
    let _ = daemon.wait();
}

#[test]
fn list_shows_stores_with_nothing_exposed() {
    if !require("list_shows_stores_with_nothing_exposed") {
        return;
    }
    let env = Env::new();
    let origin = env.image("o.img", 8 * MIB);
    let cow = env.image("c.img", 24 * MIB);
    env.ok(&["create", "orig", &origin, &cow, "-bF"]);
    env.ok(&["snapshot", "orig", "-m", "kept"]);
    env.ok(&["remove", "orig"]);
    let out = env.ok(&["list"]);
    assert!(out.contains("kept") && out.contains(&cow), "{out}");
    // Also after the daemon restarts, from the registry.
    env.ok(&["shutdown"]);
    let out = env.ok(&["list"]);
    assert!(out.contains("kept") && out.contains(&cow), "{out}");
    let json: serde_json::Value = serde_json::from_str(&env.ok(&["list", "--json"])).unwrap();
    let o = &json["origins"][0];
    assert_eq!(o["snapshots"][1]["memo"], "kept");
    assert!(o["snapshots"][1]["dm_dev"].is_null());
}

#[test]
fn remove_and_shutdown_right_after_a_close_do_not_call_the_device_busy() {
    if !require("remove_and_shutdown_right_after_a_close_do_not_call_the_device_busy") {
        return;
    }
    // The kernel sends a FUSE file's release after close(2) has returned; a
    // command that comes at once must not count the handle as open. A test
    // hook makes every release 300 ms late, as a loaded machine may.
    let env = Env::new();
    let origin = env.image("o.img", 8 * MIB);
    let cow = env.image("c.img", 24 * MIB);
    let mut daemon = daemon_with(&env, "DMS_TEST_RELEASE_DELAY_MS", "300");
    env.ok(&["create", "orig", &origin, &cow, "-bF"]);
    env.ok(&["snapshot", "orig"]);
    let write_and_close = |round: u8| {
        let block = vec![round; 64 * 1024];
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(env.mapper("orig"))
            .unwrap();
        f.write_all(&block).unwrap();
        block
    };
    for round in 1..4u8 {
        let block = write_and_close(round);
        env.ok(&["remove", "orig"]);
        assert!(
            read_at(Path::new(&origin), 0, block.len()) == block,
            "round {round}: dms remove left the write held"
        );
        env.ok(&["create", "orig", &origin, &cow]);
    }
    let block = write_and_close(9);
    env.ok(&["shutdown"]);
    assert!(daemon.wait().unwrap().success());
    assert!(
        read_at(Path::new(&origin), 0, block.len()) == block,
        "dms shutdown left the write held"
    );
    // Still open is still busy.
    env.ok(&["list"]);
    let _held = std::fs::File::open(env.mapper("orig")).unwrap();
    let e = env.fails(&["remove", "orig"], 1);
    assert!(e.contains("open file handle"), "{e}");
}

#[test]
fn the_manual_page_is_current_and_completions_are_made() {
    // Needs no root: only the binary.
    let out = Command::new(bin()).arg("manpage").output().unwrap();
    assert!(out.status.success());
    let committed = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/dms.1"))
        .expect("docs/dms.1 is missing");
    assert!(
        out.stdout == committed,
        "docs/dms.1 is out of date: run `target/release/dms manpage > docs/dms.1`"
    );
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(bin())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success() && out.stdout.len() > 1000, "{shell}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("rollback"));
    }
    let bad = Command::new(bin())
        .args(["completions", "nosuch"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let have = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            std::env::var("CI").is_err(),
            "systemd-analyze is missing and CI must run this test"
        );
        eprintln!("SKIPPED the_systemd_unit_passes_systemd_analyze_verify: no systemd-analyze");
        return;
    }
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/dms.service"),
    )
    .unwrap();
    // Verify the unit as shipped, with the binary where this build has it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dms.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/dms", &bin().display().to_string()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(unit.contains("ExecStop=/usr/local/bin/dms shutdown"));
    assert!(unit.contains("Type=notify"));
}
