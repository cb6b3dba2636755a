//! See [`rsnet_common::fuzzing::segment`]: the property, shared with the CI smoke test.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rsnet_common::fuzzing::segment(data));
