//! The properties of the fuzz targets whose parsers live in the node
//! crates, in CI on stable Rust, over their seeds and thousands of
//! mutations: `config` ([`rsnet_common::fuzzing::config`]: the three
//! nodes' config parsers, seeds `fuzz/seeds/config/`, the example configs)
//! and `local_messages` ([`rsnet_common::fuzzing::local_messages`]: the
//! proxy's local API body). (They live here, not with the other targets in
//! `common/tests/fuzz_smoke.rs`, because the node crates depend on common.)

use std::path::Path;

#[test]
fn config() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/config");
    rsnet_common::fuzzing::smoke(&dir, |data| {
        rsnet_common::fuzzing::config(data, rsnet_proxy::Config::parse);
        rsnet_common::fuzzing::config(data, rsnet_mlm::Config::parse);
        rsnet_common::fuzzing::config(data, rsnet_appserver::Config::parse);
    });
}

/// The `local_messages` target's property, over its seeds and mutations.
#[test]
fn local_messages() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/local_messages");
    rsnet_common::fuzzing::smoke(&dir, |data| {
        rsnet_common::fuzzing::local_messages(data, rsnet_proxy::local_api::parse_inputs)
    });
}
