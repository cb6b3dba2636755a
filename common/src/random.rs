//! Random bytes from the OS, drawn 4 KiB at a time per thread.
//!
//! Message IDs and MIME boundaries need a few unpredictable bytes each, and
//! a node makes thousands a second: one `getrandom` call per ID was 4 % of a
//! proxy's CPU, and one per envelope boundary was a third of an MLM's
//! system calls under the fan-in of 1,000 children. The pool asks the OS
//! once per 4 KiB instead. Its bytes are the OS's (ring's `SystemRandom`),
//! handed out once each.

use ring::rand::SecureRandom;

const POOL_BYTES: usize = 4096;

struct Pool {
    buf: [u8; POOL_BYTES],
    at: usize,
}

thread_local! {
    static POOL: std::cell::RefCell<Pool> = const {
        std::cell::RefCell::new(Pool { buf: [0; POOL_BYTES], at: POOL_BYTES })
    };
}

/// Fills `out` (at most 4 KiB) with OS randomness; `false` if the OS gave
/// none (then `out` is left as it was).
pub fn fill(out: &mut [u8]) -> bool {
    if out.len() > POOL_BYTES {
        return ring::rand::SystemRandom::new().fill(out).is_ok();
    }
    POOL.with(|p| {
        let Ok(mut p) = p.try_borrow_mut() else {
            return ring::rand::SystemRandom::new().fill(out).is_ok();
        };
        if p.at + out.len() > POOL_BYTES {
            if ring::rand::SystemRandom::new().fill(&mut p.buf).is_err() {
                return false;
            }
            p.at = 0;
        }
        let at = p.at;
        out.copy_from_slice(&p.buf[at..at + out.len()]);
        // Each byte is handed out once.
        p.at += out.len();
        true
    })
}

/// Eight bytes of OS randomness, or `None` if the OS gives none.
pub fn u64() -> Option<u64> {
    let mut b = [0u8; 8];
    fill(&mut b).then(|| u64::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_never_repeat_across_refills_and_large_asks_work() {
        let mut seen = std::collections::HashSet::new();
        // 3 pools' worth of 16-byte draws: a repeat would mean a byte run
        // handed out twice.
        for _ in 0..(3 * POOL_BYTES / 16) {
            let mut b = [0u8; 16];
            assert!(fill(&mut b));
            assert!(seen.insert(b), "a 16-byte draw repeated");
        }
        let mut big = vec![0u8; 3 * POOL_BYTES];
        assert!(fill(&mut big));
        assert!(big.iter().any(|b| *b != 0));
        assert_ne!(u64(), u64());
    }
}
