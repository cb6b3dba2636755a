// Synchronous tests on the test thread: no tokio worker to stall.
#![allow(clippy::disallowed_methods)]

use super::*;

/// Runs every conformance test against one backend.
macro_rules! conformance {
    ($backend:ident, $open:expr) => {
        mod $backend {
            use super::super::conformance as c;
            #[test]
            fn spool_orders_by_precedence_then_age_and_survives_reopen() {
                c::spool_orders_by_precedence_then_age_and_survives_reopen(&$open)
            }
            #[test]
            fn full_spool_evicts_non_persistent_lower_precedence_first() {
                c::full_spool_evicts_non_persistent_lower_precedence_first(&$open)
            }
            #[test]
            fn expired_entries_are_dropped_and_reported() {
                c::expired_entries_are_dropped_and_reported(&$open)
            }
            #[test]
            fn message_store_is_exactly_once() {
                c::message_store_is_exactly_once(&$open)
            }
            #[test]
            fn kv_lists_by_prefix() {
                c::kv_lists_by_prefix(&$open)
            }
            #[test]
            fn client_keys_answer_resends_with_the_first_id_until_their_window_ends() {
                c::client_keys_answer_resends_with_the_first_id_until_their_window_ends(&$open)
            }
            #[test]
            fn queue_store_applies_writes_durably_and_forgets_old_marks() {
                c::queue_store_applies_writes_durably_and_forgets_old_marks(&$open)
            }
        }
    };
}

conformance!(redb, |dir: &std::path::Path| crate::store::open(
    &crate::store::StoreConfig::default(),
    dir
)
.expect("open redb"));

#[test]
fn unknown_and_unbuilt_backends_are_refused_with_a_reason() {
    let dir = conformance::tmp();
    for (name, needle) in [("postgres", "not built yet"), ("sqlite", "unknown backend")] {
        let cfg = StoreConfig {
            backend: name.into(),
        };
        let e = open(&cfg, &dir).err().expect("refused").to_string();
        assert!(e.contains(needle), "{e}");
    }
    let c: StoreConfig = toml::from_str("").unwrap();
    assert_eq!(c.backend, "redb");
    assert!(toml::from_str::<StoreConfig>("backnd = \"redb\"").is_err());
}

#[test]
fn group_commit_answers_each_caller() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    rt.block_on(async {
        let g = GroupCommit::spawn("test", |reqs: Vec<u32>| {
            reqs.into_iter().map(|r| r * 2).collect()
        })
        .unwrap();
        let mut tasks = Vec::new();
        for i in 0..500u32 {
            let g = g.clone();
            tasks.push(tokio::spawn(async move { (i, g.submit(i).await.unwrap()) }));
        }
        for t in tasks {
            let (i, r) = t.await.unwrap();
            assert_eq!(r, i * 2);
        }
    });
}
