//! Any bytes as a stream for `dms receive`, in each format (the first byte
//! picks it): never a panic; a refused stream leaves no new snapshot and
//! the origin and its snapshot as they were (a cut one may leave what
//! arrived, resumable); the store checks clean afterwards.
#![no_main]

use dms_engine::io::{Dev, MemDev};
use dms_engine::stream::{ReceiveOptions, StreamFormat};
use dms_engine::{Error, FormatOptions, Store};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

const SIZE: u64 = 64 * 1024;

fn read(store: &Store, tag: u32) -> Vec<u8> {
    let v = store.volume("o", tag).unwrap();
    let mut b = vec![0u8; v.size() as usize];
    v.read_at(&mut b, 0).unwrap();
    b
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, stream)) = data.split_first() else {
        return;
    };
    let format = match pick % 3 {
        0 => StreamFormat::Dms,
        1 => StreamFormat::RbdV1,
        _ => StreamFormat::RbdV2,
    };
    let cow: Dev = Arc::new(MemDev::new("cow", 4 << 20));
    let store = Store::format(cow, &FormatOptions::default()).unwrap();
    let origin: Dev = Arc::new(MemDev::new("origin", SIZE));
    store.bind("o", origin).unwrap();
    // An origin with data and a snapshot "1", so incremental RBD diffs
    // (from "1") and full streams both have something to act on.
    let vol = store.volume("o", 0).unwrap();
    vol.write_at(&[0x5a; 8192], 4096).unwrap();
    drop(vol);
    let t1 = store.snapshot_origin("o", "1").unwrap();
    let (origin_before, snap_before) = (read(&store, 0), read(&store, t1));
    let opts = ReceiveOptions {
        format,
        force: pick & 0x80 != 0,
    };
    let mut input = stream;
    let r = store.receive("o", &opts, &mut input, &mut |_, _| {});
    match r {
        Ok(rep) => {
            assert!(store.tags("o").unwrap().contains(&rep.tag));
        }
        Err(Error::Interrupted { .. }) => {
            // What arrived stays; abort puts the origin back.
            store.receive_abort("o").unwrap();
            assert_eq!(read(&store, 0), origin_before);
        }
        Err(_) => {
            assert_eq!(store.tags("o").unwrap(), vec![t1]);
            if !opts.force {
                assert_eq!(read(&store, 0), origin_before);
            }
        }
    }
    assert_eq!(read(&store, t1), snap_before, "snapshot 1 changed");
    let report = store.check().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
});
