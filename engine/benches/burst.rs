//! A burst of writes, then a flush: what a filesystem freeze sends the
//! origin when a snapshot is taken (`cargo bench -p dms-engine --bench
//! burst [-- --dir DIR --rounds N]`).
//!
//! 120 MiB of 8 KiB writes at random places of a 1 GiB origin, from 16
//! threads, then one flush; as plain writes (no snapshot since the blocks
//! were last written) and as first writes after a snapshot, alternately.
//! Files go to DIR (default /var/tmp: the page cache and the disk are part
//! of what is measured).

use dms_engine::io::{Dev, FileDev};
use dms_engine::{FormatOptions, Store, Volume};
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ORIGIN_BYTES: u64 = 1 << 30;
const BURST_BYTES: u64 = 120 << 20;
const WRITE: u64 = 8192;
const THREADS: usize = 16;

fn file(dir: &std::path::Path, name: &str, size: u64) -> Dev {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    Arc::new(FileDev::open(&p, true).unwrap())
}

/// One burst at `offsets` from THREADS threads, then a flush: the time of
/// the writes and of the flush.
fn burst(store: &Store, v: &Arc<Volume>, offsets: &[u64]) -> (Duration, Duration) {
    let t = Instant::now();
    std::thread::scope(|s| {
        for k in 0..THREADS {
            let v = v.clone();
            s.spawn(move || {
                let buf = vec![k as u8; WRITE as usize];
                for &o in offsets.iter().skip(k).step_by(THREADS) {
                    v.write_at(&buf, o).unwrap();
                }
            });
        }
    });
    let writes = t.elapsed();
    store.flush().unwrap();
    (writes, t.elapsed() - writes)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str, default: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| default.to_string())
    };
    let dir = opt("--dir", "/var/tmp");
    let rounds: usize = opt("--rounds", "5").parse().expect("--rounds N");
    let tmp = tempfile::Builder::new()
        .prefix("dms-burst")
        .tempdir_in(&dir)
        .unwrap();
    let origin = file(tmp.path(), "origin.img", ORIGIN_BYTES);
    let cow = file(tmp.path(), "cow.img", 3 * ORIGIN_BYTES);
    // 4 KiB chunks (the default).
    let store = Store::format(cow, &FormatOptions::default()).unwrap();
    store.bind("origin", origin).unwrap();
    let v = Arc::new(store.volume("origin", 0).unwrap());
    let fill = vec![0x11u8; 1 << 20];
    for i in 0..ORIGIN_BYTES >> 20 {
        v.write_at(&fill, i << 20).unwrap();
    }
    store.flush().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let slots = ORIGIN_BYTES / WRITE;
    let n = (BURST_BYTES / WRITE) as usize;
    println!(
        "burst: {} MiB of {} KiB writes from {THREADS} threads over a {} MiB origin, then a flush; files in {dir}",
        BURST_BYTES >> 20,
        WRITE >> 10,
        ORIGIN_BYTES >> 20
    );
    let (mut plain, mut first) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        // The same places twice: plain writes (nothing taken since they
        // were written), then first writes after a snapshot.
        let offsets: Vec<u64> = (0..n).map(|_| rng.gen_range(0..slots) * WRITE).collect();
        let (w, f) = burst(&store, &v, &offsets);
        plain.push((w + f).as_secs_f64());
        let tag = store.snapshot_origin("origin", "burst").unwrap();
        let (w2, f2) = burst(&store, &v, &offsets);
        first.push((w2 + f2).as_secs_f64());
        println!(
            "  plain {:>6.0} ms (writes {:.0}, flush {:.0}); first writes {:>6.0} ms (writes {:.0}, flush {:.0})",
            (w + f).as_secs_f64() * 1e3,
            w.as_secs_f64() * 1e3,
            f.as_secs_f64() * 1e3,
            (w2 + f2).as_secs_f64() * 1e3,
            w2.as_secs_f64() * 1e3,
            f2.as_secs_f64() * 1e3
        );
        store.delete("origin", tag).unwrap();
        store.clean().unwrap();
        store.flush().unwrap();
    }
    let (p, f) = (median(plain), median(first));
    println!(
        "medians of {rounds}: plain {:.0} ms, first writes {:.0} ms: first/plain time {:.2}",
        p * 1e3,
        f * 1e3,
        f / p
    );
}
