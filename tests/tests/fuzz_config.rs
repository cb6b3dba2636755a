//! The `config` fuzz target's property ([`rsnet_common::fuzzing::config`])
//! in CI, on stable Rust: the three nodes' config parsers over the seed
//! corpus (`fuzz/seeds/config/`, the example configs) and thousands of
//! mutations of it. (It lives here, not with the other targets in
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
