//! The example configs in `deploy/configs/` are what users copy: each must
//! load and validate with the binary's own loader.

use std::path::Path;

fn file(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/configs")
        .join(name)
}

#[test]
fn example_configs_load() {
    let p = rsnet_proxy::Config::load(&file("proxy.toml")).expect("proxy.toml");
    assert_eq!(p.inbox.lease_s, 60);
    assert_eq!(p.uplink.poll_wait_ms, 25_000);
    let m = rsnet_mlm::Config::load(&file("mlm.toml")).expect("mlm.toml");
    assert_eq!(m.backchannel.lease_ms, 30_000);
    let a = rsnet_appserver::Config::load(&file("appserver.toml")).expect("appserver.toml");
    assert_eq!(a.backchannel.max_wait_ms, 30_000);
}
