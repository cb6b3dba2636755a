//! The header part: the hand-written reader every hop runs on every message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rsnet_common::envelope::wire::{decode_header, encode_header};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = decode_header(data) {
        let xml = encode_header(&h);
        assert_eq!(decode_header(xml.as_bytes()).as_ref(), Ok(&h), "{xml}");
    }
});
