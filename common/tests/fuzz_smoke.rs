//! The fuzz targets' properties ([`rsnet_common::fuzzing`]) in CI, on
//! stable Rust: each runs over its seed corpus (`fuzz/seeds/TARGET/`) and
//! a few thousand random mutations of it (bytes flipped, cut, repeated and
//! spliced, from a fixed seed, so a failure repeats). Longer runs are for
//! `cargo +nightly fuzz run TARGET` (see `fuzz/`).

use std::path::Path;

fn smoke(target: &str, property: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    rsnet_common::fuzzing::smoke(&dir, property);
}

#[test]
fn header() {
    smoke("header", rsnet_common::fuzzing::header);
}

#[test]
fn control() {
    smoke("control", rsnet_common::fuzzing::control);
}

#[test]
fn content() {
    smoke("content", rsnet_common::fuzzing::content);
}

#[test]
fn envelope() {
    smoke("envelope", rsnet_common::fuzzing::envelope);
}

#[test]
fn transfer() {
    smoke("transfer", rsnet_common::fuzzing::transfer);
}

#[test]
fn rules() {
    smoke("rules", rsnet_common::fuzzing::rules);
}

#[test]
fn inflate() {
    smoke("inflate", rsnet_common::fuzzing::inflate);
}

#[test]
fn lean_h1() {
    smoke("lean_h1", rsnet_common::fuzzing::lean_h1);
}

#[test]
fn segment() {
    smoke("segment", rsnet_common::fuzzing::segment);
}
