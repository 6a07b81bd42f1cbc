//! `dms send` and `dms receive` as a user runs them: live stores with fio
//! writing, streams in files and pipes, damaged and cut streams, a killed
//! receive resumed with its token, `rbd merge-diff` on our RBD diffs, and
//! replication into another network namespace over TCP.

mod common;

use common::*;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::process::{Child, Command, Stdio};

const MIB: u64 = 1 << 20;

fn dms_cmd(env: &Env, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .env("DMS_RUN_DIR", env.run.path())
        .current_dir(env.dir.path());
    c
}

/// `dms send ... > file`; returns the file's size.
#[track_caller]
fn send_to(env: &Env, args: &[&str], file: &str) -> u64 {
    let out = std::fs::File::create(env.path(file)).unwrap();
    let mut full = vec!["send"];
    full.extend_from_slice(args);
    let r = dms_cmd(env, &full).stdout(out).output().unwrap();
    assert!(
        r.status.success(),
        "dms {full:?}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    std::fs::metadata(env.path(file)).unwrap().len()
}

/// `dms receive ... < file`: Ok(tag) or Err(stderr).
fn receive_from(env: &Env, args: &[&str], file: &str) -> Result<u32, String> {
    let input = std::fs::File::open(env.path(file)).unwrap();
    let mut full = vec!["receive"];
    full.extend_from_slice(args);
    let r = dms_cmd(env, &full).stdin(input).output().unwrap();
    let err = String::from_utf8_lossy(&r.stderr).to_string();
    if r.status.success() {
        Ok(String::from_utf8_lossy(&r.stdout).trim().parse().unwrap())
    } else {
        assert_eq!(r.status.code(), Some(1), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
        Err(err)
    }
}

/// Random bytes (xorshift) written into a file at `offset`.
fn scribble(path: &std::path::Path, seed: u64, offset: u64, len: usize) {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&data, offset).unwrap();
    f.sync_all().unwrap();
}

fn content(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// The tags `dms list --json` shows for the origin of a dm_dev, with their
/// identities.
fn tags(env: &Env, dm_dev: &str) -> Vec<(u64, String)> {
    let j: serde_json::Value = serde_json::from_str(&env.ok(&["list", dm_dev, "--json"])).unwrap();
    j["origins"][0]["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["tag"].as_u64().unwrap(),
                s["uuid"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn fio(target: &std::path::Path, seconds: u32) -> Child {
    Command::new("fio")
        .args([
            "--name=w",
            "--ioengine=psync",
            "--rw=randwrite",
            "--bs=4k",
            "--size=24M",
            "--time_based",
            &format!("--runtime={seconds}"),
            "--numjobs=2",
        ])
        .arg(format!("--filename={}", target.display()))
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn full_and_incremental_from_a_live_store_while_fio_writes() {
    if !require_tools(
        "full_and_incremental_from_a_live_store_while_fio_writes",
        &["fio"],
    ) {
        return;
    }
    let env = Env::new();
    let origin = env.image("o.img", 64 * MIB);
    let cow = env.image("c.img", 256 * MIB);
    env.ok(&["create", "src", &origin, &cow, "-bf"]);
    scribble(&env.mapper("src"), 1, 0, 16 * MIB as usize);
    assert_eq!(env.ok(&["snapshot", "src", "-m", "base"]).trim(), "");
    let mut writer = fio(&env.mapper("src"), 8);
    std::thread::sleep(std::time::Duration::from_millis(500));
    // Everything below runs while fio writes to the origin.
    let full = send_to(&env, &["c.img", "1"], "full.dms");
    env.ok(&["snapshot", "src"]);
    let inc = send_to(&env, &["c.img", "2", "--from", "1"], "inc.dms");
    let delta: serde_json::Value =
        serde_json::from_str(&env.ok(&["delta", "c.img", "1", "2", "--json"])).unwrap();
    let changed: u64 = delta["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["bytes"].as_u64().unwrap())
        .sum();
    let dump = env.ok(&["dump", "c.img", "--tag", "2"]);
    assert!(dump.contains("version"), "{dump}");
    let check = env.ok(&["check", "c.img"]);
    assert!(check.ends_with("clean\n"), "{check}");
    assert!(writer.wait().unwrap().success());
    // A full stream carries the device; an incremental one no more than the
    // chunks `delta` names and a small overhead (records and the chain: < 1%
    // + 4 KiB). Below: it carries at least every chunk whose bytes differ.
    assert!((16 * MIB..17 * MIB).contains(&full), "{full}");
    assert!(changed > 0);
    assert!(
        inc < changed + changed / 100 + 4096,
        "incremental stream {inc} bytes for {changed} changed bytes"
    );
    eprintln!("full stream {full} bytes; incremental {inc} bytes for {changed} changed bytes");

    // Into another store: the full stream offline (no dm_dev holds it), the
    // incremental one through the daemon (a snapshot of it exposed).
    let origin2 = env.image("o2.img", 64 * MIB);
    let cow2 = env.image("c2.img", 256 * MIB);
    assert_eq!(
        receive_from(&env, &[&origin2, &cow2, "-b", "-f"], "full.dms"),
        Ok(1)
    );
    env.ok(&["create", "dst1", &origin2, &cow2, "1", "--read-only"]);
    assert_eq!(receive_from(&env, &[&origin2, &cow2], "inc.dms"), Ok(2));
    env.ok(&["create", "dst2", &origin2, &cow2, "2", "--read-only"]);
    env.ok(&["create", "src1", &origin, &cow, "1", "--read-only"]);
    env.ok(&["create", "src2", &origin, &cow, "2", "--read-only"]);
    let (s1, s2) = (content(&env.mapper("src1")), content(&env.mapper("src2")));
    assert!(s1 == content(&env.mapper("dst1")));
    assert!(s2 == content(&env.mapper("dst2")));
    // `delta` names the chunks that may differ, a superset (with fio
    // writing under load, copy-outs ahead make it name chunks that read
    // alike in both); the stream carries at least those whose bytes differ.
    let differ = s1
        .chunks(4096)
        .zip(s2.chunks(4096))
        .filter(|(a, b)| a != b)
        .count() as u64
        * 4096;
    assert!(
        differ <= changed && inc >= differ,
        "{differ} bytes differ; delta {changed}, incremental stream {inc}"
    );
    // The received snapshots carry the sender's identities and memo.
    let (a, b) = (tags(&env, "src"), tags(&env, "dst1"));
    assert_eq!(a[1..], b[1..]);
    assert!(env.ok(&["list", "dst1"]).contains("\"base\""));
    // The same stream again, or an incremental on a base that is not the
    // newest snapshot: refused, nothing changes.
    let again = receive_from(&env, &[&origin2, &cow2], "inc.dms").unwrap_err();
    assert!(again.contains("already has"), "{again}");
    assert_eq!(tags(&env, "dst1"), b);
    let check = env.ok(&["check", &cow2]);
    assert!(check.ends_with("clean\n"), "{check}");
}

#[test]
fn damaged_and_wrong_streams_are_refused_with_nothing_changed() {
    if !require("damaged_and_wrong_streams_are_refused_with_nothing_changed") {
        return;
    }
    let env = Env::new();
    let origin = env.image("o.img", 16 * MIB);
    let cow = env.image("c.img", 64 * MIB);
    env.ok(&["create", "src", &origin, &cow, "-bf"]);
    scribble(&env.mapper("src"), 2, 0, 4 * MIB as usize);
    env.ok(&["snapshot", "src"]);
    scribble(&env.mapper("src"), 3, 8 * MIB, MIB as usize);
    env.ok(&["snapshot", "src"]);
    scribble(&env.mapper("src"), 4, 12 * MIB, MIB as usize);
    env.ok(&["snapshot", "src"]);
    send_to(&env, &["c.img", "1"], "full.dms");
    send_to(&env, &["c.img", "2", "--from", "1"], "inc12.dms");
    send_to(&env, &["c.img", "3", "--from", "2"], "inc23.dms");
    let origin2 = env.image("o2.img", 16 * MIB);
    let cow2 = env.image("c2.img", 64 * MIB);
    receive_from(&env, &[&origin2, &cow2, "-b", "-f"], "full.dms").unwrap();
    env.ok(&["create", "dst", &origin2, &cow2, "1", "--read-only"]);
    let before = content(&env.mapper("dst"));
    let origin_before = content(std::path::Path::new(&origin2));
    let listed = tags(&env, "dst");

    let mut bytes = std::fs::read(env.path("inc12.dms")).unwrap();
    // A flipped byte in the middle, in the header, a cut, a newer version.
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(env.path("flip.dms"), &bytes).unwrap();
    bytes[mid] ^= 0x10;
    let mut head = bytes.clone();
    head[40] ^= 1;
    std::fs::write(env.path("head.dms"), &head).unwrap();
    let mut newer = bytes.clone();
    newer[8..12].copy_from_slice(&9u32.to_le_bytes());
    std::fs::write(env.path("newer.dms"), &newer).unwrap();
    for (file, says) in [
        ("flip.dms", "damaged"),
        ("head.dms", "damaged"),
        ("newer.dms", "version"),
        ("inc23.dms", "base"),
    ] {
        let err = receive_from(&env, &[&origin2, &cow2], file).unwrap_err();
        assert!(err.contains(says), "{file}: {err}");
        assert_eq!(tags(&env, "dst"), listed, "{file}");
        assert!(content(&env.mapper("dst")) == before, "{file}");
        assert!(
            content(std::path::Path::new(&origin2)) == origin_before,
            "{file}: the origin changed"
        );
        let out = env.dms(&["receive", "--token", &origin2, &cow2]);
        assert!(
            !out.status.success(),
            "{file}: a damaged stream left a token"
        );
    }
    let check = env.ok(&["check", &cow2]);
    assert!(check.ends_with("clean\n"), "{check}");
    // An empty input, or one of another format, into a fresh COW device
    // with -b -f: one line, and the device is not formatted.
    let o9 = env.image("o9.img", 16 * MIB);
    let c9 = env.image("c9.img", 64 * MIB);
    std::fs::write(env.path("empty.dms"), b"").unwrap();
    std::fs::write(env.path("other.dms"), b"rbd diff v1\nt\x01\x00\x00\x00x").unwrap();
    for (file, says) in [("empty.dms", "empty"), ("other.dms", "RBD diff")] {
        let err = receive_from(&env, &[&o9, &c9, "-b", "-f"], file).unwrap_err();
        assert!(err.contains(says), "{file}: {err}");
        let c = content(std::path::Path::new(&c9));
        assert!(
            c.iter().all(|&b| b == 0),
            "{file}: the COW device was written"
        );
    }
    // A stream for a larger device: refused, and the COW device this
    // receive formatted is unformatted again (a retry with -f works).
    let tiny = env.image("tiny.img", 4 * MIB);
    let err = receive_from(&env, &[&tiny, &c9, "-b", "-f"], "full.dms").unwrap_err();
    assert!(err.contains("bytes"), "{err}");
    let e = env.fails(&["check", &c9], 1);
    assert!(e.contains("does not hold a dms store"), "{e}");
    assert_eq!(
        receive_from(&env, &[&o9, &c9, "-b", "-f"], "full.dms"),
        Ok(1)
    );
    // A base equal to the target, and --token while the origin is exposed
    // (it only reads): one line each.
    let out = dms_cmd(&env, &["send", "c.img", "2", "--from", "2"])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = env.fails(&["receive", "--token", &origin, &cow], 1);
    assert!(err.contains("no resumable receive"), "{err}");
    // Bad usage: exit 2, nothing read.
    env.fails(&["receive", &origin2, &cow2, "-f"], 2);
    env.fails(&["send", "c.img", "1", "--format", "zip"], 2);
    // An unknown tag, from the sender: one line.
    let out = dms_cmd(&env, &["send", "c.img", "9"])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // The good stream still applies.
    assert_eq!(receive_from(&env, &[&origin2, &cow2], "inc12.dms"), Ok(2));
}

#[test]
fn a_killed_receive_resumes_with_its_token_and_abort_goes_back_to_the_base() {
    if !require("a_killed_receive_resumes_with_its_token_and_abort_goes_back_to_the_base") {
        return;
    }
    let env = Env::new();
    // Big enough that the receiver records its progress (every 64 MiB).
    let size = 192 * MIB;
    let origin = env.image("o.img", size);
    let cow = env.image("c.img", 512 * MIB);
    env.ok(&["create", "src", &origin, &cow, "-bf"]);
    scribble(&env.mapper("src"), 5, 0, MIB as usize);
    env.ok(&["snapshot", "src"]);
    scribble(&env.mapper("src"), 6, MIB, 150 * MIB as usize);
    env.ok(&["snapshot", "src"]);
    send_to(&env, &["c.img", "1"], "full.dms");
    let inc = send_to(&env, &["c.img", "2", "--from", "1"], "inc.dms");
    let origin2 = env.image("o2.img", size);
    let cow2 = env.image("c2.img", 512 * MIB);
    receive_from(&env, &[&origin2, &cow2, "-b", "-f"], "full.dms").unwrap();
    env.ok(&["create", "dst1", &origin2, &cow2, "1", "--read-only"]);
    let base = content(&env.mapper("dst1"));

    // Through the daemon: feed 120 MiB, then kill -9 the receiving dms.
    let stream = std::fs::read(env.path("inc.dms")).unwrap();
    let mut rx = dms_cmd(&env, &["receive", &origin2, &cow2])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut w = rx.stdin.take().unwrap();
        w.write_all(&stream[..120 * MIB as usize]).unwrap();
        w.flush().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        // While it runs, the list says how far it got.
        let j: serde_json::Value =
            serde_json::from_str(&env.ok(&["list", "dst1", "--json"])).unwrap();
        let r = &j["origins"][0]["receiving"];
        assert_eq!(r["running"], true, "{r}");
        assert!(r["done_bytes"].as_u64().unwrap() > 64 * MIB, "{r}");
        assert!(r["durable_bytes"].as_u64().unwrap() <= r["done_bytes"].as_u64().unwrap());
        rx.kill().unwrap();
        rx.wait().unwrap();
    }
    // The daemon notices and keeps what arrived.
    let token = (0..100)
        .find_map(|_| {
            let out = env.dms(&["receive", "--token", &origin2, &cow2]);
            if out.status.success() {
                Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
            } else {
                std::thread::sleep(std::time::Duration::from_millis(100));
                None
            }
        })
        .expect("a token after the kill");
    assert!(token.starts_with("dms1-"), "{token}");
    let j: serde_json::Value = serde_json::from_str(&env.ok(&["list", "dst1", "--json"])).unwrap();
    assert_eq!(
        j["origins"][0]["receiving"]["receive_token"].as_str(),
        Some(token.as_str())
    );
    // The origin cannot be exposed meanwhile.
    let err = env.fails(&["create", "dst0", &origin2, &cow2], 1);
    assert!(err.contains("interrupted receive"), "{err}");
    // The sender continues from the token: less than the whole again.
    let rest = send_to(&env, &["c.img", "2", "--resume", &token], "rest.dms");
    assert!(rest < inc - 60 * MIB, "resumed stream {rest} of {inc}");
    assert_eq!(receive_from(&env, &[&origin2, &cow2], "rest.dms"), Ok(2));
    env.ok(&["create", "src2", &origin, &cow, "2", "--read-only"]);
    env.ok(&["create", "dst2", &origin2, &cow2, "2", "--read-only"]);
    assert!(content(&env.mapper("src2")) == content(&env.mapper("dst2")));
    // The token names tag 2: sending another tag with it is refused.
    let out = dms_cmd(&env, &["send", "c.img", "1", "--resume", &token])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // A forged token (a target identity the sender does not have): refused.
    let mut forged = token.clone();
    let at = 5 + 64 + 3;
    forged.replace_range(
        at..at + 1,
        if &token[at..at + 1] == "0" { "1" } else { "0" },
    );
    let out = dms_cmd(&env, &["send", "c.img", "2", "--resume", &forged])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    // Offline, cut short by `head`, then --abort: the origin reads as the base.
    env.ok(&["remove", "dst1"]);
    env.ok(&["remove", "dst2"]);
    let origin3 = env.image("o3.img", size);
    let cow3 = env.image("c3.img", 512 * MIB);
    receive_from(&env, &[&origin3, &cow3, "-b", "-f"], "full.dms").unwrap();
    let cut = std::fs::File::create(env.path("cut.dms")).unwrap();
    cut.set_len(0).unwrap();
    std::fs::write(env.path("cut.dms"), &stream[..100 * MIB as usize]).unwrap();
    let err = receive_from(&env, &[&origin3, &cow3], "cut.dms").unwrap_err();
    assert!(err.contains("resume with token dms1-"), "{err}");
    env.ok(&["receive", "--abort", &origin3, &cow3]);
    assert!(content(std::path::Path::new(&origin3)) == base);
    env.fails(&["receive", "--token", &origin3, &cow3], 1);
    let check = env.ok(&["check", &cow3]);
    assert!(check.ends_with("clean\n"), "{check}");
}

#[test]
fn rbd_diffs_pass_rbd_merge_diff_and_apply() {
    if !require_tools("rbd_diffs_pass_rbd_merge_diff_and_apply", &["rbd"]) {
        return;
    }
    let env = Env::new();
    let origin = env.image("o.img", 32 * MIB);
    let cow = env.image("c.img", 128 * MIB);
    env.ok(&["create", "src", &origin, &cow, "-bf"]);
    scribble(&env.mapper("src"), 7, 0, 3 * MIB as usize);
    env.ok(&["snapshot", "src"]);
    scribble(&env.mapper("src"), 8, 20 * MIB, 2 * MIB as usize);
    // Zeros written over data: a zero record in the diff.
    std::fs::OpenOptions::new()
        .write(true)
        .open(env.mapper("src"))
        .unwrap()
        .write_all_at(&vec![0u8; MIB as usize], MIB)
        .unwrap();
    env.ok(&["snapshot", "src"]);
    send_to(&env, &["c.img", "1", "--format", "rbd-v1"], "full.rbd");
    send_to(
        &env,
        &["c.img", "2", "--from", "1", "--format", "rbd-v1"],
        "inc.rbd",
    );
    // Ceph's own tool reads and merges them.
    let merged = env.path("merged.rbd");
    let out = Command::new("rbd")
        .args(["merge-diff", "--no-progress"])
        .arg(env.path("full.rbd"))
        .arg(env.path("inc.rbd"))
        .arg(&merged)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rbd merge-diff: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.ok(&["create", "src2", &origin, &cow, "2", "--read-only"]);
    let want = content(&env.mapper("src2"));
    // The merged diff, applied to an empty origin, gives tag 2's bytes.
    let o2 = env.image("o2.img", 32 * MIB);
    let c2 = env.image("c2.img", 128 * MIB);
    let tag = receive_from(
        &env,
        &[&o2, &c2, "-b", "-f", "--format", "rbd-v1"],
        "merged.rbd",
    )
    .unwrap();
    env.ok(&["create", "dst", &o2, &c2, &tag.to_string(), "--read-only"]);
    assert!(content(&env.mapper("dst")) == want);
    // v2, full then incremental, between two stores.
    send_to(&env, &["c.img", "1", "--format", "rbd-v2"], "full2.rbd");
    send_to(
        &env,
        &["c.img", "2", "--from", "1", "--format", "rbd-v2"],
        "inc2.rbd",
    );
    let o3 = env.image("o3.img", 32 * MIB);
    let c3 = env.image("c3.img", 128 * MIB);
    receive_from(
        &env,
        &[&o3, &c3, "-b", "-f", "--format", "rbd-v2"],
        "full2.rbd",
    )
    .unwrap();
    let t = receive_from(&env, &[&o3, &c3, "--format", "rbd-v2"], "inc2.rbd").unwrap();
    env.ok(&["create", "dst3", &o3, &c3, &t.to_string(), "--read-only"]);
    assert!(content(&env.mapper("dst3")) == want);
}

/// Run a shell command; it must succeed.
fn run_sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn replication_into_another_network_namespace_over_tcp() {
    if !require_tools(
        "replication_into_another_network_namespace_over_tcp",
        &["ip", "socat"],
    ) {
        return;
    }
    let env = Env::new();
    let id = std::process::id() % 10000;
    let (a, b) = (format!("dmsa{id}"), format!("dmsb{id}"));
    struct Netns(String, String);
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
            let _ = Command::new("ip").args(["netns", "del", &self.1]).status();
        }
    }
    let _ns = Netns(a.clone(), b.clone());
    run_sh(&format!(
        "ip netns add {a} && ip netns add {b} && \
         ip link add va{id} netns {a} type veth peer name vb{id} netns {b} && \
         ip -n {a} addr add 10.77.0.1/24 dev va{id} && ip -n {b} addr add 10.77.0.2/24 dev vb{id} && \
         ip -n {a} link set va{id} up && ip -n {b} link set vb{id} up && \
         ip -n {a} link set lo up && ip -n {b} link set lo up"
    ));
    let origin = env.image("o.img", 32 * MIB);
    let cow = env.image("c.img", 128 * MIB);
    env.ok(&["create", "src", &origin, &cow, "-bf"]);
    scribble(&env.mapper("src"), 9, 0, 4 * MIB as usize);
    env.ok(&["snapshot", "src"]);
    scribble(&env.mapper("src"), 10, 16 * MIB, MIB as usize);
    env.ok(&["snapshot", "src"]);
    // The receiving host: its own namespace, its own dms runtime directory.
    let run_b = tempfile::tempdir().unwrap();
    let o2 = env.image("o2.img", 32 * MIB);
    let c2 = env.image("c2.img", 128 * MIB);
    let dms = bin().display().to_string();
    let rb = run_b.path().display().to_string();
    for (n, (send_args, recv_args)) in [
        ("1".to_string(), format!("{o2} {c2} -b -f")),
        ("2 --from 1".to_string(), format!("{o2} {c2}")),
    ]
    .into_iter()
    .enumerate()
    {
        let port = 19000 + (id % 1000) + n as u32;
        let out_file = env.path(&format!("tag{n}.out"));
        let mut listener = Command::new("ip")
            .args(["netns", "exec", &b, "sh", "-c"])
            .arg(format!(
                "export DMS_RUN_DIR={rb}; socat -u TCP-LISTEN:{port},reuseaddr STDOUT | {dms} receive {recv_args} > {}",
                out_file.display()
            ))
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(400));
        run_sh(&format!(
            "ip netns exec {a} sh -c 'DMS_RUN_DIR={} {dms} send {cow} {send_args} | socat -u STDIN TCP:10.77.0.2:{port},retry=20'",
            env.run.path().display()
        ));
        assert!(listener.wait().unwrap().success());
        assert_eq!(
            std::fs::read_to_string(&out_file).unwrap().trim(),
            (n + 1).to_string()
        );
    }
    env.ok(&["create", "src2", &origin, &cow, "2", "--read-only"]);
    env.ok(&["create", "dst2", &o2, &c2, "2", "--read-only"]);
    assert!(content(&env.mapper("src2")) == content(&env.mapper("dst2")));
}
