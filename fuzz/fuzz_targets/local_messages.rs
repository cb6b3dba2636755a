//! See [`rsnet_common::fuzzing::local_messages`]: the proxy's local API
//! reading a `POST /v1/messages` body.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rsnet_common::fuzzing::local_messages(data, rsnet_proxy::local_api::parse_inputs);
});
