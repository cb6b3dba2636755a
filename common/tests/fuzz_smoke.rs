//! The fuzz targets' properties ([`rsnet_common::fuzzing`]) in CI, on
//! stable Rust: each runs over its seed corpus (`fuzz/seeds/TARGET/`) and
//! a few thousand random mutations of it (bytes flipped, cut, repeated and
//! spliced, from a fixed seed, so a failure repeats). Longer runs are for
//! `cargo +nightly fuzz run TARGET` (see `fuzz/`).

use std::path::Path;

const MUTATIONS: usize = 3000;

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    let mut v: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.truncate(200);
    assert!(!v.is_empty(), "no seeds in {}", dir.display());
    v
}

fn mutate(rng: &mut fastrand::Rng, pool: &[Vec<u8>]) -> Vec<u8> {
    let mut b = pool[rng.usize(..pool.len())].clone();
    for _ in 0..rng.usize(1..6) {
        match rng.u8(..5) {
            0 if !b.is_empty() => {
                let i = rng.usize(..b.len());
                b[i] = rng.u8(..);
            }
            1 if !b.is_empty() => {
                let i = rng.usize(..b.len());
                b.truncate(i);
            }
            2 if !b.is_empty() => {
                let (i, j) = (rng.usize(..b.len()), rng.usize(..b.len()));
                let (lo, hi) = (i.min(j), i.max(j));
                let chunk = b[lo..hi].to_vec();
                b.splice(hi..hi, chunk);
            }
            3 => {
                let other = &pool[rng.usize(..pool.len())];
                if !other.is_empty() {
                    let i = rng.usize(..other.len());
                    b.extend_from_slice(&other[i..]);
                }
            }
            _ => b.insert(rng.usize(..=b.len()), rng.u8(..)),
        }
    }
    b
}

fn smoke(target: &str, property: fn(&[u8])) {
    let pool = seeds(target);
    for s in &pool {
        property(s);
    }
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for _ in 0..MUTATIONS {
        property(&mutate(&mut rng, &pool));
    }
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
