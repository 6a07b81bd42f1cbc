//! Ceph's RBD diffs, v1 and v2: round trips, a diff written by hand with
//! zero records, and damage the format cannot detect but must not crash on.

mod support;

use dms_engine::stream::StreamFormat;
use dms_engine::Error;
use support::*;

#[test]
fn rbd_diffs_round_trip_full_and_incremental() {
    for format in [StreamFormat::RbdV1, StreamFormat::RbdV2] {
        let a = sender();
        let b = side(SIZE);
        let full = a.send(1, None, format);
        let head: &[u8] = if format == StreamFormat::RbdV1 {
            b"rbd diff v1\n"
        } else {
            b"rbd diff v2\n"
        };
        assert!(full.starts_with(head));
        // Not resumable: a cut RBD diff is undone.
        let e = b
            .receive(&full[..full.len() / 2], format, false)
            .unwrap_err();
        assert!(matches!(e, Error::BadStream { .. }), "{e}");
        assert!(b.store.tags(O).unwrap().is_empty());
        assert_eq!(b.store.receive_token(O).unwrap(), None);
        let t1 = b.receive(&full, format, false).unwrap();
        assert_eq!(b.read(t1), a.read(1));
        // The diff names its base by tag (or memo).
        let inc = a.send(2, Some(1), format);
        let t2 = b.receive(&inc, format, false).unwrap();
        assert_eq!(b.read(t2), a.read(2));
        assert_eq!(b.read(t1), a.read(1));
        b.check_clean();
    }
}

/// An RBD v1 diff written by hand, as the format document describes it.
fn hand_diff(from: Option<&str>, to: &str, size: u64, recs: &[(u8, u64, Vec<u8>, u64)]) -> Vec<u8> {
    let mut d = b"rbd diff v1\n".to_vec();
    if let Some(f) = from {
        d.push(b'f');
        d.extend_from_slice(&(f.len() as u32).to_le_bytes());
        d.extend_from_slice(f.as_bytes());
    }
    d.push(b't');
    d.extend_from_slice(&(to.len() as u32).to_le_bytes());
    d.extend_from_slice(to.as_bytes());
    d.push(b's');
    d.extend_from_slice(&size.to_le_bytes());
    for (t, off, data, len) in recs {
        d.push(*t);
        d.extend_from_slice(&off.to_le_bytes());
        if *t == b'w' {
            d.extend_from_slice(&(data.len() as u64).to_le_bytes());
            d.extend_from_slice(data);
        } else {
            d.extend_from_slice(&len.to_le_bytes());
        }
    }
    d.push(b'e');
    d
}

#[test]
fn a_hand_written_rbd_diff_is_received() {
    let b = side(SIZE);
    b.write(0, 0, &pattern(1, SIZE)); // old content a full diff replaces
    let full = hand_diff(
        None,
        "snap1",
        SIZE as u64,
        &[
            (b'w', 4096, pattern(2, 8192), 0),
            (b'z', 65536, vec![], 4096),
            (b'w', 700_000, pattern(3, 5000), 0),
        ],
    );
    let t1 = b.receive(&full, StreamFormat::RbdV1, false).unwrap();
    let mut want = vec![0u8; SIZE];
    want[4096..4096 + 8192].copy_from_slice(&pattern(2, 8192));
    want[700_000..705_000].copy_from_slice(&pattern(3, 5000));
    assert_eq!(b.read(t1), want);
    let inc = hand_diff(
        Some("snap1"),
        "snap2",
        SIZE as u64,
        &[
            (b'z', 4096, vec![], 4096),
            (b'w', 900_000, pattern(4, 100), 0),
        ],
    );
    let t2 = b.receive(&inc, StreamFormat::RbdV1, false).unwrap();
    want[4096..8192].fill(0);
    want[900_000..900_100].copy_from_slice(&pattern(4, 100));
    assert_eq!(b.read(t2), want);
    // A diff from a snapshot the receiver does not have.
    let other = hand_diff(Some("snap9"), "snap10", SIZE as u64, &[]);
    let e = b.receive(&other, StreamFormat::RbdV1, false).unwrap_err();
    assert!(matches!(e, Error::WrongBase(_)), "{e}");
    b.check_clean();
}

/// Found by the stream fuzz target: an RBD v2 data record whose length
/// field is near 2^64 (the length check overflowed).
#[test]
fn an_rbd_record_with_a_huge_length_is_refused() {
    let hex = "72626420646966662076320a66050000000000000001000000317405000000000000000100000032730800000000000000000001000000000077ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff180000000000eb006400000000000000080000000000000043434343434343437a10000000000000000010000000000000000200fefffff9000000000065";
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let b = side(SIZE);
    let t = b.store.snapshot_origin(O, "1").unwrap(); // its from-snapshot
    let e = b.receive(&bytes, StreamFormat::RbdV2, false).unwrap_err();
    assert!(matches!(e, Error::BadStream { .. }), "{e}");
    assert_eq!(b.store.tags(O).unwrap(), vec![t]);
    b.check_clean();
    // The same with an offset that would wrap around.
    let mut w = b"rbd diff v2\n".to_vec();
    w.push(b's');
    w.extend_from_slice(&8u64.to_le_bytes());
    w.extend_from_slice(&(SIZE as u64).to_le_bytes());
    w.push(b'z');
    w.extend_from_slice(&16u64.to_le_bytes());
    w.extend_from_slice(&(u64::MAX - 10).to_le_bytes());
    w.extend_from_slice(&100u64.to_le_bytes());
    w.push(b'e');
    let e = b.receive(&w, StreamFormat::RbdV2, false).unwrap_err();
    assert!(matches!(e, Error::BadStream { .. }), "{e}");
}
