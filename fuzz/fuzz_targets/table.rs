//! The dm-snap-mv table and message strings, as a user types them: never a
//! panic; whatever parses prints back to a line that parses the same.
#![no_main]

use dms_engine::table::{
    parse_message, parse_target, quote, split_words, Table,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Table::parse(line);
    let Ok(words) = split_words(line) else {
        return;
    };
    // Quoting every word and splitting again gives the same words.
    let joined: Vec<String> = words.iter().map(|w| quote(w)).collect();
    assert_eq!(split_words(&joined.join(" ")).unwrap(), words, "{line:?}");
    if let Ok(t) = parse_target(&words) {
        let printed = t.to_string();
        let again = parse_target(&split_words(&printed).unwrap());
        assert_eq!(again.as_ref(), Ok(&t), "{line:?} printed as {printed:?}");
    }
    let _ = parse_message(&words);
});
