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

#[test]
fn the_example_rules_file_loads_at_an_mlm_and_not_at_a_proxy() {
    use rsnet_common::pipeline::rules::{load, NodeKind, RuleSource};
    let src = RuleSource::File(file("rules.toml"));
    let rules = load(&src, NodeKind::Mlm).expect("rules.toml");
    let actions: Vec<&str> = rules.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["filter", "modify", "aggregate", "filter"]);
    // A proxy runs neither aggregates nor back-channel rules: refused, named.
    let e = load(&src, NodeKind::Proxy).unwrap_err().to_string();
    assert!(
        e.contains("rules.toml:") && e.contains("runs at an MLM"),
        "{e}"
    );
}
