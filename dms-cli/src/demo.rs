//! `dms demo`: format a COW image, bind an origin image, and walk through
//! snapshots, snapshots of snapshots, writes everywhere, rollback, delete
//! and cleaning, verifying every version's content and the metadata.

use anyhow::{bail, Context, Result};
use dms_engine::io::{Dev, FileDev};
use dms_engine::{FormatOptions, Store, Volume};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

fn image(path: &Path, bytes: u64) -> Result<Dev> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.set_len(bytes)?;
    Ok(Arc::new(FileDev::open(path, true)?))
}

fn fill(v: &Volume, byte: u8) -> Result<()> {
    let buf = vec![byte; 1 << 20];
    let mut off = 0;
    while off < v.size() {
        let n = (v.size() - off).min(buf.len() as u64) as usize;
        v.write_at(&buf[..n], off)?;
        off += n as u64;
    }
    Ok(())
}

/// Check that `v` reads `expect(offset)` for each 4 KiB block.
fn verify(v: &Volume, what: &str, expect: impl Fn(u64) -> u8) -> Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut off = 0;
    while off < v.size() {
        v.read_at(&mut buf, off)?;
        let want = expect(off);
        if let Some(i) = buf.iter().position(|&b| b != want) {
            bail!(
                "{what}: byte {} reads {:#04x}, expected {want:#04x}",
                off + i as u64,
                buf[i]
            );
        }
        off += 4096;
    }
    println!("  ok  {what}");
    Ok(())
}

fn list(store: &Store) -> Result<()> {
    let st = store.status()?;
    println!(
        "  chunk-size {} page(s), used-chunks {}/{}, used-versions {}",
        st.chunk_pages, st.used_chunks, st.total_chunks, st.used_versions
    );
    for o in &st.origins {
        for v in o.list.iter().filter(|v| !v.ghost) {
            println!(
                "    tag {:>3}  chunks {:>6}  memo {:?}",
                v.tag,
                v.exceptions,
                if v.tag == 0 { "ORIGIN" } else { &v.memo }
            );
        }
    }
    Ok(())
}

pub fn run(dir: &Path, size_mib: u64, chunk_pages: u32) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let size = size_mib << 20;
    let t = Instant::now();
    println!(
        "dms demo in {}: origin {size_mib} MiB, chunk {chunk_pages} page(s)",
        dir.display()
    );
    let origin = image(&dir.join("origin.img"), size)?;
    let cow = image(&dir.join("cow.img"), size * 2 + (16 << 20))?;
    let store = Store::format(
        cow,
        &FormatOptions {
            chunk_pages,
            force: true,
        },
    )?;
    store.bind("orig", origin)?;
    let o = store.volume("orig", 0)?;
    let half = size / 2;
    fill(&o, 0xA0)?;
    println!("origin filled with 0xA0");
    let t1 = store.snapshot_origin("orig", "snap1")?;
    o.write_at(&vec![0xA1; half as usize], 0)?;
    println!("snapshot {t1}, then origin's first half rewritten with 0xA1");
    let s1 = store.volume("orig", t1)?;
    s1.write_at(&vec![0xB1; 1 << 20], half)?;
    let t2 = store.snapshot_of("orig", t1, "snap2")?;
    let s2 = store.volume("orig", t2)?;
    s2.write_at(&vec![0xB2; 1 << 20], 0)?;
    println!("snapshot {t1} written at {half}, snapshot {t2} of {t1} taken and written at 0");
    let mib = 1 << 20;
    verify(&o, "origin", |off| if off < half { 0xA1 } else { 0xA0 })?;
    verify(&s1, "snapshot 1", |off| {
        if (half..half + mib).contains(&off) {
            0xB1
        } else {
            0xA0
        }
    })?;
    verify(&s2, "snapshot 2", |off| {
        if off < mib {
            0xB2
        } else if (half..half + mib).contains(&off) {
            0xB1
        } else {
            0xA0
        }
    })?;
    list(&store)?;
    drop(o);
    store.rollback("orig", t2)?;
    println!("rolled snapshot {t2} back into the origin");
    let o = store.volume("orig", 0)?;
    verify(&o, "origin after rollback", |off| {
        if off < mib {
            0xB2
        } else if (half..half + mib).contains(&off) {
            0xB1
        } else {
            0xA0
        }
    })?;
    verify(&s1, "snapshot 1 unchanged", |off| {
        if (half..half + mib).contains(&off) {
            0xB1
        } else {
            0xA0
        }
    })?;
    drop((s1, s2, o));
    store.delete("orig", t1)?;
    store.delete("orig", t2)?;
    let cleaned = store.clean()?;
    println!(
        "deleted both snapshots; cleaner removed {} versions, freed {} chunks",
        cleaned.versions_removed, cleaned.chunks_freed
    );
    list(&store)?;
    let report = store.check()?;
    if !report.is_clean() {
        bail!("check found problems: {:?}", report.problems);
    }
    println!(
        "  ok  metadata check: {} exceptions, {} metadata pages, clean",
        report.exceptions, report.metadata_pages
    );
    println!("done in {:.2} s", t.elapsed().as_secs_f64());
    Ok(())
}
