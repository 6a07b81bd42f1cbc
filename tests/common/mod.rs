//! Running `dms` as a user would: its own runtime directory and daemon,
//! image files in a temporary directory, loop devices and mounts cleaned up.
#![allow(dead_code)]

pub mod nbd;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// The `dms` binary: `$DMS_BIN`, else the newest of target/{release,debug}/dms.
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("DMS_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target");
    let mut found: Vec<PathBuf> = ["release", "debug"]
        .iter()
        .map(|p| root.join(p).join("dms"))
        .filter(|p| p.exists())
        .collect();
    found.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    match found.pop() {
        Some(p) => p,
        None => panic!(
            "the dms binary is not built: run `cargo build --release -p dms-cli` (./test.sh does)"
        ),
    }
}

/// What the end-to-end tests need; None if all is there.
fn missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("/dev/loop-control is missing (no loop devices)".into());
    }
    for tool in ["losetup", "mkfs.ext4", "mount", "umount"] {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

/// Skip (or, under CI, fail) when the machine cannot run the test.
pub fn require(test: &str) -> bool {
    match missing() {
        None => true,
        Some(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: cannot run on this machine ({why}); CI must run it")
        }
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

/// Like [`require`], and the tools must be installed too (else skipped, or
/// under CI a failure: ./test.sh installs them).
pub fn require_tools(test: &str, tools: &[&str]) -> bool {
    if !require(test) {
        return false;
    }
    for t in tools {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t}"))
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{test}: {t} is not installed; ./test.sh installs it");
            }
            eprintln!("SKIPPED {test}: {t} is not installed");
            return false;
        }
    }
    true
}

pub struct Env {
    pub run: tempfile::TempDir,
    pub dir: tempfile::TempDir,
    mounts: Mutex<Vec<PathBuf>>,
}

impl Env {
    pub fn new() -> Env {
        Env {
            run: tempfile::Builder::new()
                .prefix("dms-run")
                .tempdir()
                .unwrap(),
            dir: tempfile::Builder::new()
                .prefix("dms-e2e")
                .tempdir_in("/var/tmp")
                .unwrap(),
            mounts: Mutex::new(Vec::new()),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn mapper(&self, name: &str) -> PathBuf {
        self.run.path().join("mapper").join(name)
    }

    /// A sparse image file.
    pub fn image(&self, name: &str, bytes: u64) -> String {
        let p = self.path(name);
        std::fs::File::create(&p).unwrap().set_len(bytes).unwrap();
        p.display().to_string()
    }

    pub fn dms(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .env("DMS_RUN_DIR", self.run.path())
            .current_dir(self.dir.path())
            .output()
            .unwrap()
    }

    /// Run dms; it must succeed. Returns stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.dms(args);
        assert!(
            out.status.success(),
            "dms {args:?} failed ({:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Run dms; it must fail with `code` and one line on stderr. Returns it.
    #[track_caller]
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.dms(args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(
            out.status.code(),
            Some(code),
            "dms {args:?}: stdout {:?} stderr {err:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        if code == 1 {
            assert_eq!(
                err.trim_end().lines().count(),
                1,
                "dms {args:?}: stderr is not one line: {err:?}"
            );
            assert!(err.starts_with("dms: "), "{err:?}");
        }
        err
    }

    pub fn mount(&self, dev: &str, name: &str) -> PathBuf {
        let m = self.path(&format!("mnt-{name}"));
        std::fs::create_dir_all(&m).unwrap();
        sh(&format!("mount {dev} {}", m.display()));
        self.mounts.lock().unwrap().push(m.clone());
        m
    }

    pub fn umount(&self, m: &Path) {
        sh(&format!("umount {}", m.display()));
        self.mounts.lock().unwrap().retain(|x| x != m);
    }

    pub fn daemon_pid(&self) -> i32 {
        std::fs::read_to_string(self.run.path().join("daemon.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for m in self.mounts.lock().unwrap().drain(..).rev() {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        let _ = self.dms(&["dmsetup", "remove_all", "--force"]);
        let _ = self.dms(&["shutdown", "--force"]);
        // Loop devices left on this run's files (e.g. after a killed daemon).
        if let Ok(out) = Command::new("losetup").arg("-a").output() {
            let prefix = self.run.path().display().to_string();
            let dir = self.dir.path().display().to_string();
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if line.contains(&prefix) || line.contains(&dir) {
                    if let Some(dev) = line.split(':').next() {
                        let _ = Command::new("losetup").arg("-d").arg(dev).status();
                    }
                }
            }
        }
        let mapper = self.run.path().join("mapper");
        let _ = Command::new("umount").arg("-l").arg(&mapper).output();
    }
}

#[track_caller]
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Names in a directory, sorted, without lost+found.
pub fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n != "lost+found")
        .collect();
    v.sort();
    v
}

pub fn touch(dir: &Path, name: &str) {
    std::fs::write(dir.join(name), b"").unwrap();
}

/// A minimal NBD client on the daemon's unix socket: the greeting read,
/// the client flags (fixed newstyle, no zeroes) sent; options come next.
pub fn nbd_connect(env: &Env) -> std::os::unix::net::UnixStream {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(env.run.path().join("nbd.sock")).unwrap();
    // Long enough for a flush (a commit and its syncs) on a loaded disk.
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).unwrap();
    assert_eq!(&hello[..8], b"NBDMAGIC");
    assert_eq!(&hello[8..16], b"IHAVEOPT");
    s.write_all(&3u32.to_be_bytes()).unwrap();
    s
}

/// Send an NBD option.
pub fn nbd_option(s: &mut std::os::unix::net::UnixStream, opt: u32, data: &[u8]) {
    use std::io::Write;
    let mut b = b"IHAVEOPT".to_vec();
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    s.write_all(&b).unwrap();
}

/// Whether process `pid` has ended: gone, or a zombie whose threads have
/// all left (until then they keep its files, and sockets, open). A
/// detached daemon's zombie waits for whoever adopted it to reap it.
pub fn process_gone(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit(") ").next().and_then(|r| r.chars().next());
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
    stat.is_empty() || (state == Some('Z') && threads <= 1)
}

/// Wait until process `pid` has ended; false if it has not in `limit`.
pub fn ended_within(pid: i32, limit: std::time::Duration) -> bool {
    let t = std::time::Instant::now();
    while !process_gone(pid) {
        if t.elapsed() > limit {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
}
