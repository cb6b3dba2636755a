//! What a node binary sets up for its process before anything else: the
//! allocator and the kernel's memory behaviour. The proxy, MLM and
//! appserver install [`Allocator`] as their `#[global_allocator]` and call
//! [`no_huge_pages`] first thing in `main`; libraries, tests and fuzz
//! targets keep the system allocator (so the sanitizers see fuzzed
//! allocations).

/// The memory allocator the three node binaries install as their global
/// allocator (`#[global_allocator]` in each `main.rs`).
///
/// mimalloc, not the system's: a message is allocated on one thread (a
/// connection's task) and freed on another (the store writer, the
/// forwarder), and glibc's malloc spent a third of the proxy's CPU on that
/// traffic under load (`docs/BENCHMARKS.md`, "Issue 13, session 6").
pub type Allocator = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process; the node binaries
/// call it first thing in `main`.
///
/// The allocator asks for huge pages on its arenas, and the kernel then
/// zeroes 2 MiB on the first touch of each, again after every purge: the
/// exchange buffers and store runs that come and go with each batch made
/// page faults a tenth of the proxy's and a fifth of the appserver's CPU.
/// Without huge pages a fault zeroes the 4 KiB touched.
#[allow(unsafe_code)]
pub fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory
    // of this process; it sets a flag the kernel reads at page-fault time.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}
