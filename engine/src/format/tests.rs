//! Unit tests of the on-disk encodings.

mod varint_tests {
    use crate::format::varint::*;

    #[test]
    fn round_trip() {
        let vals = [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX];
        let mut out = Vec::new();
        for v in vals {
            put(&mut out, v);
            assert_eq!(len(v), {
                let mut t = Vec::new();
                put(&mut t, v);
                t.len()
            });
        }
        for s in [0i64, -1, 1, i64::MIN, i64::MAX] {
            put_signed(&mut out, s);
        }
        let mut r = Reader::new(&out, 0, "test");
        for v in vals {
            assert_eq!(r.get().unwrap(), v);
        }
        for s in [0i64, -1, 1, i64::MIN, i64::MAX] {
            assert_eq!(r.get_signed().unwrap(), s);
        }
        assert!(r.at_end());
        assert!(r.get().is_err());
    }

    #[test]
    fn overlong_is_an_error() {
        let buf = [0xffu8; 11];
        assert!(Reader::new(&buf, 7, "test").get().is_err());
    }
}

mod superblock_tests {
    use crate::error::Error;
    use crate::format::Superblock;

    fn sample() -> Superblock {
        Superblock {
            generation: 7,
            chunk_pages: 4,
            page_count: 1000,
            uuid: [3; 16],
            exception_root: 10,
            catalog_root: 11,
            space_root: 12,
            next_origin: 2,
            data_chunks: 5,
            meta_pages: 9,
            created: 1234,
        }
    }

    #[test]
    fn round_trip_and_slot() {
        let sb = sample();
        let blk = sb.encode();
        assert_eq!(Superblock::decode(&blk, 1).unwrap(), sb);
        assert!(Superblock::decode(&blk, 0).is_err());
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let blk = sample().encode();
        for i in 0..200 {
            let mut b = blk.clone();
            b[i] ^= 0x40;
            assert!(matches!(
                Superblock::decode(&b, 1),
                Err(Error::Corrupt { block: 1, .. })
            ));
        }
    }
}
