//! See [`rsnet_common::fuzzing::control`]: the property, shared with the CI smoke test.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rsnet_common::fuzzing::control(data));
