//! NBD for backup tools: structured replies, block status in the three
//! metadata contexts checked against the engine's own view (`dms delta`,
//! `dms dump`), real clients (nbdinfo, nbdcopy, qemu-img), and clients that
//! misbehave in the new parts of the protocol.

mod common;

use common::nbd::*;
use common::*;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::process::Command;

const MIB: u64 = 1 << 20;

#[test]
fn block_status_holes_and_sparse_copies_with_real_clients() {
    if !require_tools(
        "block_status_holes_and_sparse_copies_with_real_clients",
        &["nbdinfo", "nbdcopy", "qemu-img"],
    ) {
        return;
    }
    let env = Env::new();
    let size = 64 * MIB;
    let origin = env.image("o.img", size);
    // A sparse origin: 1 MiB of data at 8 MiB, 12 KiB at 40 MiB.
    write_at(
        std::path::Path::new(&origin),
        8 * MIB,
        &[0xab; MIB as usize],
    );
    write_at(std::path::Path::new(&origin), 40 * MIB, &[0xcd; 12288]);
    let cow = env.image("c.img", 128 * MIB);
    env.ok(&["create", "orig", &origin, &cow, "-bf"]);
    let out = Command::new("nbdinfo")
        .args(["--can", "structured-reply"])
        .arg(uri(&env, "orig"))
        .status()
        .unwrap();
    assert!(out.success(), "structured replies");
    let rows = map(&env, "orig", None);
    let want = vec![
        (0, 8 * MIB, 3),
        (8 * MIB, MIB, 0),
        (9 * MIB, 31 * MIB, 3),
        (40 * MIB, 12288, 0),
        (40 * MIB + 12288, size - 40 * MIB - 12288, 3),
    ];
    assert_eq!(rows, want);
    // qemu-img map agrees.
    let j: serde_json::Value = serde_json::from_str(&run(Command::new("qemu-img")
        .args(["map", "--output=json", "-f", "raw"])
        .arg(uri(&env, "orig"))))
    .unwrap();
    let data: Vec<(u64, u64)> = j
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect();
    assert_eq!(data, vec![(8 * MIB, MIB), (40 * MIB, 12288)]);
    // nbdcopy writes only the data: the copy is sparse, and equal.
    let copy = env.path("copy.img");
    run(Command::new("nbdcopy").arg(uri(&env, "orig")).arg(&copy));
    let meta = std::fs::metadata(&copy).unwrap();
    assert_eq!(meta.len(), size);
    assert!(
        meta.blocks() * 512 <= 2 * MIB,
        "nbdcopy wrote {} bytes for 1 MiB of data",
        meta.blocks() * 512
    );
    assert!(std::fs::read(&copy).unwrap() == std::fs::read(env.mapper("orig")).unwrap());
    let conv = env.path("conv.img");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(uri(&env, "orig"))
        .arg(&conv));
    assert!(std::fs::read(&conv).unwrap() == std::fs::read(env.mapper("orig")).unwrap());
    // A write into a hole after a snapshot: data for the origin at once; for
    // the snapshot, its own copy (of zeros), not a hole.
    env.ok(&["snapshot", "orig"]);
    env.ok(&["create", "s1", &origin, &cow, "1", "--read-only"]);
    write_at(&env.mapper("orig"), 20 * MIB, &[1; 4096]);
    let o = per_chunk(&map(&env, "orig", None), size);
    assert_eq!(o[(20 * MIB / CB) as usize], 0);
    let s = per_chunk(&map(&env, "s1", None), size);
    assert_eq!(s[(20 * MIB / CB) as usize], 0);
    assert_eq!(s[(20 * MIB / CB) as usize + 1], 3);
    let d = per_chunk(&map(&env, "s1", Some("qemu:allocation-depth")), size);
    assert_eq!(d[(20 * MIB / CB) as usize], 1);
    // A discard through dms (NBD TRIM) gives the origin file its hole back;
    // the snapshot keeps the data as its own copy.
    run(Command::new("qemu-io")
        .args(["-f", "raw", "-c", "discard 8M 1M"])
        .arg(uri(&env, "orig")));
    let o = per_chunk(&map(&env, "orig", None), size);
    let at = (8 * MIB / CB) as usize;
    assert!(
        o[at..at + 256].iter().all(|&x| x == 3),
        "the discarded MiB is a hole"
    );
    let s = per_chunk(&map(&env, "s1", None), size);
    assert!(s[at..at + 256].iter().all(|&x| x == 0));
    let d = per_chunk(&map(&env, "s1", Some("qemu:allocation-depth")), size);
    assert!(d[at..at + 256].iter().all(|&x| x == 1));
    let mut buf = vec![0u8; MIB as usize];
    std::fs::File::open(env.mapper("s1"))
        .unwrap()
        .read_exact_at(&mut buf, 8 * MIB)
        .unwrap();
    assert!(buf.iter().all(|&b| b == 0xab), "the snapshot kept its data");
}

/// From `dms dump --json`: per chunk, the depth a version reads it at (0:
/// the origin device; 1: its own copy; k: the copy of the version k − 1
/// steps above it).
fn depths_from_dump(env: &Env, cow: &str, tag: u64, chunks: u64) -> Vec<u32> {
    let j: serde_json::Value = serde_json::from_str(&env.ok(&["dump", cow, "--json"])).unwrap();
    let o = &j["origins"][0];
    let mut parent = std::collections::HashMap::new();
    let mut version_of_tag = 0;
    for v in o["versions"].as_array().unwrap() {
        let id = v["version"].as_u64().unwrap();
        parent.insert(id, v["parent"].as_u64());
        if v["tag"].as_u64() == Some(tag) && v["ghost"] == false {
            version_of_tag = id;
        }
    }
    let mut copies: std::collections::HashMap<u64, Vec<(u64, bool)>> = Default::default();
    for e in o["exceptions"].as_array().unwrap() {
        copies
            .entry(e["chunk"].as_u64().unwrap())
            .or_default()
            .push((e["version"].as_u64().unwrap(), e["cow_chunk"].is_null()));
    }
    (0..chunks)
        .map(|c| {
            let Some(cs) = copies.get(&c) else { return 0 };
            let mut v = version_of_tag;
            let mut d = 1;
            loop {
                if let Some(&(_, merged)) = cs.iter().find(|(x, _)| *x == v) {
                    return if merged { 0 } else { d };
                }
                match parent.get(&v).copied().flatten() {
                    Some(p) if p != 0 => {
                        v = p;
                        d += 1;
                    }
                    _ => return 0,
                }
            }
        })
        .collect()
}

#[test]
fn dirty_bitmaps_equal_delta_and_depth_the_version_tree() {
    if !require_tools(
        "dirty_bitmaps_equal_delta_and_depth_the_version_tree",
        &["nbdinfo"],
    ) {
        return;
    }
    let env = Env::new();
    let size = 8 * MIB;
    let chunks = size / CB;
    let origin = env.image("o.img", size);
    let cow = env.image("c.img", 64 * MIB);
    env.ok(&["create", "orig", &origin, &cow, "-bf"]);
    let o = env.mapper("orig");
    // A history: snapshots of the origin and of a snapshot (a ghost), writes
    // between them, a writable snapshot written, a delete, a rollback.
    write_at(&o, 0, &[1; 64 * 1024]);
    env.ok(&["snapshot", "orig"]); // 1
    write_at(&o, MIB, &[2; 40960]);
    env.ok(&["snapshot", "orig"]); // 2
    write_at(&o, 2 * MIB, &[3; 8192]);
    write_at(&o, MIB + 4096, &[4; 4096]);
    env.ok(&["snapshot", "orig", "1"]); // 3, of 1
    env.ok(&["create", "s3", &origin, &cow, "3"]);
    write_at(&env.mapper("s3"), 3 * MIB, &[5; 12288]);
    env.ok(&["snapshot", "orig"]); // 4
    write_at(&o, 4 * MIB, &[6; 4096]);
    env.ok(&["delete", "orig", "2"]);
    env.ok(&["snapshot", "orig"]); // 5
    env.ok(&["remove", "orig"]);
    env.ok(&["rollback", "s3", "4"]);
    env.ok(&["settle"]);
    env.ok(&["create", "orig", &origin, &cow]);
    write_at(&o, 5 * MIB, &[7; 4096]);
    env.ok(&["snapshot", "orig"]); // 6
    write_at(&o, 6 * MIB, &[8; 4096]);
    let tags = [1u64, 3, 4, 5, 6];
    for t in tags {
        if t != 3 {
            env.ok(&["create", &format!("s{t}"), &origin, &cow, &t.to_string()]);
        }
    }
    let mut checked = 0;
    for (export, me) in [
        ("orig", 0u64),
        ("s1", 1),
        ("s3", 3),
        ("s4", 4),
        ("s5", 5),
        ("s6", 6),
    ] {
        for &since in &tags {
            if since == me {
                continue;
            }
            let rows = map(
                &env,
                export,
                Some(&format!("qemu:dirty-bitmap:since-{since}")),
            );
            let got = per_chunk(&rows, size);
            let delta: serde_json::Value = serde_json::from_str(&env.ok(&[
                "delta",
                &cow,
                &since.to_string(),
                &me.to_string(),
                "--json",
            ]))
            .unwrap();
            let mut want = vec![0u32; chunks as usize];
            for r in delta["runs"].as_array().unwrap() {
                let c = r["chunk"].as_u64().unwrap();
                for k in c..c + r["chunks"].as_u64().unwrap() {
                    want[k as usize] = 1;
                }
            }
            assert_eq!(got, want, "{export} since {since}");
            checked += 1;
        }
        if me != 0 {
            let got = per_chunk(&map(&env, export, Some("qemu:allocation-depth")), size);
            assert_eq!(
                got,
                depths_from_dump(&env, &cow, me, chunks),
                "depth of {export}"
            );
            if me == 1 {
                assert!(
                    got.iter().any(|&d| d >= 2),
                    "tag 1 reads a copy of a newer one"
                );
            }
        }
    }
    assert_eq!(checked, 6 * 5 - 5);
    // A deleted tag has no bitmap.
    let out = Command::new("nbdinfo")
        .arg("--map=qemu:dirty-bitmap:since-2")
        .arg(uri(&env, "s1"))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

// A raw client for the cases real clients do not make.

fn connect(env: &Env) -> UnixStream {
    nbd_connect(env)
}

fn option(s: &mut UnixStream, opt: u32, data: &[u8]) {
    nbd_option(s, opt, data)
}

/// Option replies up to the final one: (names of META_CONTEXT replies with
/// their ids, the final reply type).
fn replies(s: &mut UnixStream) -> (Vec<(u32, String)>, u32) {
    let mut ctxs = Vec::new();
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).unwrap();
        let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        let mut d = vec![0u8; len];
        s.read_exact(&mut d).unwrap();
        match kind {
            4 => ctxs.push((
                u32::from_be_bytes(d[..4].try_into().unwrap()),
                String::from_utf8(d[4..].to_vec()).unwrap(),
            )),
            3 => {}
            k => return (ctxs, k),
        }
    }
}

fn meta(export: &str, queries: &[&str]) -> Vec<u8> {
    let mut d = (export.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(export.as_bytes());
    d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        d.extend_from_slice(&(q.len() as u32).to_be_bytes());
        d.extend_from_slice(q.as_bytes());
    }
    d
}

fn go(s: &mut UnixStream, name: &str) -> u32 {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&0u16.to_be_bytes());
    option(s, 7, &d);
    replies(s).1
}

/// Send a request; read its structured reply: (chunks as (type, payload)).
fn structured(
    s: &mut UnixStream,
    cmd: u16,
    flags: u16,
    offset: u64,
    len: u32,
) -> Vec<(u16, Vec<u8>)> {
    let mut b = 0x2560_9513u32.to_be_bytes().to_vec();
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&cmd.to_be_bytes());
    b.extend_from_slice(&77u64.to_be_bytes());
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    s.write_all(&b).unwrap();
    let mut out = Vec::new();
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).unwrap();
        assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), 0x668e_33ef);
        let fl = u16::from_be_bytes([h[4], h[5]]);
        let ty = u16::from_be_bytes([h[6], h[7]]);
        assert_eq!(u64::from_be_bytes(h[8..16].try_into().unwrap()), 77);
        let n = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        let mut p = vec![0u8; n];
        s.read_exact(&mut p).unwrap();
        out.push((ty, p));
        if fl & 1 != 0 {
            return out;
        }
    }
}

fn error_of(chunks: &[(u16, Vec<u8>)]) -> Option<u32> {
    chunks
        .iter()
        .find(|(t, _)| *t == (1 << 15) + 1)
        .map(|(_, p)| u32::from_be_bytes(p[..4].try_into().unwrap()))
}

#[test]
fn misbehaving_clients_in_structured_replies_and_contexts() {
    if !require_tools(
        "misbehaving_clients_in_structured_replies_and_contexts",
        &["qemu-io"],
    ) {
        return;
    }
    let env = Env::new();
    let size = 16 * MIB;
    let origin = env.image("o.img", size);
    let cow = env.image("c.img", 64 * MIB);
    env.ok(&["create", "orig", &origin, &cow, "-bf"]);
    write_at(&env.mapper("orig"), MIB, &[9; 8192]);
    env.ok(&["snapshot", "orig"]);
    env.ok(&["create", "s1", &origin, &cow, "1", "--read-only"]);
    // Contexts before structured replies: refused; extended headers: not
    // offered.
    let mut s = connect(&env);
    option(&mut s, 10, &meta("orig", &["base:allocation"]));
    assert_eq!(replies(&mut s).1, (1 << 31) + 3);
    option(&mut s, 11, b"");
    assert_eq!(replies(&mut s).1, (1 << 31) + 1);
    option(&mut s, 8, b"");
    assert_eq!(replies(&mut s).1, 1);
    // LIST with no query: everything; a namespace: all of it.
    option(&mut s, 9, &meta("orig", &[]));
    let (all, k) = replies(&mut s);
    assert_eq!(k, 1);
    let names: Vec<&str> = all.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "base:allocation",
            "qemu:allocation-depth",
            "qemu:dirty-bitmap:since-1"
        ]
    );
    option(&mut s, 9, &meta("s1", &["qemu:dirty-bitmap:"]));
    assert!(replies(&mut s).0.is_empty(), "s1 has no other tag");
    // Malformed: a count of queries larger than the data; a truncated name;
    // an unknown export; a payload over the limit (skipped, refused).
    let mut bogus = meta("orig", &[]);
    bogus.truncate(bogus.len() - 4);
    bogus.extend_from_slice(&1_000_000_000u32.to_be_bytes());
    option(&mut s, 10, &bogus);
    assert_eq!(replies(&mut s).1, (1 << 31) + 3);
    option(&mut s, 10, &[0, 0, 0, 50, b'x']);
    assert_eq!(replies(&mut s).1, (1 << 31) + 3);
    option(&mut s, 10, &meta("nope", &["base:allocation"]));
    assert_eq!(replies(&mut s).1, (1 << 31) + 6);
    let q = "q".repeat(3000);
    let huge = meta("orig", &vec![q.as_str(); 30]);
    option(&mut s, 10, &huge);
    assert_eq!(replies(&mut s).1, (1 << 31) + 9);
    // Unknown names select nothing; a SET for another export does not
    // carry over to GO: block status is then EINVAL.
    option(
        &mut s,
        10,
        &meta("orig", &["base:nothing", "qemu:dirty-bitmap:since-99"]),
    );
    let (sel, k) = replies(&mut s);
    assert!(sel.is_empty() && k == 1);
    option(&mut s, 10, &meta("s1", &["base:allocation"]));
    let (sel, _) = replies(&mut s);
    assert_eq!(sel, vec![(1, "base:allocation".to_string())]);
    assert_eq!(go(&mut s, "orig"), 1);
    assert_eq!(error_of(&structured(&mut s, 7, 0, 0, 4096)), Some(22));
    // Reads are structured now: data and hole chunks covering the request.
    let r = structured(&mut s, 0, 0, MIB - 8192, 32768);
    assert!(error_of(&r).is_none());
    let mut covered = 0u64;
    for (t, p) in &r {
        let off = u64::from_be_bytes(p[..8].try_into().unwrap());
        assert_eq!(off, MIB - 8192 + covered, "chunks in order here");
        match t {
            1 => {
                let data = &p[8..];
                assert!(data.iter().all(|&b| b == 9));
                covered += data.len() as u64;
            }
            2 => covered += u64::from(u32::from_be_bytes(p[8..12].try_into().unwrap())),
            t => panic!("chunk type {t}"),
        }
    }
    assert_eq!(covered, 32768);
    // Past the end: an error chunk, the connection stays.
    assert_eq!(
        error_of(&structured(&mut s, 0, 0, size - 100, 4096)),
        Some(22)
    );
    // A proper session: block status past the end, of length zero, and
    // with REQ_ONE.
    let mut s = connect(&env);
    option(&mut s, 8, b"");
    replies(&mut s);
    option(
        &mut s,
        10,
        &meta("orig", &["base:allocation", "qemu:allocation-depth"]),
    );
    let (sel, _) = replies(&mut s);
    assert_eq!(sel.len(), 2);
    assert_eq!(go(&mut s, "orig"), 1);
    assert_eq!(
        error_of(&structured(&mut s, 7, 0, size - 4096, 8192)),
        Some(22)
    );
    assert_eq!(error_of(&structured(&mut s, 7, 0, 0, 0)), Some(22));
    assert_eq!(
        error_of(&structured(&mut s, 7, 0, u64::MAX - 10, 100)),
        Some(22)
    );
    let r = structured(&mut s, 7, 1 << 3, 0, 16 * MIB as u32);
    assert_eq!(r.len(), 2, "one chunk per context");
    for (t, p) in &r {
        assert_eq!(*t, 5);
        assert_eq!(p.len(), 4 + 8, "REQ_ONE: one descriptor");
        let l = u32::from_be_bytes(p[4..8].try_into().unwrap());
        assert!(l > 0 && u64::from(l) <= 16 * MIB);
    }
    let r = structured(&mut s, 7, 0, 0, 16 * MIB as u32);
    let ids: Vec<u32> = r
        .iter()
        .map(|(_, p)| u32::from_be_bytes(p[..4].try_into().unwrap()))
        .collect();
    assert_eq!(ids, vec![1, 2]);
    for (_, p) in &r {
        let total: u64 = p[4..]
            .chunks(8)
            .map(|d| u64::from(u32::from_be_bytes(d[..4].try_into().unwrap())))
            .sum();
        assert_eq!(total, 16 * MIB, "descriptors cover the request");
    }
    // Everyone else carries on.
    run(Command::new("qemu-io")
        .args(["-f", "raw", "-r", "-c", "read -P 9 1M 8k"])
        .arg(uri(&env, "s1")));
}
