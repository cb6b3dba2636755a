//! See [`rsnet_common::fuzzing::config`]: the property, shared with the CI
//! smoke test (`tests/tests/fuzz_config.rs`), over the three nodes' configs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rsnet_common::fuzzing::config(data, rsnet_proxy::Config::parse);
    rsnet_common::fuzzing::config(data, rsnet_mlm::Config::parse);
    rsnet_common::fuzzing::config(data, rsnet_appserver::Config::parse);
});
