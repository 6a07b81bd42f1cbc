//! What the stream tests share: two sides (a store with an origin each),
//! reading, writing, sending and receiving.
#![allow(dead_code)]

use dms_engine::io::{Dev, MemDev};
use dms_engine::stream::{ReceiveOptions, SendOptions, StreamFormat};
use dms_engine::{FormatOptions, Store};
use std::sync::Arc;

pub const KIB: usize = 1024;
pub const SIZE: usize = 1 << 20;
pub const O: &str = "o";

pub struct Side {
    pub store: Store,
}

pub fn mem(name: &str, size: usize) -> Dev {
    Arc::new(MemDev::new(name, size as u64))
}

pub fn side(origin_bytes: usize) -> Side {
    let store = Store::format(mem("cow", 8 << 20), &FormatOptions::default()).unwrap();
    store.bind(O, mem("origin", origin_bytes)).unwrap();
    Side { store }
}

pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

impl Side {
    pub fn write(&self, tag: u32, offset: usize, data: &[u8]) {
        self.store
            .volume(O, tag)
            .unwrap()
            .write_at(data, offset as u64)
            .unwrap();
    }

    pub fn read(&self, tag: u32) -> Vec<u8> {
        let v = self.store.volume(O, tag).unwrap();
        let mut b = vec![0; v.size() as usize];
        v.read_at(&mut b, 0).unwrap();
        b
    }

    pub fn snap(&self) -> u32 {
        self.store.snapshot_origin(O, "").unwrap()
    }

    pub fn send(&self, tag: u32, from: Option<u32>, format: StreamFormat) -> Vec<u8> {
        let mut out = Vec::new();
        let opts = SendOptions {
            from,
            format,
            resume: None,
        };
        self.store
            .send(O, tag, &opts, &mut out, &mut |_, _| {})
            .unwrap();
        out
    }

    pub fn receive(
        &self,
        stream: &[u8],
        format: StreamFormat,
        force: bool,
    ) -> dms_engine::Result<u32> {
        let opts = ReceiveOptions { format, force };
        let mut input = stream;
        self.store
            .receive(O, &opts, &mut input, &mut |_, _| {})
            .map(|r| r.tag)
    }

    /// Every tag's content, and the origin's.
    pub fn all(&self) -> Vec<(u32, Vec<u8>)> {
        let mut tags = self.store.tags(O).unwrap();
        tags.insert(0, 0);
        tags.into_iter().map(|t| (t, self.read(t))).collect()
    }

    pub fn check_clean(&self) {
        let r = self.store.check().unwrap();
        assert!(r.is_clean(), "check: {r:?}");
    }
}

/// A sender with two snapshots (1: first content, 2: some chunks changed).
pub fn sender() -> Side {
    let s = side(SIZE);
    s.write(0, 0, &pattern(1, 256 * KIB));
    s.write(0, 512 * KIB, &pattern(2, 64 * KIB));
    s.snap();
    s.write(0, 8 * KIB, &pattern(3, 4 * KIB));
    s.write(0, 600 * KIB, &pattern(4, 100 * KIB));
    s.write(0, 900 * KIB, &vec![0; 8 * KIB]);
    s.snap();
    s.write(0, 0, &pattern(5, 64 * KIB)); // after the last snapshot
    s
}
