use super::*;

fn w(s: &str) -> Vec<String> {
    split_words(s).unwrap()
}

#[test]
fn origin_targets() {
    assert_eq!(
        parse_target(&w("co sdb1 sdc1 -bF -c 4")).unwrap(),
        Target::Origin {
            origin_dev: "sdb1".into(),
            cow_dev: "sdc1".into(),
            origin_id: None,
            bind: true,
            format: Some(Format::Force),
            chunk_pages: Some(4)
        }
    );
    let t = parse_target(&w("co /dev/a /dev/b -i 'my disk' -b")).unwrap();
    assert_eq!(t.origin_id(), "my disk");
    assert_eq!(t.to_string(), "co /dev/a /dev/b -i 'my disk' -b");
    assert!(parse_target(&w("co a b -f -F -b")).is_err());
    assert!(parse_target(&w("co a b -F")).is_err(), "-F without -b");
    assert!(parse_target(&w("co a b -b -c 4")).is_err(), "-c without -f");
    assert!(parse_target(&w("co a b -bF -c 3")).is_err(), "chunk size 3");
    assert!(
        parse_target(&w("co a b -bF -c 128")).is_err(),
        "chunk size 128"
    );
    assert!(parse_target(&w("co a")).is_err());
    assert!(parse_target(&w("co a b c")).is_err());
    assert!(parse_target(&w("co a b -x")).is_err());
}

#[test]
fn snapshot_targets_and_tables() {
    let Table { sectors, target: t } = Table::parse("0 2048 dm-snap-mv cs sdb1 sdc1 2").unwrap();
    assert_eq!(sectors, 2048);
    assert_eq!(t.tag(), 2);
    assert_eq!(t.origin_id(), "sdb1");
    assert!(Table::parse("0 2048 snapshot cs a b 1").is_err());
    assert!(Table::parse("5 2048 dm-snap-mv cs a b 1").is_err());
    assert!(parse_target(&w("cs a b x")).is_err());
    assert!(parse_target(&w("cs a b 1 -b")).is_err());
}

#[test]
fn messages() {
    assert_eq!(
        parse_message(&w("so -m nightly")).unwrap(),
        Message::SnapshotOrigin {
            memo: "nightly".into()
        }
    );
    assert_eq!(
        parse_message(&w("so")).unwrap(),
        Message::SnapshotOrigin {
            memo: String::new()
        }
    );
    assert_eq!(
        parse_message(&w("ss 1 -m 'a b'")).unwrap(),
        Message::SnapshotOf {
            tag: 1,
            memo: "a b".into()
        }
    );
    assert_eq!(
        parse_message(&w("ss 0")).unwrap(),
        Message::SnapshotOf {
            tag: 0,
            memo: String::new()
        }
    );
    assert_eq!(
        parse_message(&w("rs 2 -b")).unwrap(),
        Message::Rollback {
            tag: 2,
            background: true
        }
    );
    assert_eq!(
        parse_message(&w("ds 3")).unwrap(),
        Message::DeleteSnapshot { tag: 3 }
    );
    assert_eq!(parse_message(&w("do")).unwrap(), Message::DeleteOrigin);
    for bad in [
        "",
        "xx",
        "ss",
        "ss a",
        "ds",
        "rs",
        "do 1",
        "so 1",
        "ds 1 -m x",
        "so -b",
        "ss -1",
    ] {
        assert!(parse_message(&w(bad)).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn quoting() {
    assert_eq!(w(r#"a "b c" 'd e' f"#), vec!["a", "b c", "d e", "f"]);
    assert!(split_words("a 'b").is_err());
    assert_eq!(quote("x y"), "'x y'");
    assert_eq!(quote(""), "''");
    // An origin id that looks like an option is refused, not misread.
    for bad in ["co a b -i -b", "co a b -i-cA", "cs a b 1 -i -x"] {
        let e = parse_target(&w(bad)).unwrap_err();
        assert!(e.0.contains("cannot start with '-'"), "{bad}: {e}");
    }
    // A word with both kinds of quote survives the trip through a line.
    for word in [r#"it's "x""#, "'", r#"""#, r#"'"'"#, "a' b"] {
        let line = format!("co {} b", quote(word));
        assert_eq!(split_words(&line).unwrap(), vec!["co", word, "b"], "{line}");
    }
}

#[test]
fn a_table_line_prints_back_as_it_parses() {
    for line in [
        "0 2048 dm-snap-mv cs sdb1 sdc1 2",
        "0 8 dm-snap-mv co '/dev/my disk' /dev/c -i 'it'\"'\"'s' -b -F -c 4",
        "0 1 dm-snap-mv co a b -b -f",
    ] {
        let t = Table::parse(line).unwrap();
        let printed = t.to_string();
        assert_eq!(Table::parse(&printed).unwrap(), t, "{line} -> {printed}");
    }
    assert_eq!(
        Table::parse("0 2048 dm-snap-mv cs sdb1 sdc1 2")
            .unwrap()
            .to_string(),
        "0 2048 dm-snap-mv cs sdb1 sdc1 2"
    );
}
