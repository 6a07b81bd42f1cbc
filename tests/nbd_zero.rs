//! Block status on an origin that is a block device: the zero map keeps
//! what was discarded through dms, as holes for real clients.

mod common;

use common::nbd::*;
use common::*;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

const MIB: u64 = 1 << 20;

/// An origin on a block device has no holes to seek: what is discarded
/// through dms (NBD TRIM, a punch of the mapper file) is kept in the
/// store's zero map, shown as holes, skipped by nbdcopy, kept across a
/// restart, and data again once written.
#[test]
fn discards_on_a_block_device_origin_are_holes_across_a_restart() {
    let test = "discards_on_a_block_device_origin_are_holes_across_a_restart";
    if !require_tools(
        test,
        &["nbdinfo", "nbdcopy", "qemu-io", "losetup", "fallocate"],
    ) {
        return;
    }
    let env = Env::new();
    let size = 32 * MIB;
    let img = env.image("o.img", size);
    write_at(std::path::Path::new(&img), 0, &vec![0xab; size as usize]);
    let lo = sh(&format!("losetup --find --show {img}"))
        .trim()
        .to_string();
    let cow = env.image("c.img", 128 * MIB);
    env.ok(&["create", "orig", &lo, &cow, "-bf"]);
    assert_eq!(map(&env, "orig", None), vec![(0, size, 0)], "all data");
    env.ok(&["snapshot", "orig"]);
    env.ok(&["create", "s1", &lo, &cow, "1", "--read-only"]);
    run(Command::new("qemu-io")
        .args(["-f", "raw", "-c", "discard 8M 4M"])
        .arg(uri(&env, "orig")));
    sh(&format!(
        "fallocate --punch-hole --keep-size -o {} -l {} {}",
        20 * MIB,
        MIB,
        env.mapper("orig").display()
    ));
    let holes = |env: &Env| -> Vec<(u64, u64)> {
        map(env, "orig", None)
            .into_iter()
            .filter(|r| r.2 == 3)
            .map(|r| (r.0, r.1))
            .collect()
    };
    let want = vec![(8 * MIB, 4 * MIB), (20 * MIB, MIB)];
    assert_eq!(holes(&env), want);
    // The snapshot keeps its data there, as its own copies.
    let s = per_chunk(&map(&env, "s1", None), size);
    let d = per_chunk(&map(&env, "s1", Some("qemu:allocation-depth")), size);
    let at = (8 * MIB / CB) as usize;
    assert!(s[at..at + 1024].iter().all(|&x| x == 0));
    assert!(d[at..at + 1024].iter().all(|&x| x == 1));
    // nbdcopy skips the holes, and the copy is equal.
    let copy = env.path("copy.img");
    run(Command::new("nbdcopy").arg(uri(&env, "orig")).arg(&copy));
    // The file's blocks also count the filesystem's own extent blocks
    // (ext4 adds one when the data lies in more than four extents): a
    // slack of 64 KiB for them, far below the 1 MiB of the smaller hole.
    let written = std::fs::metadata(&copy).unwrap().blocks() * 512;
    assert!(
        written <= size - 5 * MIB + 64 * 1024,
        "nbdcopy wrote {written} bytes for {} of data",
        size - 5 * MIB
    );
    let orig = std::fs::read(env.mapper("orig")).unwrap();
    assert!(std::fs::read(&copy).unwrap() == orig);
    assert!(orig[8 * MIB as usize..12 * MIB as usize]
        .iter()
        .all(|&b| b == 0));
    // The map is the store's: a restart shows the same.
    env.ok(&["shutdown"]);
    env.ok(&["list"]);
    assert_eq!(holes(&env), want);
    // A write into a discarded range is data from then on; the snapshot
    // taken after the discard read the zeros through the origin and keeps
    // them as its own copy.
    env.ok(&["snapshot", "orig"]);
    env.ok(&["create", "s2", &lo, &cow, "2", "--read-only"]);
    let s2 = per_chunk(&map(&env, "s2", None), size);
    assert_eq!(s2[(20 * MIB / CB) as usize], 3, "s2 reads the hole");
    write_at(&env.mapper("orig"), 20 * MIB + 100, &[1; 100]);
    assert_eq!(
        holes(&env),
        vec![(8 * MIB, 4 * MIB), (20 * MIB + CB, MIB - CB)]
    );
    let s2 = per_chunk(&map(&env, "s2", None), size);
    assert_eq!(s2[(20 * MIB / CB) as usize], 0, "its own copy");
    env.ok(&["shutdown"]);
    env.ok(&["list"]);
    assert_eq!(
        holes(&env),
        vec![(8 * MIB, 4 * MIB), (20 * MIB + CB, MIB - CB)]
    );
    let c = env.ok(&["check", &cow]);
    assert!(c.ends_with("clean\n"), "{c}");
}
