//! Content parts of every kind (the first byte picks the expected kind).
#![no_main]
use libfuzzer_sys::fuzz_target;
use rsnet_common::envelope::wire::{decode_content, encode_content};
use rsnet_common::model::ContentKind;

fuzz_target!(|data: &[u8]| {
    let Some((&k, xml)) = data.split_first() else {
        return;
    };
    let kind = ContentKind::ALL[k as usize % ContentKind::ALL.len()];
    if let Ok(c) = decode_content(xml, kind) {
        let again = encode_content(&c);
        assert_eq!(
            decode_content(again.as_bytes(), kind).as_ref(),
            Ok(&c),
            "{again}"
        );
    }
});
