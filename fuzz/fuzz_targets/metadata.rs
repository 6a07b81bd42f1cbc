//! Damaged metadata: edits to the pages of a small store (resealed, so that
//! they get past the checksums to the decoders), then everything a user can
//! do with it. Never a panic, a hang or an access outside a device.
//!
//! Input: 6-byte edits `[page lo, page hi, offset lo, offset hi, value,
//! mode]`; page picks one of the store's metadata pages; mode bit 0 sets
//! the byte instead of xoring it, bit 7 leaves the checksum stale.
#![no_main]

use dms_engine::testing::{reseal, sample_store, workout, Sample};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const PAGE: usize = 4096;

fn sample() -> &'static Sample {
    static S: OnceLock<Sample> = OnceLock::new();
    S.get_or_init(|| sample_store().unwrap())
}

fuzz_target!(|data: &[u8]| {
    let s = sample();
    let mut cow = s.cow.clone();
    let mut touched = Vec::new();
    let mut stale = false;
    for e in data.chunks_exact(6).take(64) {
        let page =
            s.metadata[u16::from_le_bytes([e[0], e[1]]) as usize % s.metadata.len()] as usize;
        let off = u16::from_le_bytes([e[2], e[3]]) as usize % PAGE;
        let at = page * PAGE + off;
        if e[5] & 1 == 1 {
            cow[at] = e[4];
        } else {
            cow[at] ^= e[4];
        }
        stale |= e[5] & 0x80 != 0;
        touched.push(page);
    }
    if !stale {
        for page in touched {
            reseal(&mut cow[page * PAGE..(page + 1) * PAGE]);
        }
    }
    let _ = workout(&cow, &s.origins);
});
