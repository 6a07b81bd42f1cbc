use super::*;

fn birth(tag: u32, memo: &str) -> Birth {
    Birth {
        tag,
        birthday: 0,
        memo: memo.into(),
        uuid: [tag as u8; 16],
    }
}

#[test]
fn chain_of_origin_snapshots_runs_newest_to_oldest() {
    let mut t = VersionTree::new(0);
    let mut next = 1;
    let mut ch = vec![];
    let a = t
        .snapshot_origin(birth(1, "a"), &mut next, &mut ch)
        .unwrap();
    let b = t
        .snapshot_origin(birth(2, "b"), &mut next, &mut ch)
        .unwrap();
    assert_eq!(t.only_child(0), Some(b));
    assert_eq!(t.only_child(b), Some(a));
    assert_eq!(t.nearest(a, [0, b].into_iter()), Some(b));
    assert_eq!(t.nearest(a, [a, b].into_iter()), Some(a));
}

#[test]
fn snapshot_of_a_parent_makes_a_ghost() {
    let mut t = VersionTree::new(0);
    let mut next = 1;
    let mut ch = vec![];
    let a = t.snapshot_origin(birth(1, ""), &mut next, &mut ch).unwrap();
    let b = t.snapshot_of(a, birth(2, ""), &mut next, &mut ch).unwrap();
    assert_eq!(t.only_child(a), Some(b));
    let c = t.snapshot_of(a, birth(3, ""), &mut next, &mut ch).unwrap();
    let a2 = t.by_tag(1).unwrap();
    assert_ne!(a2, a);
    assert!(t.get(a).unwrap().is_ghost());
    assert_eq!(t.get(a).unwrap().children, vec![b, a2, c]);
    // Delete two of the three: the ghost then merges into the survivor.
    t.untag(2);
    t.untag(3);
    let plan = t.plan_cleaning(false);
    assert_eq!(plan.get(&b), Some(&None));
    assert_eq!(plan.get(&c), Some(&None));
    assert_eq!(plan.get(&a), Some(&Some(a2)));
}

#[test]
fn a_zero_map_record_round_trips_and_bad_runs_are_refused() {
    use crate::btree::Codec;
    use crate::format::varint::Reader;
    use crate::versions::record::{zero_runs_len, CatValue, CatalogCodec};
    let runs = vec![(0, 1), (5, 300), (1 << 40, 1 << 20)];
    let mut out = Vec::new();
    CatalogCodec::put_value(None, &CatValue::Zeros(runs.clone()), &mut out);
    assert_eq!(out.len(), 2 + zero_runs_len(&runs));
    let back = CatalogCodec::get_value(None, &mut Reader::new(&out, 9, "catalog")).unwrap();
    assert_eq!(back, CatValue::Zeros(runs));
    let decode = |b: &[u8]| CatalogCodec::get_value(None, &mut Reader::new(b, 9, "catalog"));
    // Runs that touch (gap 0 after the first), one past 2^60, cut short.
    assert!(decode(&[8, 2, 0, 0, 0, 0]).is_err());
    let mut far = vec![8, 1];
    crate::format::varint::put(&mut far, 1 << 60);
    far.push(0);
    assert!(decode(&far).is_err());
    assert!(decode(&[8, 3, 0, 0]).is_err());
}
