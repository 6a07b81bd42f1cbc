//! Rollback benchmark: `cargo bench -p dms-engine --bench rollback [-- --dir DIR --mib N]`.
//!
//! Prints rollback throughput against a plain copy of the same amount of data
//! on the same files, and origin 4 KiB random write IOPS while a rollback runs
//! in the background against without one.

use dms_engine::io::{Dev, FileDev};
use dms_engine::{FormatOptions, Store, Volume};
use rand::{Rng, SeedableRng};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

const ORIGIN: &str = "origin";

fn file(dir: &std::path::Path, name: &str, size: u64) -> Dev {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    Arc::new(FileDev::open(&p, true).unwrap())
}

fn fill(v: &Volume, byte: u8) {
    let buf = vec![byte; 1 << 20];
    for i in 0..v.size() >> 20 {
        v.write_at(&buf, i << 20).unwrap();
    }
}

/// Fill the origin with `byte`, snapshot it, fill it with `byte + 1`: every
/// chunk then differs between the origin and the returned tag.
fn prepare(store: &Store, o: &Volume, byte: u8) -> u32 {
    fill(o, byte);
    let tag = store.snapshot_origin(ORIGIN, "bench").unwrap();
    fill(o, byte + 1);
    store.flush().unwrap();
    tag
}

/// Random 4 KiB writes for `secs` seconds (or until `until` is set); IOPS.
fn write_iops(v: &Volume, rng: &mut impl Rng, secs: f64, until: Option<&AtomicBool>) -> (f64, u64) {
    let buf = vec![0x77u8; 4096];
    let blocks = v.size() / 4096;
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed().as_secs_f64() < secs && until.is_none_or(|u| !u.load(Ordering::SeqCst)) {
        v.write_at(&buf, rng.gen_range(0..blocks) * 4096).unwrap();
        n += 1;
    }
    (n as f64 / t.elapsed().as_secs_f64(), n)
}

fn main() {
    let v: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: &str| {
        v.iter()
            .position(|a| a == name)
            .and_then(|i| v.get(i + 1))
            .cloned()
            .unwrap_or_else(|| default.to_string())
    };
    let dir_arg = arg("--dir", "/var/tmp");
    let mib: u64 = arg("--mib", "512").parse().unwrap();
    let size = mib << 20;
    let dir = tempfile::Builder::new()
        .prefix("dms-rb")
        .tempdir_in(&dir_arg)
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    println!("rollback benchmark: origin {mib} MiB, chunk 4 KiB, files in {dir_arg}");

    // A plain copy of the same amount of data between two files on the same disk.
    {
        let src = dir.path().join("copy-src");
        let dst = dir.path().join("copy-dst");
        std::fs::write(&src, vec![0x5a; size as usize]).unwrap();
        let t = Instant::now();
        let mut r = std::fs::File::open(&src).unwrap();
        let mut w = std::fs::File::create(&dst).unwrap();
        let mut buf = vec![0u8; 4 << 20];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            w.write_all(&buf[..n]).unwrap();
        }
        w.sync_all().unwrap();
        let s = t.elapsed().as_secs_f64();
        println!(
            "plain copy of {mib} MiB (read, write, fsync): {:.2} s, {:.0} MiB/s",
            s,
            mib as f64 / s
        );
    }

    let origin = file(dir.path(), "origin.img", size);
    let cow = file(dir.path(), "cow.img", size * 4);
    let store = Store::format(
        cow,
        &FormatOptions {
            chunk_pages: 1,
            force: false,
        },
    )
    .unwrap();
    store.bind(ORIGIN, origin).unwrap();
    let o = store.volume(ORIGIN, 0).unwrap();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    // Foreground rollbacks of the whole origin, one thread and several.
    for w in [1, workers] {
        let tag = prepare(&store, &o, 0xA0);
        store.set_rollback_workers(w);
        let t = Instant::now();
        store.rollback(ORIGIN, tag).unwrap();
        let s = t.elapsed().as_secs_f64();
        println!(
            "rollback of {mib} MiB (every chunk differs), {w} thread(s): {:.2} s, {:.0} MiB/s",
            s,
            mib as f64 / s
        );
        store.delete(ORIGIN, tag).unwrap();
        store.clean().unwrap();
    }

    // A rollback that must first copy every chunk out for the origin's
    // newest snapshot (taken after the overwrite, so it owns no copies).
    {
        let tag = prepare(&store, &o, 0xE0);
        let newest = store.snapshot_origin(ORIGIN, "newest").unwrap();
        let t = Instant::now();
        store.rollback(ORIGIN, tag).unwrap();
        let s = t.elapsed().as_secs_f64();
        println!(
            "rollback of {mib} MiB with a copy-out of every chunk for the newest snapshot, {workers} thread(s): {:.2} s, {:.0} MiB/s",
            s,
            mib as f64 / s
        );
        for t in [tag, newest] {
            store.delete(ORIGIN, t).unwrap();
        }
        store.clean().unwrap();
    }

    // Foreground writes without and with a background rollback.
    let (plain, _) = write_iops(&o, &mut rng, 3.0, None);
    let t2 = prepare(&store, &o, 0xC0);
    // Rewrites after the fill need no copy-out: compare like with like.
    let (base, _) = write_iops(&o, &mut rng, 3.0, None);
    store.rollback_start(ORIGIN, t2).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let bg = {
        let (store, done) = (store.clone(), done.clone());
        std::thread::spawn(move || {
            let t = Instant::now();
            store.finish_rollback(ORIGIN).unwrap();
            done.store(true, Ordering::SeqCst);
            t.elapsed().as_secs_f64()
        })
    };
    let (during, n) = write_iops(&o, &mut rng, 60.0, Some(&done));
    let secs = bg.join().unwrap();
    println!("origin 4 KiB random writes, no rollback running: {plain:.0} IOPS (rewrites, no copy-out: {base:.0} IOPS)");
    println!(
        "origin 4 KiB random writes during a background rollback ({workers} thread(s)): {during:.0} IOPS, {:.0}% of the rewrites ({n} writes; the rollback took {secs:.2} s, {:.0} MiB/s)",
        100.0 * during / base,
        mib as f64 / secs
    );
    // Foreground writes while the cleaner frees a deleted snapshot's chunks,
    // against the same writes just before.
    let (base, _) = write_iops(&o, &mut rng, 3.0, None);
    store.delete(ORIGIN, t2).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let bg = {
        let (store, done) = (store.clone(), done.clone());
        std::thread::spawn(move || {
            let t = Instant::now();
            let r = store.clean().unwrap();
            done.store(true, Ordering::SeqCst);
            (t.elapsed().as_secs_f64(), r.chunks_freed)
        })
    };
    let (during, n) = write_iops(&o, &mut rng, 60.0, Some(&done));
    let (secs, freed) = bg.join().unwrap();
    println!(
        "origin 4 KiB random writes during background cleaning: {during:.0} IOPS, {:.0}% of the {base:.0} just before ({n} writes; the cleaner freed {freed} chunks in {secs:.2} s)",
        100.0 * during / base
    );
    let report = store.check().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}
