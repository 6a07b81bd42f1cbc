//! NBD exports with real clients (nbdinfo, qemu-io, fio, nbdcopy) and with
//! clients that misbehave.

mod common;

use common::nbd::{run, uri};
use common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;

const MIB: u64 = 1 << 20;

fn tools_present(test: &str) -> bool {
    require_tools(test, &["nbdinfo", "nbdcopy", "qemu-io", "fio"])
}

#[test]
fn real_clients_see_origin_and_snapshots() {
    if !require("real_clients_see_origin_and_snapshots")
        || !tools_present("real_clients_see_origin_and_snapshots")
    {
        return;
    }
    let env = Env::new();
    let origin = env.image("o.img", 64 * MIB);
    let cow = env.image("c.img", 256 * MIB);
    env.ok(&["create", "orig", &origin, &cow, "-bF"]);
    // nbdinfo lists exports and sizes.
    let list = run(Command::new("nbdinfo").arg("--list").arg(uri(&env, "")));
    assert!(
        list.contains("export=\"orig\"") && list.contains("67108864"),
        "{list}"
    );
    // qemu-io writes a pattern, a snapshot is taken, qemu-io overwrites.
    run(Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0xaa 0 2M"])
        .arg(uri(&env, "orig")));
    env.ok(&["snapshot", "orig", "-m", "before"]);
    run(Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0xbb 1M 2M"])
        .arg(uri(&env, "orig")));
    env.ok(&["create", "snap1", &origin, &cow, "1", "--read-only"]);
    let info = run(Command::new("nbdinfo").arg(uri(&env, "snap1")));
    assert!(info.contains("is_read_only: true"), "{info}");
    run(Command::new("qemu-io")
        .args(["-f", "raw", "-r", "-c", "read -P 0xaa 0 2M"])
        .arg(uri(&env, "snap1")));
    run(Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            "read -P 0xaa 0 1M",
            "-c",
            "read -P 0xbb 1M 2M",
        ])
        .arg(uri(&env, "orig")));
    // A read-only export refuses writes.
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 1 0 4k"])
        .arg(uri(&env, "snap1"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    // nbdcopy of the snapshot equals the expected bytes.
    let copy = env.path("copy.img");
    run(Command::new("nbdcopy").arg(uri(&env, "snap1")).arg(&copy));
    let bytes = std::fs::read(&copy).unwrap();
    assert_eq!(bytes.len() as u64, 64 * MIB);
    assert!(bytes[..2 * MIB as usize].iter().all(|&b| b == 0xaa));
    assert!(bytes[2 * MIB as usize..].iter().all(|&b| b == 0));
    // fio with verification, iodepth 16, several jobs: origin and a writable snapshot.
    env.ok(&["snapshot", "orig", "-m", "fio"]);
    env.ok(&["create", "snap2", &origin, &cow, "2"]);
    for (export, jobs) in [("orig", "4"), ("snap2", "2")] {
        let out = run(Command::new("fio").args([
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={}", uri(&env, export)),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            &format!("--numjobs={jobs}"),
            "--size=8M",
            "--offset_increment=8M",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--group_reporting",
        ]));
        assert!(out.contains("err= 0"), "{out}");
    }
    // The read-only snapshot still holds its data after all that.
    run(Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-r",
            "-c",
            "read -P 0xaa 0 2M",
            "-c",
            "read -P 0 2M 62M",
        ])
        .arg(uri(&env, "snap1")));
    // A connected client makes removal busy; once it has gone, removal
    // goes through (a client leaving counts only until it has let go).
    let mut held = connect(&env);
    assert_eq!(go(&mut held, "snap1"), 1);
    assert!(env.fails(&["remove", "snap1"], 1).contains("NBD client"));
    drop(held);
    env.ok(&["remove", "snap1"]);
}

fn connect(env: &Env) -> UnixStream {
    nbd_connect(env)
}

fn option(s: &mut UnixStream, opt: u32, data: &[u8]) {
    nbd_option(s, opt, data)
}

/// Read one option reply: (type, data).
fn reply(s: &mut UnixStream) -> (u32, Vec<u8>) {
    let mut h = [0u8; 20];
    s.read_exact(&mut h).unwrap();
    assert_eq!(
        u64::from_be_bytes(h[..8].try_into().unwrap()),
        0x0003_e889_0455_65a9
    );
    let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
    let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
    let mut d = vec![0u8; len];
    s.read_exact(&mut d).unwrap();
    (kind, d)
}

fn go(s: &mut UnixStream, name: &str) -> u32 {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&0u16.to_be_bytes());
    option(s, 7, &d);
    loop {
        let (kind, _) = reply(s);
        if kind != 3 {
            return kind;
        }
    }
}

fn request(s: &mut UnixStream, cmd: u16, cookie: u64, offset: u64, len: u32, data: &[u8]) -> u32 {
    let mut b = 0x2560_9513u32.to_be_bytes().to_vec();
    b.extend_from_slice(&0u16.to_be_bytes());
    b.extend_from_slice(&cmd.to_be_bytes());
    b.extend_from_slice(&cookie.to_be_bytes());
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(data);
    s.write_all(&b).unwrap();
    let mut r = [0u8; 16];
    s.read_exact(&mut r).unwrap();
    assert_eq!(u32::from_be_bytes(r[..4].try_into().unwrap()), 0x6744_6698);
    assert_eq!(u64::from_be_bytes(r[8..16].try_into().unwrap()), cookie);
    let err = u32::from_be_bytes(r[4..8].try_into().unwrap());
    if err == 0 && cmd == 0 {
        let mut d = vec![0u8; len as usize];
        s.read_exact(&mut d).unwrap();
    }
    err
}

/// Whether the server has closed the connection: end of file or a reset,
/// not a read that timed out.
fn closed(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(n) => n == 0,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn misbehaving_clients_do_not_hurt_others() {
    if !require("misbehaving_clients_do_not_hurt_others")
        || !tools_present("misbehaving_clients_do_not_hurt_others")
    {
        return;
    }
    let env = Env::new();
    let origin = env.image("o.img", 16 * MIB);
    let cow = env.image("c.img", 64 * MIB);
    env.ok(&["create", "orig", &origin, &cow, "-bF"]);
    // A well-behaved client stays connected throughout.
    let mut good = connect(&env);
    assert_eq!(go(&mut good, "orig"), 1);
    assert_eq!(request(&mut good, 1, 1, 0, 4096, &[5u8; 4096]), 0);
    // Garbage instead of client flags, and garbage option magic.
    let mut s = connect(&env);
    s.write_all(b"\xff\xff\xff\xffgarbage").unwrap();
    assert!(closed(&mut s));
    let mut s = UnixStream::connect(env.run.path().join("nbd.sock")).unwrap();
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).unwrap();
    s.write_all(&1u32.to_be_bytes()).unwrap();
    s.write_all(b"NOTMAGICxxxxxxxxxxxx").unwrap();
    assert!(closed(&mut s));
    // Unknown export: an error reply to GO; unknown option: unsupported.
    let mut s = connect(&env);
    assert_eq!(go(&mut s, "nope"), (1 << 31) + 6);
    option(&mut s, 99, b"");
    assert_eq!(reply(&mut s).0, (1 << 31) + 1);
    // Malformed GO payload.
    option(&mut s, 7, &[0, 0, 0, 200]);
    assert_eq!(reply(&mut s).0, (1 << 31) + 3);
    // Requests past the end get errors, the connection stays usable.
    assert_eq!(go(&mut s, "orig"), 1);
    assert_eq!(
        request(&mut s, 0, 2, 16 * MIB - 100, 4096, &[]),
        22,
        "read past the end: EINVAL"
    );
    assert_eq!(
        request(&mut s, 1, 3, 16 * MIB, 4, &[1, 2, 3, 4]),
        28,
        "write past the end: ENOSPC"
    );
    assert_eq!(request(&mut s, 0, 4, 0, 4096, &[]), 0);
    assert_eq!(
        request(&mut s, 9, 5, 0, 0, &[]),
        22,
        "unknown command: EINVAL"
    );
    // A client that vanishes in the middle of a write.
    let mut s = connect(&env);
    assert_eq!(go(&mut s, "orig"), 1);
    let mut b = 0x2560_9513u32.to_be_bytes().to_vec();
    b.extend_from_slice(&[0, 0, 0, 1]);
    b.extend_from_slice(&7u64.to_be_bytes());
    b.extend_from_slice(&0u64.to_be_bytes());
    b.extend_from_slice(&(1u32 << 20).to_be_bytes());
    b.extend_from_slice(&[9u8; 1000]);
    s.write_all(&b).unwrap();
    drop(s);
    // A request header with bad magic ends that connection only.
    let mut s = connect(&env);
    assert_eq!(go(&mut s, "orig"), 1);
    s.write_all(&[0u8; 28]).unwrap();
    assert!(closed(&mut s));
    // The good client and real clients carry on.
    assert_eq!(request(&mut good, 0, 10, 0, 4096, &[]), 0);
    assert_eq!(request(&mut good, 3, 11, 0, 0, &[]), 0, "flush");
    run(Command::new("qemu-io")
        .args(["-f", "raw", "-c", "read -P 5 0 4k"])
        .arg(uri(&env, "orig")));
    let list = run(Command::new("nbdinfo").arg("--list").arg(uri(&env, "")));
    assert!(list.contains("orig"));
    // A clean disconnect: no reply, the server closes.
    let mut b = 0x2560_9513u32.to_be_bytes().to_vec();
    b.extend_from_slice(&[0, 0, 0, 2]);
    b.extend_from_slice(&[0u8; 20]);
    good.write_all(&b).unwrap();
    assert!(closed(&mut good));
}

#[test]
fn nbd_over_tcp_only_when_asked() {
    if !require("nbd_over_tcp_only_when_asked") || !tools_present("nbd_over_tcp_only_when_asked") {
        return;
    }
    let env = Env::new();
    let origin = env.image("o.img", 4 * MIB);
    let cow = env.image("c.img", 16 * MIB);
    // The daemon started by `dms` listens on no TCP port.
    env.ok(&["create", "orig", &origin, &cow, "-bF"]);
    let pid = env.daemon_pid();
    let ports = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let inode_lines: Vec<&str> = ports.lines().filter(|l| l.contains(" 0A ")).collect();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap();
    let socket_inodes: Vec<String> = fds
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|p| {
            p.to_string_lossy()
                .strip_prefix("socket:[")
                .map(|s| s.trim_end_matches(']').to_string())
        })
        .collect();
    for l in &inode_lines {
        let inode = l.split_whitespace().nth(9).unwrap_or("");
        assert!(
            !socket_inodes.iter().any(|s| s == inode),
            "the daemon listens on TCP: {l}"
        );
    }
    env.ok(&["shutdown"]);
    // Asked for, it serves the same exports on TCP.
    let port = 20000 + (std::process::id() % 20000) as u16;
    let mut daemon = Command::new(bin())
        .args(["daemon", "--nbd-listen", &format!("127.0.0.1:{port}")])
        .env("DMS_RUN_DIR", env.run.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let sock = env.run.path().join("control.sock");
    for _ in 0..200 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let info = run(Command::new("nbdinfo").arg(format!("nbd://127.0.0.1:{port}/orig")));
    assert!(info.contains("export-size: 4194304"), "{info}");
    run(Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            "write -P 0x5a 0 64k",
            "-c",
            "read -P 0x5a 0 64k",
        ])
        .arg(format!("nbd://127.0.0.1:{port}/orig")));
    env.ok(&["shutdown"]);
    let _ = daemon.wait();
}
