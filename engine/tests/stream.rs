//! Send and receive: full and incremental streams between stores, damaged
//! and cut streams, resume and abort, the RBD diff formats.

use dms_engine::stream::{ReceiveOptions, SendOptions, StreamFormat, Token};
use dms_engine::{Error, ErrorKind, FormatOptions, Store};
use proptest::prelude::*;
use std::io::Read;

mod support;

use support::*;

#[test]
fn full_then_incremental_streams_rebuild_each_snapshot() {
    let a = sender();
    let b = side(SIZE);
    let full = a.send(1, None, StreamFormat::Dms);
    let t1 = b.receive(&full, StreamFormat::Dms, false).unwrap();
    assert_eq!(b.read(t1), a.read(1));
    assert_eq!(b.read(0), a.read(1));
    let inc = a.send(2, Some(1), StreamFormat::Dms);
    let t2 = b.receive(&inc, StreamFormat::Dms, false).unwrap();
    assert_eq!(b.read(t2), a.read(2));
    assert_eq!(b.read(t1), a.read(1), "the older snapshot is kept");
    // The incremental carries the changed chunks and little else.
    let changed = 4 * KIB + 100 * KIB + 8 * KIB;
    assert!(inc.len() >= 104 * KIB, "{} bytes", inc.len());
    assert!(
        inc.len() < changed + 16 * KIB,
        "incremental is {} bytes for {changed} changed",
        inc.len()
    );
    // The received snapshots carry the sender's identity, memo, birthday.
    let sa = a.store.status().unwrap();
    let sb = b.store.status().unwrap();
    let v = |s: &dms_engine::StoreStatus, tag: u32| {
        s.origins[0]
            .list
            .iter()
            .find(|v| v.tag == tag)
            .cloned()
            .unwrap()
    };
    assert_eq!(v(&sa, 2).uuid, v(&sb, t2).uuid);
    assert_eq!(v(&sa, 2).birthday, v(&sb, t2).birthday);
    b.check_clean();
}

#[test]
fn an_incremental_needs_its_base_as_the_origin_reads() {
    let a = sender();
    let b = side(SIZE);
    let inc = a.send(2, Some(1), StreamFormat::Dms);
    // No base at all.
    let e = b.receive(&inc, StreamFormat::Dms, false).unwrap_err();
    assert!(matches!(e, Error::WrongBase(_)), "{e}");
    assert!(b.store.tags(O).unwrap().is_empty());
    let full = a.send(1, None, StreamFormat::Dms);
    let t1 = b.receive(&full, StreamFormat::Dms, false).unwrap();
    // The origin written to since: refused, unless forced.
    b.write(0, 100, b"local change");
    let before = b.all();
    let e = b.receive(&inc, StreamFormat::Dms, false).unwrap_err();
    assert!(matches!(e, Error::WrongBase(_)), "{e}");
    assert_eq!(e.kind(), ErrorKind::Invalid);
    assert_eq!(b.all(), before, "nothing changed");
    let t2 = b.receive(&inc, StreamFormat::Dms, true).unwrap();
    assert_eq!(b.read(t2), a.read(2));
    assert_eq!(b.read(t1), a.read(1));
    // The same stream again: it is there already.
    let e = b.receive(&inc, StreamFormat::Dms, false).unwrap_err();
    assert!(matches!(e, Error::WrongBase(_)), "{e}");
    b.check_clean();
}

#[test]
fn a_written_snapshot_gets_a_new_identity() {
    let a = sender();
    let b = side(SIZE);
    let full = a.send(1, None, StreamFormat::Dms);
    b.receive(&full, StreamFormat::Dms, false).unwrap();
    // Snapshot 1 is changed after it was sent: a stream based on it would
    // not apply to what the receiver holds.
    a.write(1, 0, b"changed after sending");
    let inc = a.send(2, Some(1), StreamFormat::Dms);
    let e = b.receive(&inc, StreamFormat::Dms, false).unwrap_err();
    assert!(matches!(e, Error::WrongBase(_)), "{e}");
}

#[test]
fn a_larger_origin_takes_a_full_stream_and_reads_zeros_past_it() {
    let a = sender();
    let b = side(2 * SIZE);
    b.write(0, 0, &pattern(9, 2 * SIZE));
    let full = a.send(2, None, StreamFormat::Dms);
    let t = b.receive(&full, StreamFormat::Dms, false).unwrap();
    let got = b.read(t);
    assert_eq!(&got[..SIZE], &a.read(2)[..]);
    assert!(got[SIZE..].iter().all(|&x| x == 0));
    // A smaller one is refused.
    let c = side(SIZE / 2);
    let e = c.receive(&full, StreamFormat::Dms, false).unwrap_err();
    assert!(matches!(e, Error::WrongBase(_)), "{e}");
}

#[test]
fn sending_tag_zero_or_an_unknown_tag_is_refused() {
    let a = sender();
    let mut out = Vec::new();
    let e = a
        .store
        .send(O, 0, &SendOptions::default(), &mut out, &mut |_, _| {})
        .unwrap_err();
    assert!(matches!(e, Error::TagZero { .. }), "{e}");
    let e = a
        .store
        .send(O, 9, &SendOptions::default(), &mut out, &mut |_, _| {})
        .unwrap_err();
    assert!(matches!(e, Error::UnknownTag { .. }), "{e}");
    assert!(out.is_empty());
}

#[test]
fn a_send_is_one_state_while_writes_go_on() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let a = sender();
    let want = a.read(2);
    let store = &a.store;
    let (started, stop, writes) = (
        AtomicBool::new(false),
        AtomicBool::new(false),
        AtomicU64::new(0),
    );
    // A slow reader of the stream; the first bytes out mean the send has
    // frozen what it sends, and the writer starts.
    struct Slow<'a>(&'a mut Vec<u8>, &'a AtomicBool);
    impl std::io::Write for Slow<'_> {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.1.store(true, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_micros(200));
            self.0.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let stream = std::thread::scope(|s| {
        s.spawn(|| {
            let v = store.volume(O, 2).unwrap();
            let o = store.volume(O, 0).unwrap();
            while !started.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let at = (i * 4096 * 7) % SIZE as u64;
                v.write_at(&[i as u8 | 1; 4096], at).unwrap();
                o.write_at(&[i as u8 | 3; 4096], at).unwrap();
                writes.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
        });
        let mut out = Vec::new();
        store
            .send(
                O,
                2,
                &SendOptions::default(),
                &mut Slow(&mut out, &started),
                &mut |_, _| {},
            )
            .unwrap();
        stop.store(true, Ordering::SeqCst);
        out
    });
    assert!(writes.load(Ordering::SeqCst) > 0, "no writes went on");
    assert_ne!(a.read(2), want, "the writes changed the tag");
    let b = side(SIZE);
    let t = b.receive(&stream, StreamFormat::Dms, false).unwrap();
    assert_eq!(b.read(t), want);
    a.check_clean();
}

/// The receiver holds snapshot 1; returns it and the incremental to 2.
fn base_pair() -> (Side, Side, Vec<u8>) {
    let a = sender();
    let b = side(SIZE);
    b.receive(
        &a.send(1, None, StreamFormat::Dms),
        StreamFormat::Dms,
        false,
    )
    .unwrap();
    let inc = a.send(2, Some(1), StreamFormat::Dms);
    (a, b, inc)
}

#[test]
fn a_cut_receive_resumes_with_its_token() {
    let (a, b, inc) = base_pair();
    let before = b.all();
    let cut = &inc[..inc.len() * 2 / 3];
    let e = b.receive(cut, StreamFormat::Dms, false).unwrap_err();
    let Error::Interrupted { token, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(e.kind(), ErrorKind::Io);
    assert_eq!(
        b.store.receive_token(O).unwrap().as_deref(),
        Some(&token[..])
    );
    // No snapshot yet, and the old one as it was.
    assert_eq!(b.store.tags(O).unwrap(), vec![1]);
    assert_eq!(b.read(1), before[1].1);
    // Another stream is refused while this one's receive is in progress.
    let other = a.send(2, Some(1), StreamFormat::Dms);
    let e2 = b.receive(&other, StreamFormat::Dms, false).unwrap_err();
    assert!(matches!(e2, Error::Busy { .. }), "{e2}");
    // The sender continues from the token.
    let mut rest = Vec::new();
    let opts = SendOptions {
        resume: Some(token.clone()),
        ..Default::default()
    };
    a.store
        .send(O, 0, &opts, &mut rest, &mut |_, _| {})
        .unwrap();
    assert!(rest.len() < inc.len());
    let t = b.receive(&rest, StreamFormat::Dms, false).unwrap();
    assert_eq!(b.read(t), a.read(2));
    assert_eq!(b.read(1), a.read(1));
    assert_eq!(b.store.receive_token(O).unwrap(), None);
    b.check_clean();
}

#[test]
fn the_whole_stream_again_continues_a_cut_receive() {
    let (a, b, inc) = base_pair();
    let e = b.receive(&inc[..inc.len() / 3], StreamFormat::Dms, false);
    assert!(matches!(e, Err(Error::Interrupted { .. })), "{e:?}");
    let t = b.receive(&inc, StreamFormat::Dms, false).unwrap();
    assert_eq!(b.read(t), a.read(2));
    b.check_clean();
}

#[test]
fn a_full_stream_into_a_fresh_origin_copies_nothing_out_and_an_abort_zeroes_it() {
    let a = sender();
    let full = a.send(1, None, StreamFormat::Dms);
    let b = side(SIZE);
    let empty = b.store.status().unwrap().used_chunks;
    // Cut short: what arrived is there, no copy-out was made for it (only
    // metadata pages).
    let e = b.receive(&full[..full.len() * 3 / 4], StreamFormat::Dms, false);
    assert!(matches!(e, Err(Error::Interrupted { .. })), "{e:?}");
    assert!(b.store.status().unwrap().used_chunks <= empty + 2);
    b.store.receive_abort(O).unwrap();
    assert!(
        b.read(0).iter().all(|&x| x == 0),
        "the abort zeroes the origin"
    );
    b.check_clean();
    // Damaged: refused, and the origin reads as zeros again by itself.
    let mut bad = full.clone();
    let at = bad.len() - 100;
    bad[at] ^= 1;
    let e = b.receive(&bad, StreamFormat::Dms, false);
    assert!(matches!(e, Err(Error::BadStream { .. })), "{e:?}");
    assert!(b.read(0).iter().all(|&x| x == 0));
    assert_eq!(b.store.receive_token(O).unwrap(), None);
    // Whole: the snapshot, and still nothing copied out.
    let t = b.receive(&full, StreamFormat::Dms, false).unwrap();
    assert_eq!(b.read(t), a.read(1));
    assert!(b.store.status().unwrap().used_chunks <= empty + 2);
    b.check_clean();
}

#[test]
fn a_cut_receive_survives_a_reopen_and_abort_puts_the_origin_back() {
    let a = sender();
    let cow = mem("cow", 8 << 20);
    let origin = mem("origin", SIZE);
    let store = Store::format(cow.clone(), &FormatOptions::default()).unwrap();
    store.bind(O, origin.clone()).unwrap();
    let b = Side { store };
    b.receive(
        &a.send(1, None, StreamFormat::Dms),
        StreamFormat::Dms,
        false,
    )
    .unwrap();
    let before = b.all();
    // A full stream of 2 into a store that has 1: it rewrites everything.
    let full = a.send(2, None, StreamFormat::Dms);
    let e = b.receive(&full[..full.len() / 2], StreamFormat::Dms, false);
    assert!(matches!(e, Err(Error::Interrupted { .. })), "{e:?}");
    b.store.flush().unwrap();
    drop(b);
    let store = Store::open(cow).unwrap();
    store.attach(O, origin).unwrap();
    let b = Side { store };
    assert!(b.store.receive_token(O).unwrap().is_some());
    b.store.receive_abort(O).unwrap();
    assert_eq!(b.all(), before);
    assert_eq!(b.store.receive_token(O).unwrap(), None);
    let e = b.store.receive_abort(O).unwrap_err();
    assert!(matches!(e, Error::NoReceive(_)), "{e}");
    b.check_clean();
}

#[test]
fn a_token_is_checked_against_the_senders_versions() {
    let (a, b, inc) = base_pair();
    let e = b.receive(&inc[..inc.len() / 2], StreamFormat::Dms, false);
    let Err(Error::Interrupted { token, .. }) = e else {
        panic!("{e:?}")
    };
    let send = |t: &str| {
        let opts = SendOptions {
            resume: Some(t.to_string()),
            ..Default::default()
        };
        a.store.send(O, 0, &opts, &mut Vec::new(), &mut |_, _| {})
    };
    for bad in ["", "dms1-00", "xyz", &token[..token.len() - 1]] {
        let e = send(bad).unwrap_err();
        assert!(matches!(e, Error::BadToken(_)), "{bad}: {e}");
    }
    // A token naming versions this store does not have.
    let mut t = Token::decode(&token).unwrap();
    t.target[0] ^= 1;
    let e = send(&t.encode()).unwrap_err();
    assert!(matches!(e, Error::BadToken(_)), "{e}");
    // The target written to since the stream began: its identity changed.
    a.write(2, 0, b"x");
    let e = send(&token).unwrap_err();
    assert!(matches!(e, Error::BadToken(_)), "{e}");
}

#[test]
fn a_stream_from_a_newer_format_or_with_unknown_required_features_is_refused() {
    let (_a, b, inc) = base_pair();
    let before = b.all();
    let mut newer = inc.clone();
    newer[8] = 2; // the version
    let e = b.receive(&newer, StreamFormat::Dms, false).unwrap_err();
    assert!(e.to_string().contains("version 2"), "{e}");
    let mut feat = inc.clone();
    feat[16] = 0x10; // a required feature bit
    let e = b.receive(&feat, StreamFormat::Dms, false).unwrap_err();
    assert!(e.to_string().contains("features"), "{e}");
    let e = b.receive(b"not a stream at all, really", StreamFormat::Dms, false);
    assert!(matches!(e, Err(Error::BadStream { .. })), "{e:?}");
    assert_eq!(b.all(), before);
    assert_eq!(b.store.receive_token(O).unwrap(), None);
}

/// Offsets of the records after the header: (start, total length).
fn records(stream: &[u8]) -> Vec<(usize, usize)> {
    let hlen = u32::from_le_bytes(stream[12..16].try_into().unwrap()) as usize;
    let mut at = hlen;
    let mut out = Vec::new();
    while at < stream.len() {
        let len = u32::from_le_bytes(stream[at + 4..at + 8].try_into().unwrap()) as usize;
        out.push((at, 8 + len + 32));
        at += 8 + len + 32;
    }
    out
}

#[test]
fn reordered_records_are_refused() {
    let (_a, b, inc) = base_pair();
    let before = b.all();
    let recs = records(&inc);
    assert!(recs.len() >= 3, "{recs:?}");
    let mut swapped = inc[..recs[0].0].to_vec();
    let (r0, r1) = (recs[0], recs[1]);
    swapped.extend_from_slice(&inc[r1.0..r1.0 + r1.1]);
    swapped.extend_from_slice(&inc[r0.0..r0.0 + r0.1]);
    swapped.extend_from_slice(&inc[r1.0 + r1.1..]);
    let e = b.receive(&swapped, StreamFormat::Dms, false).unwrap_err();
    assert!(matches!(e, Error::BadStream { .. }), "{e}");
    assert_eq!(b.all(), before);
    assert_eq!(b.store.receive_token(O).unwrap(), None);
}

#[test]
fn unknown_optional_records_are_skipped_and_unknown_required_ones_refused() {
    let (a, b, inc) = base_pair();
    // Insert a record of type 200 before the first one, re-chaining the
    // rest as a newer sender would have written it.
    let rechain = |kind_flags: (u8, u8)| -> Vec<u8> {
        let hlen = u32::from_le_bytes(inc[12..16].try_into().unwrap()) as usize;
        let mut h = blake3::Hasher::new();
        h.update(b"dms stream v1");
        h.update(&inc[..hlen]);
        let mut chain = *h.finalize().as_bytes();
        let mut out = inc[..hlen].to_vec();
        let mut push = |head: [u8; 8], payload: &[u8], out: &mut Vec<u8>| {
            let mut h = blake3::Hasher::new();
            h.update(&chain);
            h.update(&head);
            h.update(payload);
            chain = *h.finalize().as_bytes();
            out.extend_from_slice(&head);
            out.extend_from_slice(payload);
            out.extend_from_slice(&chain);
        };
        let mut head = [0u8; 8];
        head[0] = kind_flags.0;
        head[1] = kind_flags.1;
        head[4..8].copy_from_slice(&5u32.to_le_bytes());
        push(head, b"hello", &mut out);
        for (at, len) in records(&inc) {
            let head: [u8; 8] = inc[at..at + 8].try_into().unwrap();
            push(head, &inc[at + 8..at + len - 32], &mut out);
        }
        out
    };
    let e = b
        .receive(&rechain((200, 0)), StreamFormat::Dms, false)
        .unwrap_err();
    assert!(e.to_string().contains("must understand"), "{e}");
    let t = b
        .receive(&rechain((200, 1)), StreamFormat::Dms, false)
        .unwrap();
    assert_eq!(b.read(t), a.read(2));
}

/// Receive a damaged copy of `inc`: it must be refused (or, cut, leave a
/// token) with nothing visible changed; then the receiver is put back.
fn refused_and_unchanged(b: &Side, damaged: &[u8], before: &[(u32, Vec<u8>)]) {
    match b.receive(damaged, StreamFormat::Dms, false) {
        Ok(t) => panic!("a damaged stream was received as tag {t}"),
        Err(Error::Interrupted { .. }) => b.store.receive_abort(O).unwrap(),
        Err(e) => assert!(
            matches!(e, Error::BadStream { .. } | Error::WrongBase(_)),
            "{e}"
        ),
    }
    assert_eq!(b.all(), before);
    assert_eq!(b.store.receive_token(O).unwrap(), None);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn any_flipped_byte_is_refused(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let (_a, b, inc) = base_pair();
        let before = b.all();
        let mut d = inc.clone();
        let i = pos.index(d.len());
        d[i] ^= 1 << bit;
        refused_and_unchanged(&b, &d, &before);
        b.check_clean();
    }

    #[test]
    fn any_truncation_is_refused_or_resumable(pos in any::<prop::sample::Index>()) {
        let (a, b, inc) = base_pair();
        let before = b.all();
        let cut = pos.index(inc.len());
        let e = b.receive(&inc[..cut], StreamFormat::Dms, false).unwrap_err();
        assert_eq!(b.store.tags(O).unwrap(), vec![1]);
        assert_eq!(b.read(1), before[1].1);
        if let Error::Interrupted { token, .. } = e {
            let mut rest = Vec::new();
            let opts = SendOptions { resume: Some(token), ..Default::default() };
            a.store.send(O, 0, &opts, &mut rest, &mut |_, _| {}).unwrap();
            let t = b.receive(&rest, StreamFormat::Dms, false).unwrap();
            assert_eq!(b.read(t), a.read(2));
        } else {
            assert!(matches!(e, Error::BadStream { .. }), "{e}");
            assert_eq!(b.all(), before);
        }
        b.check_clean();
    }
}

#[test]
fn every_truncation_point_of_a_small_stream() {
    let a = side(64 * KIB);
    a.write(0, 0, &pattern(7, 64 * KIB));
    a.snap();
    let full = a.send(1, None, StreamFormat::Dms);
    for cut in 0..full.len() {
        let b = side(64 * KIB);
        let e = b
            .receive(&full[..cut], StreamFormat::Dms, false)
            .unwrap_err();
        assert!(
            matches!(e, Error::Interrupted { .. } | Error::BadStream { .. }),
            "cut at {cut}: {e}"
        );
        assert!(b.store.tags(O).unwrap().is_empty(), "cut at {cut}");
    }
}

#[test]
fn streams_read_from_a_pipe_in_small_pieces() {
    let a = sender();
    let full = a.send(2, None, StreamFormat::Dms);
    struct Dribble<'a>(&'a [u8]);
    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(777);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let b = side(SIZE);
    let r = b
        .store
        .receive(
            O,
            &ReceiveOptions::default(),
            &mut Dribble(&full),
            &mut |_, _| {},
        )
        .unwrap();
    assert_eq!(r.bytes, full.len() as u64);
    assert_eq!(b.read(r.tag), a.read(2));
}

/// Found trying it out: a send's frozen copies must go with the next
/// cleaning, and every snapshot then owns its copies again.
#[test]
fn a_sends_frozen_copies_go_with_the_next_cleaning() {
    let a = sender();
    let count = |s: &Side| {
        let st = s.store.status().unwrap();
        let o = st.origins.iter().find(|o| o.id == O).unwrap().clone();
        (
            o.versions,
            o.list
                .iter()
                .filter(|v| !v.ghost)
                .map(|v| (v.tag, v.exceptions))
                .collect::<Vec<_>>(),
        )
    };
    a.store.clean().unwrap();
    let before = count(&a);
    let tags = a.store.tags(O).unwrap();
    let _ = a.send(tags[1], Some(tags[0]), StreamFormat::Dms);
    let _ = a.send(tags[0], None, StreamFormat::RbdV2);
    assert!(a.store.cleaning_pending().unwrap());
    a.store.clean().unwrap();
    assert_eq!(count(&a), before);
}
