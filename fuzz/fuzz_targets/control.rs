//! The control part `<exchange>`: acks, wait hint and hop answers.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rsnet_common::envelope::wire::{decode_control, encode_control};

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = decode_control(data) {
        let xml = encode_control(&c);
        assert_eq!(decode_control(xml.as_bytes()).as_ref(), Ok(&c), "{xml}");
    }
});
