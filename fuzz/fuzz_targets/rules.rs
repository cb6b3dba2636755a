//! A rules file (operator input, and the payload of a `config` release at
//! an MLM): checked with file:line errors, never a panic; whatever passes
//! the checks compiles into a rule set for both node kinds' checks.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rsnet_common::pipeline::rules::{load_text, NodeKind, RuleSource};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("rules.toml");
    let src = RuleSource::File(path.to_path_buf());
    for node in [NodeKind::Mlm, NodeKind::Proxy] {
        match load_text(&src, path, text, node) {
            Ok(_) => {}
            Err(e) => assert!(
                e.problems.iter().all(|p| p.starts_with("rules.toml:")),
                "{e}"
            ),
        }
    }
});
