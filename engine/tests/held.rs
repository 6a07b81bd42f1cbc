//! Held overwrites: origin writes acknowledged before the commit that makes
//! their copy-outs durable. The bound on held memory, what a flush
//! promises, and failures while data is held.

mod common;

use common::*;
use dms_engine::io::{BlockDev, Dev, FaultController, FaultDev, MemDev};
use dms_engine::testing::{set_background_committer, settle};
use dms_engine::{Error, FormatOptions, Store, HELD_OVERHEAD};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const MIB: u64 = 1 << 20;

fn store_on(cow: Dev) -> Store {
    Store::format(cow, &FormatOptions::default()).unwrap()
}

/// A store over a `Flaky` origin of 1 MiB of `pattern(_, seed)`, its
/// committer stopped, with one snapshot: the initial bytes, the origin
/// device, the store, the snapshot's tag and the origin's volume.
fn flaky_with_snapshot(seed: u8) -> (Vec<u8>, Arc<Flaky>, Store, u32, dms_engine::Volume) {
    let initial = pattern(MIB as usize, seed);
    let org = Flaky::new(&initial);
    let st = store_on(Arc::new(MemDev::new("cow", 16 * MIB)));
    set_background_committer(&st, false);
    st.bind(ORIGIN, org.clone()).unwrap();
    let tag = st.snapshot_origin(ORIGIN, "").unwrap();
    let o = st.volume(ORIGIN, 0).unwrap();
    (initial, org, st, tag, o)
}

/// A memory device whose writes fail with EIO while `failing` is set.
struct Flaky {
    mem: MemDev,
    failing: AtomicBool,
    writes: AtomicU64,
}

impl Flaky {
    fn new(bytes: &[u8]) -> Arc<Flaky> {
        Arc::new(Flaky {
            mem: MemDev::from_bytes("flaky-origin", bytes),
            failing: AtomicBool::new(false),
            writes: AtomicU64::new(0),
        })
    }
}

impl BlockDev for Flaky {
    fn name(&self) -> &str {
        self.mem.name()
    }
    fn size(&self) -> u64 {
        self.mem.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> dms_engine::Result<()> {
        self.mem.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> dms_engine::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(Error::Io {
                device: "flaky-origin".into(),
                op: "write",
                source: std::io::Error::from_raw_os_error(5),
            });
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.mem.write_at(buf, offset)
    }
    fn sync(&self) -> dms_engine::Result<()> {
        self.mem.sync()
    }
}

/// After a flush: the origin reads `want`, snapshot `tag` reads `initial`,
/// the origin device holds `want`, and the store checks clean.
fn reads_as_written(
    st: &Store,
    o: &dms_engine::Volume,
    org: &Flaky,
    tag: u32,
    want: &[u8],
    initial: &[u8],
) {
    assert_eq!(read_all(o), want);
    assert_eq!(read_all(&st.volume(ORIGIN, tag).unwrap()), initial);
    let mut dev = vec![0u8; MIB as usize];
    org.read_at(&mut dev, 0).unwrap();
    assert!(dev == want, "the origin device does not hold the writes");
    assert!(st.check().unwrap().is_clean());
}

#[test]
fn writers_wait_at_the_held_limit_and_nothing_is_lost() {
    const WRITERS: usize = 6;
    const WRITE: usize = 3 * 4096 + 512; // spans up to 5 chunks
    let size = 16 * MIB;
    let initial = pattern(size as usize, 9);
    let origin: Dev = Arc::new(MemDev::from_bytes("origin", &initial));
    let st = store_on(Arc::new(MemDev::new("cow", 64 * MIB)));
    st.bind(ORIGIN, origin.clone()).unwrap();
    let limit = 256 * 1024;
    st.set_held_limit(limit);
    let tag = st.snapshot_origin(ORIGIN, "").unwrap();
    let peak = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (st, peak, stop) = (st.clone(), peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                peak.fetch_max(st.held().bytes, Ordering::SeqCst);
                std::thread::yield_now();
            }
        })
    };
    // Each writer writes its own stripe of the device: every write is a
    // first write after the snapshot, so every one is held.
    let threads: Vec<_> = (0..WRITERS)
        .map(|w| {
            let st = st.clone();
            std::thread::spawn(move || {
                let v = st.volume(ORIGIN, 0).unwrap();
                let per = size as usize / WRITERS;
                let mut off = w * per;
                while off + WRITE <= (w + 1) * per {
                    let data = vec![(w as u8 + 1) ^ (off / 4096) as u8; WRITE];
                    v.write_at(&data, off as u64).unwrap();
                    off += WRITE;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    watcher.join().unwrap();
    let stats = st.held();
    // Each writer may overshoot the limit by one request's chunks at most.
    let per_request = (WRITE as u64 / 4096 + 2) * (4096 + HELD_OVERHEAD);
    let bound = limit + WRITERS as u64 * per_request;
    assert!(
        stats.peak_bytes >= limit,
        "the limit was never reached: {stats:?}"
    );
    assert!(
        stats.peak_bytes <= bound && peak.load(Ordering::SeqCst) <= bound,
        "held memory exceeded its bound {bound}: {stats:?}"
    );
    // Every write is there, the snapshot is the old content, after a flush
    // and after a reopen.
    let mut want = initial.clone();
    let per = size as usize / WRITERS;
    for w in 0..WRITERS {
        let mut off = w * per;
        while off + WRITE <= (w + 1) * per {
            want[off..off + WRITE].fill((w as u8 + 1) ^ (off / 4096) as u8);
            off += WRITE;
        }
    }
    assert!(read_all(&st.volume(ORIGIN, 0).unwrap()) == want);
    assert!(read_all(&st.volume(ORIGIN, tag).unwrap()) == initial);
    st.flush().unwrap();
    assert_eq!(st.held().chunks, 0, "a flush leaves nothing held");
    let mut on_device = vec![0u8; size as usize];
    origin.read_at(&mut on_device, 0).unwrap();
    assert!(
        on_device == want,
        "flushed data is not on the origin device"
    );
    assert!(st.check().unwrap().is_clean());
}

#[test]
fn a_flush_puts_every_held_write_on_the_origin_device_and_makes_it_durable() {
    let ctl = FaultController::new();
    let initial = pattern(MIB as usize, 3);
    let org = Arc::new(FaultDev::new("origin", initial.clone(), ctl.clone()));
    let cow = Arc::new(FaultDev::new("cow", vec![0u8; 16 * MIB as usize], ctl));
    let st = store_on(cow.clone());
    set_background_committer(&st, false);
    st.bind(ORIGIN, org.clone()).unwrap();
    let tag = st.snapshot_origin(ORIGIN, "").unwrap();
    let o = st.volume(ORIGIN, 0).unwrap();
    for k in 0..32u64 {
        o.write_at(&[0xA0 + k as u8; 1000], k * 8192 + 100).unwrap();
    }
    assert!(st.held().chunks >= 32, "{:?}", st.held());
    // Held: the origin device still has the old bytes, reads see the new.
    assert_eq!(org.volatile_image(), initial);
    let mut b = [0u8; 1000];
    o.read_at(&mut b, 3 * 8192 + 100).unwrap();
    assert_eq!(b, [0xA3; 1000]);
    o.flush().unwrap();
    let durable = org.durable_image();
    for k in 0..32usize {
        let at = k * 8192 + 100;
        assert!(durable[at..at + 1000].iter().all(|&x| x == 0xA0 + k as u8));
    }
    // And what a restart finds: the writes, and the snapshot as it was.
    let st2 = Store::open(Arc::new(MemDev::from_bytes("cow", &cow.durable_image()))).unwrap();
    st2.attach(ORIGIN, Arc::new(MemDev::from_bytes("origin", &durable)))
        .unwrap();
    assert_eq!(read_all(&st2.volume(ORIGIN, tag).unwrap()), initial);
    assert!(st2.check().unwrap().is_clean());
}

#[test]
fn a_snapshot_taken_while_writes_are_held_keeps_them_after_a_crash() {
    // Crash at every write and sync of the snapshot command: if the second
    // snapshot exists after the restart, it holds the writes that were held
    // when it was taken.
    let initial = pattern(MIB as usize, 4);
    let mut want = initial.clone();
    want[4096..24096].fill(0x55);
    let mut points = 0;
    for at in 1.. {
        let ctl = FaultController::new();
        let org = Arc::new(FaultDev::new("origin", initial.clone(), ctl.clone()));
        let cow = Arc::new(FaultDev::new(
            "cow",
            vec![0u8; 16 * MIB as usize],
            ctl.clone(),
        ));
        let st = store_on(cow.clone());
        set_background_committer(&st, false);
        st.bind(ORIGIN, org.clone()).unwrap();
        st.snapshot_origin(ORIGIN, "first").unwrap();
        let o = st.volume(ORIGIN, 0).unwrap();
        o.write_at(&[0x55; 20000], 4096).unwrap();
        assert!(st.held().chunks > 0);
        ctl.crash_after(at);
        let done = st.snapshot_origin(ORIGIN, "second").is_ok();
        ctl.crash_now();
        drop((o, st));
        let st = Store::open(Arc::new(MemDev::from_bytes("cow", &cow.crash_image(at)))).unwrap();
        st.attach(
            ORIGIN,
            Arc::new(MemDev::from_bytes("origin", &org.crash_image(at + 7))),
        )
        .unwrap();
        assert!(st.check().unwrap().is_clean());
        let tags = st.tags(ORIGIN).unwrap();
        assert_eq!(read_all(&st.volume(ORIGIN, tags[0]).unwrap()), initial);
        if let Some(&second) = tags.get(1) {
            assert_eq!(
                read_all(&st.volume(ORIGIN, second).unwrap()),
                want,
                "crash at {at}: the second snapshot lost the held writes"
            );
        }
        points += 1;
        if done {
            break;
        }
    }
    assert!(points > 5, "only {points} crash points");
}

#[test]
fn an_origin_write_error_while_held_fails_the_flush_and_loses_nothing() {
    let (initial, org, st, tag, o) = flaky_with_snapshot(5);
    o.write_at(&[0x77; 10000], 50000).unwrap();
    org.failing.store(true, Ordering::SeqCst);
    let err = o.flush().unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert_eq!(err.errno(), 5);
    // Nothing lost: the origin still reads the write, the snapshot the old.
    let mut b = vec![0u8; 10000];
    o.read_at(&mut b, 50000).unwrap();
    assert!(b.iter().all(|&x| x == 0x77));
    assert_eq!(read_all(&st.volume(ORIGIN, tag).unwrap()), initial);
    // The device comes back: the next flush writes it out.
    org.failing.store(false, Ordering::SeqCst);
    o.flush().unwrap();
    assert_eq!(st.held().chunks, 0);
    let mut dev = vec![0u8; 10000];
    org.read_at(&mut dev, 50000).unwrap();
    assert!(dev.iter().all(|&x| x == 0x77));
    assert!(st.check().unwrap().is_clean());
}

#[test]
fn writers_at_the_limit_get_the_error_of_a_failing_origin_instead_of_waiting() {
    let initial = pattern(4 * MIB as usize, 6);
    let org = Flaky::new(&initial);
    let st = store_on(Arc::new(MemDev::new("cow", 32 * MIB)));
    st.bind(ORIGIN, org.clone()).unwrap();
    st.set_held_limit(64 * 1024);
    st.snapshot_origin(ORIGIN, "").unwrap();
    org.failing.store(true, Ordering::SeqCst);
    let o = st.volume(ORIGIN, 0).unwrap();
    let mut failed = None;
    for k in 0..1024u64 {
        if let Err(e) = o.write_at(&[1; 4096], k * 4096) {
            failed = Some(e);
            break;
        }
    }
    let e = failed.expect("writes went on forever against a failing device");
    assert!(matches!(e, Error::Io { .. }), "{e}");
    org.failing.store(false, Ordering::SeqCst);
    st.flush().unwrap();
    o.write_at(&[2; 4096], 0).unwrap();
    st.flush().unwrap();
}

#[test]
fn a_failed_commit_while_data_is_held_leaves_the_origin_and_snapshots_as_durable() {
    let ctl = FaultController::new();
    let initial = pattern(MIB as usize, 7);
    let org = Arc::new(FaultDev::new("origin", initial.clone(), ctl.clone()));
    let cow = Arc::new(FaultDev::new(
        "cow",
        vec![0u8; 16 * MIB as usize],
        ctl.clone(),
    ));
    let st = store_on(cow.clone());
    set_background_committer(&st, false);
    st.bind(ORIGIN, org.clone()).unwrap();
    let tag = st.snapshot_origin(ORIGIN, "").unwrap();
    let o = st.volume(ORIGIN, 0).unwrap();
    for k in 0..16u64 {
        o.write_at(&[0x99; 4096], k * 4096).unwrap();
    }
    // The copy-outs are on the COW device; its next write fails.
    ctl.fail_writes_after(0);
    assert!(st.flush().is_err());
    assert!(matches!(o.write_at(&[1; 10], 0), Err(Error::Failed(_))));
    // The held data never reached the origin: nothing was committed.
    assert_eq!(org.volatile_image(), initial);
    drop((o, st));
    let st = Store::open(Arc::new(MemDev::from_bytes("cow", &cow.volatile_image()))).unwrap();
    st.attach(
        ORIGIN,
        Arc::new(MemDev::from_bytes("origin", &org.volatile_image())),
    )
    .unwrap();
    assert_eq!(read_all(&st.volume(ORIGIN, tag).unwrap()), initial);
    assert!(st.check().unwrap().is_clean());
}

#[test]
fn enospc_while_data_is_held_fails_only_the_writes_that_need_space() {
    let initial = pattern(8 * MIB as usize, 8);
    let origin: Dev = Arc::new(MemDev::from_bytes("origin", &initial));
    let st = store_on(Arc::new(MemDev::new("cow", 2 * MIB)));
    set_background_committer(&st, false);
    st.bind(ORIGIN, origin.clone()).unwrap();
    let tag = st.snapshot_origin(ORIGIN, "").unwrap();
    let o = st.volume(ORIGIN, 0).unwrap();
    let mut written = 0u64;
    let err = loop {
        match o.write_at(&[0xEE; 4096], written) {
            Ok(()) => written += 4096,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, Error::NoSpace), "{err}");
    assert!(written > 0);
    // Rewrites of chunks already copied (held or not) still work.
    o.write_at(&[0xDD; 100], 0).unwrap();
    st.flush().unwrap();
    let now = read_all(&o);
    assert!(now[..100].iter().all(|&b| b == 0xDD));
    assert!(now[100..written as usize].iter().all(|&b| b == 0xEE));
    assert_eq!(now[written as usize..], initial[written as usize..]);
    assert_eq!(read_all(&st.volume(ORIGIN, tag).unwrap()), initial);
    assert!(st.check().unwrap().is_clean());
}

#[test]
fn dropping_the_store_writes_held_data_out() {
    let initial = pattern(MIB as usize, 10);
    let origin: Dev = Arc::new(MemDev::from_bytes("origin", &initial));
    let cow = Arc::new(MemDev::new("cow", 16 * MIB));
    let st = store_on(cow.clone());
    set_background_committer(&st, false);
    st.bind(ORIGIN, origin.clone()).unwrap();
    let tag = st.snapshot_origin(ORIGIN, "").unwrap();
    st.volume(ORIGIN, 0)
        .unwrap()
        .write_at(&[0x42; 30000], 1000)
        .unwrap();
    assert!(st.held().chunks > 0);
    drop(st);
    let st = Store::open(cow).unwrap();
    st.attach(ORIGIN, origin).unwrap();
    let now = read_all(&st.volume(ORIGIN, 0).unwrap());
    assert!(now[1000..31000].iter().all(|&b| b == 0x42));
    assert_eq!(read_all(&st.volume(ORIGIN, tag).unwrap()), initial);
}

#[test]
fn settling_writes_held_data_without_a_flush() {
    let initial = pattern(MIB as usize, 11);
    let org = Flaky::new(&initial);
    let st = store_on(Arc::new(MemDev::new("cow", 16 * MIB)));
    set_background_committer(&st, false);
    st.bind(ORIGIN, org.clone()).unwrap();
    st.snapshot_origin(ORIGIN, "").unwrap();
    let o = st.volume(ORIGIN, 0).unwrap();
    let before = org.writes.load(Ordering::SeqCst);
    o.write_at(&[3; 8192], 8192).unwrap();
    assert_eq!(
        org.writes.load(Ordering::SeqCst),
        before,
        "a held write reached the device"
    );
    settle(&st).unwrap();
    assert!(org.writes.load(Ordering::SeqCst) > before);
    assert_eq!(st.held().chunks, 0);
}

#[test]
fn partial_writes_to_a_held_chunk_hold_only_their_bytes_and_read_back_whole() {
    // 64 KiB chunks: a held write keeps only what was written in memory;
    // the device keeps the rest of the chunk until the held bytes settle.
    let opts = FormatOptions {
        chunk_pages: 16,
        ..FormatOptions::default()
    };
    let cb = 65536usize;
    let ctl = FaultController::new();
    let initial = pattern(MIB as usize, 12);
    let org = Arc::new(FaultDev::new("origin", initial.clone(), ctl.clone()));
    let cow = Arc::new(FaultDev::new("cow", vec![0u8; 16 * MIB as usize], ctl));
    let st = Store::format(cow.clone(), &opts).unwrap();
    set_background_committer(&st, false);
    st.bind(ORIGIN, org.clone()).unwrap();
    let tag = st.snapshot_origin(ORIGIN, "").unwrap();
    let o = st.volume(ORIGIN, 0).unwrap();
    let base = 2 * cb;
    let mut want = initial.clone();
    let mut put = |o: &dms_engine::Volume, at: usize, len: usize, v: u8| {
        o.write_at(&vec![v; len], (base + at) as u64).unwrap();
        want[base + at..base + at + len].fill(v);
    };
    put(&o, 1000, 1000, 0x11);
    let held = st.held();
    assert_eq!(held.chunks, 1);
    assert_eq!(held.bytes, 1000 + HELD_OVERHEAD, "{held:?}");
    // A write past the held bytes, one before them, one across a gap and
    // one inside: the gaps keep the chunk's old bytes.
    put(&o, 40000, 1000, 0x22);
    put(&o, 100, 50, 0x33);
    put(&o, 30000, 20000, 0x44);
    put(&o, 1500, 10, 0x55);
    // And one spanning the end of this chunk into the next.
    put(&o, cb - 300, 600, 0x66);
    assert!(st.held().chunks >= 2);
    assert_eq!(
        org.volatile_image(),
        initial,
        "held bytes reached the device"
    );
    let check = |st: &Store, o: &dms_engine::Volume| {
        assert_eq!(read_all(o), want);
        assert_eq!(read_all(&st.volume(ORIGIN, tag).unwrap()), initial);
        // Reads that start and end inside held and unheld bytes alike.
        for (at, len) in [(0, 150), (990, 20), (1990, 39000), (cb - 400, 800)] {
            let mut b = vec![0u8; len];
            o.read_at(&mut b, (base + at) as u64).unwrap();
            assert_eq!(b, want[base + at..base + at + len], "read at {at}+{len}");
        }
    };
    check(&st, &o);
    o.flush().unwrap();
    assert_eq!(st.held().chunks, 0);
    check(&st, &o);
    assert_eq!(org.durable_image(), want);
    let st2 = Store::open(Arc::new(MemDev::from_bytes("cow", &cow.durable_image()))).unwrap();
    st2.attach(
        ORIGIN,
        Arc::new(MemDev::from_bytes("origin", &org.durable_image())),
    )
    .unwrap();
    check(&st2, &st2.volume(ORIGIN, 0).unwrap());
    assert!(st2.check().unwrap().is_clean());
}

#[test]
fn a_drain_writes_held_neighbours_to_the_origin_in_one_write() {
    // 4 KiB chunks. Three first writes after a snapshot, held: 16 whole
    // neighbouring chunks; four neighbours of which the first and last are
    // partly written; two chunks with a gap between them.
    let cb = 4096usize;
    let (initial, org, st, tag, o) = flaky_with_snapshot(21);
    let mut want = initial.clone();
    let mut put = |at: usize, len: usize, v: u8| {
        o.write_at(&vec![v; len], at as u64).unwrap();
        want[at..at + len].fill(v);
    };
    put(32 * cb, 16 * cb, 0x31);
    put(49 * cb + 100, 4 * cb - 200, 0x32);
    put(80 * cb, cb, 0x33);
    put(82 * cb, cb, 0x34);
    assert_eq!(st.held().chunks, 16 + 4 + 2, "{:?}", st.held());
    let before = org.writes.load(Ordering::SeqCst);
    o.flush().unwrap();
    // One write per run: the 16, the 4, and each of the two apart.
    assert_eq!(
        org.writes.load(Ordering::SeqCst) - before,
        4,
        "held neighbours were not written together"
    );
    assert_eq!(st.held().chunks, 0);
    reads_as_written(&st, &o, &org, tag, &want, &initial);
}

#[test]
fn a_writer_going_in_order_finds_the_chunks_ahead_copied_out() {
    // 4 KiB chunks in stripe groups of 16. A journal-like writer after a
    // snapshot: when it enters a new group with the two chunks before it
    // written since the snapshot, the rest of that group is copied out
    // with its write, so the writes that follow there hold nothing and
    // need no commit. Within a group it entered before, nothing is copied
    // ahead (writing chunks 2, 3, 4, 5 copies out those four).
    let cb = 4096usize;
    let (initial, org, st, tag, o) = flaky_with_snapshot(22);
    let mut want = initial.clone();
    let mut put = |chunk: usize, v: u8| {
        o.write_at(&vec![v; cb], (chunk * cb) as u64).unwrap();
        want[chunk * cb..(chunk + 1) * cb].fill(v);
    };
    for c in 2..5 {
        put(c, 0x40 + c as u8);
    }
    o.flush().unwrap();
    put(5, 0x45);
    assert_eq!(
        st.held().chunks,
        1,
        "chunks were copied out ahead within a group"
    );
    for c in 6..16 {
        put(c, 0x40 + c as u8);
    }
    assert_eq!(
        st.held().chunks,
        11,
        "first writes are held until their commit"
    );
    o.flush().unwrap();
    // Entering the next group copies the rest of it out.
    put(16, 0x50);
    assert_eq!(st.held().chunks, 1);
    o.flush().unwrap();
    for c in 17..32 {
        put(c, 0x40 + c as u8);
        assert_eq!(
            st.held().chunks,
            0,
            "chunk {c}, ahead of the writer, was not copied out with chunk 16"
        );
    }
    // A lone write at the start of a group copies nothing ahead.
    put(96, 0x60);
    o.flush().unwrap();
    put(97, 0x61);
    assert_eq!(
        st.held().chunks,
        1,
        "a lone write copied chunks ahead of it"
    );
    o.flush().unwrap();
    reads_as_written(&st, &o, &org, tag, &want, &initial);
}
