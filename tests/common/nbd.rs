//! Helpers for tests that read block status with real NBD clients.

use super::Env;
use std::os::unix::fs::FileExt;
use std::process::Command;

/// The chunk size the tests' stores use.
pub const CB: u64 = 4096;

/// The export's NBD URI over the daemon's unix socket.
pub fn uri(env: &Env, export: &str) -> String {
    format!(
        "nbd+unix:///{export}?socket={}",
        env.run.path().join("nbd.sock").display()
    )
}

/// Run a client; it must succeed. Its stdout.
#[track_caller]
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `nbdinfo --map[=ctx]` as (offset, length, value) rows.
pub fn map(env: &Env, export: &str, ctx: Option<&str>) -> Vec<(u64, u64, u32)> {
    let arg = match ctx {
        Some(c) => format!("--map={c}"),
        None => "--map".to_string(),
    };
    run(Command::new("nbdinfo").arg(arg).arg(uri(env, export)))
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (
                w[0].parse().unwrap(),
                w[1].parse().unwrap(),
                w[2].parse().unwrap(),
            )
        })
        .collect()
}

/// Per chunk, the value a map gives it.
pub fn per_chunk(rows: &[(u64, u64, u32)], size: u64) -> Vec<u32> {
    let mut v = vec![u32::MAX; (size / CB) as usize];
    for &(o, l, x) in rows {
        for c in o / CB..(o + l).div_ceil(CB) {
            v[c as usize] = x;
        }
    }
    assert!(v.iter().all(|&x| x != u32::MAX), "the map leaves gaps");
    v
}

pub fn write_at(path: &std::path::Path, offset: u64, data: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, offset).unwrap();
    f.sync_all().unwrap();
}
