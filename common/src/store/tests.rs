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
            fn message_scans_resume_after_any_sequence_number() {
                c::message_scans_resume_after_any_sequence_number(&$open)
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
            #[test]
            fn queue_state_is_written_in_the_commit_whether_or_not_the_offer_fits() {
                c::queue_state_is_written_in_the_commit_whether_or_not_the_offer_fits(&$open)
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

/// The segment spool's own promises: what a crash, a torn write, a pinned
/// old message or a second process can do to it.
mod segment {
    use std::collections::HashSet;
    use std::path::{Path, PathBuf};

    use bytes::Bytes;

    use super::super::conformance::tmp;
    use super::super::segment::SegmentSpool;
    use super::super::*;

    /// A record whose content is `body` (bytes, not only text).
    fn rec(precedence: u8, persistent: bool, body: &[u8]) -> SpoolRecord {
        SpoolRecord {
            content: Bytes::copy_from_slice(body),
            ..super::super::conformance::rec(precedence, persistent, "")
        }
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        v.sort();
        v
    }

    fn all(s: &SegmentSpool) -> Vec<(SpoolKey, SpoolRecord)> {
        s.peek(usize::MAX, &HashSet::new(), Timestamp::now())
            .unwrap()
            .entries
    }

    /// Every cut of the file after a series of commits, as a crash at that
    /// byte would leave it: the spool opens with exactly the commits whose
    /// frame was whole, and takes new ones after.
    #[test]
    fn a_crash_at_any_byte_keeps_exactly_the_whole_commits() {
        let dir = tmp();
        // After each commit: where its frame ends, and what the spool holds.
        let mut after: Vec<(u64, HashSet<MessageId>)> = Vec::new();
        {
            let s = SegmentSpool::open(&dir, 1 << 20).unwrap();
            let mut snapshot = |s: &SegmentSpool| {
                s.swept();
                let end = std::fs::metadata(&segments(&dir)[0]).unwrap().len();
                after.push((end, all(s).into_iter().map(|(_, r)| r.id).collect()));
            };
            for i in 0..6u8 {
                let r: Vec<_> = (0..3)
                    .map(|k| rec(i % 3, true, &[b'a' + i, b'0' + k]))
                    .collect();
                let keys = s.push(r).unwrap();
                assert!(keys.iter().all(|k| k.is_ok()));
                snapshot(&s);
                if i == 3 {
                    // A commit that removes, and one that removes and pushes.
                    let held = all(&s);
                    s.remove(&[held[0].0, held[4].0]).unwrap();
                    snapshot(&s);
                    s.write(vec![rec(9, false, b"urgent")], &[held[1].0])
                        .unwrap();
                    snapshot(&s);
                }
            }
        }
        assert_eq!(segments(&dir).len(), 1);
        let file = segments(&dir)[0].clone();
        let whole = std::fs::read(&file).unwrap();
        assert_eq!(after.last().unwrap().0, whole.len() as u64);
        for cut in 0..=whole.len() as u64 {
            let copy = tmp();
            std::fs::write(copy.join(file.file_name().unwrap()), &whole[..cut as usize]).unwrap();
            let s = SegmentSpool::open(&copy, 1 << 20).unwrap();
            let expect = after
                .iter()
                .rev()
                .find(|(end, _)| *end <= cut)
                .map(|(_, ids)| ids.clone())
                .unwrap_or_default();
            let got: HashSet<MessageId> = all(&s).into_iter().map(|(_, r)| r.id).collect();
            assert_eq!(got, expect, "cut at {cut} of {}", whole.len());
            assert_eq!(s.stats().messages as usize, expect.len());
            // It takes new commits after the cut, and keeps them.
            let r = rec(5, true, b"after");
            let id = r.id;
            s.push(vec![r]).unwrap();
            drop(s);
            let s = SegmentSpool::open(&copy, 1 << 20).unwrap();
            let got: HashSet<MessageId> = all(&s).into_iter().map(|(_, r)| r.id).collect();
            assert!(
                got.contains(&id) && got.len() == expect.len() + 1,
                "cut at {cut}"
            );
            drop(s);
            std::fs::remove_dir_all(copy).unwrap();
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn damage_in_a_segment_other_than_the_last_is_refused_by_name() {
        let dir = tmp();
        {
            let s = SegmentSpool::open_sized(&dir, 1 << 30, 4096).unwrap();
            for _ in 0..4 {
                s.push(vec![rec(4, true, &[b'x'; 3000])]).unwrap();
            }
        }
        let segs = segments(&dir);
        assert!(segs.len() >= 3, "{segs:?}");
        let mut bytes = std::fs::read(&segs[0]).unwrap();
        let n = bytes.len();
        bytes[n - 10] ^= 0xff;
        std::fs::write(&segs[0], bytes).unwrap();
        let err = SegmentSpool::open_sized(&dir, 1 << 30, 4096)
            .err()
            .expect("refused");
        let msg = err.to_string();
        assert!(
            msg.contains(&*segs[0].file_name().unwrap().to_string_lossy()),
            "{msg}"
        );
        assert!(msg.contains("corrupt"), "{msg}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_second_process_cannot_open_a_spool_in_use() {
        let dir = tmp();
        let s = SegmentSpool::open(&dir, 1 << 20).unwrap();
        let err = SegmentSpool::open(&dir, 1 << 20).err().expect("refused");
        assert!(err.to_string().contains("in use"), "{err}");
        drop(s);
        SegmentSpool::open(&dir, 1 << 20).expect("free again");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Spent segments are deleted; a few long-lived messages in the oldest
    /// one are copied forward rather than keep every later segment alive;
    /// a client key outlives the segment of its message. All of it holds
    /// across a reopen.
    #[test]
    fn spent_segments_go_and_a_pinned_one_is_compacted_keeping_its_messages_and_keys() {
        let dir = tmp();
        let seg = 64 * 1024;
        let now = Timestamp::now();
        let (pinned_id, keyed_id);
        {
            let s = SegmentSpool::open_sized(&dir, 1 << 30, seg).unwrap();
            // A message that stays (a throttle holds it) and a keyed one that is delivered.
            let pinned = rec(0, true, b"pinned");
            pinned_id = pinned.id;
            let keyed = rec(4, true, b"keyed");
            keyed_id = keyed.id;
            let key = ClientKey {
                key: "order-1".into(),
                until: now.after(std::time::Duration::from_secs(3600)),
            };
            let r = s
                .write_keyed(vec![(pinned, None), (keyed, Some(key))], &[], now)
                .unwrap();
            let Ok(Pushed::New(keyed_key)) = r[1] else {
                panic!("{r:?}")
            };
            s.remove(&[keyed_key]).unwrap();
            // Traffic that comes and goes: 40 segments' worth.
            for i in 0..400u32 {
                let r = s.push(vec![rec(5, true, &[b'y'; 6000])]).unwrap();
                let Ok(k) = r[0] else { panic!("{r:?}") };
                s.remove(&[k]).unwrap();
                s.swept();
                assert!(segments(&dir).len() <= 6, "after {i}: {:?}", segments(&dir));
            }
            let first = segments(&dir)[0].clone();
            assert_ne!(
                first.file_name().unwrap(),
                "0000000000000001.seg",
                "compacted away"
            );
        }
        let s = SegmentSpool::open_sized(&dir, 1 << 30, seg).unwrap();
        let left = all(&s);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].1.id, pinned_id);
        assert_eq!(&left[0].1.content[..], b"pinned");
        let r = s
            .write_keyed(
                vec![(
                    rec(4, true, b"resent"),
                    Some(ClientKey {
                        key: "order-1".into(),
                        until: now.after(std::time::Duration::from_secs(3600)),
                    }),
                )],
                &[],
                now,
            )
            .unwrap();
        assert_eq!(r[0].as_ref().unwrap(), &Pushed::Repeat(keyed_id));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A backlog of several segments sent and removed in order: every
    /// commit only adds removal marks, nothing is copied forward.
    #[test]
    fn a_backlog_drained_in_order_is_never_copied() {
        let dir = tmp();
        let s = SegmentSpool::open_sized(&dir, 1 << 30, 64 * 1024).unwrap();
        for _ in 0..60 {
            s.push((0..10).map(|_| rec(4, true, &[b'z'; 1000])).collect())
                .unwrap();
        }
        let disk = |d: &Path| -> u64 {
            s.swept();
            segments(d)
                .iter()
                .map(|p| std::fs::metadata(p).unwrap().len())
                .sum()
        };
        assert!(segments(&dir).len() >= 8, "{:?}", segments(&dir));
        let mut before = disk(&dir);
        let held = all(&s);
        for chunk in held.chunks(20) {
            let keys: Vec<SpoolKey> = chunk.iter().map(|(k, _)| *k).collect();
            s.remove(&keys).unwrap();
            let now = disk(&dir);
            assert!(now <= before + 20 * 10 + 12, "{now} after {before}: copied");
            before = now;
        }
        assert_eq!(s.stats().messages, 0);
        s.swept();
        assert!(segments(&dir).len() <= 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A spent segment is renamed aside and cut down before it is
    /// unlinked; one a crash left aside (`N.dead`, even shortened mid-frame)
    /// is deleted at open, unread, and what is live stays as it was.
    #[test]
    fn a_segment_left_aside_by_a_crash_mid_deletion_is_deleted_unread() {
        let dir = tmp();
        let s = SegmentSpool::open_sized(&dir, 1 << 30, 64 * 1024).unwrap();
        for _ in 0..30 {
            s.push((0..10).map(|_| rec(4, true, &[b'z'; 1000])).collect())
                .unwrap();
        }
        let held = all(&s);
        let keys: Vec<SpoolKey> = held[..200].iter().map(|(k, _)| *k).collect();
        s.remove(&keys).unwrap();
        s.swept();
        let names = || -> Vec<String> {
            std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        };
        assert!(
            !names().iter().any(|n| n.ends_with(".dead")),
            "{:?}",
            names()
        );
        let live = all(&s);
        assert_eq!(live.len(), 100);
        drop(s);
        // As a crash while cutting one down would leave it: renamed, and
        // torn in the middle of a frame (replayed, that would be refused).
        let oldest = segments(&dir)[0].clone();
        let aside = oldest.with_extension("dead");
        std::fs::copy(&oldest, &aside).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&aside)
            .unwrap();
        f.set_len(std::fs::metadata(&aside).unwrap().len() / 2 + 7)
            .unwrap();
        let garbage = dir.join("0000000000000000.dead");
        std::fs::write(&garbage, b"not a segment").unwrap();
        let s = SegmentSpool::open_sized(&dir, 1 << 30, 64 * 1024).unwrap();
        assert_eq!(all(&s), live);
        assert!(
            !names().iter().any(|n| n.ends_with(".dead")),
            "{:?}",
            names()
        );
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// More than the memory cache holds: bodies come back from the files,
    /// the same bytes, in order, before and after a reopen.
    #[test]
    fn bodies_beyond_the_cache_are_read_back_from_disk() {
        let dir = tmp();
        let body = |i: u32| format!("{i:08}").repeat(1 << 14).into_bytes(); // 128 KiB
        let n = (super::super::segment::CACHE_BYTES / (128 << 10)) as u32 + 120;
        {
            let s = SegmentSpool::open(&dir, 1 << 34).unwrap();
            for chunk in (0..n).collect::<Vec<_>>().chunks(16) {
                s.push(chunk.iter().map(|i| rec(4, true, &body(*i))).collect())
                    .unwrap();
            }
            let got = all(&s);
            assert_eq!(got.len(), n as usize);
            for (i, (_, r)) in got.iter().enumerate() {
                assert!(r.content[..] == body(i as u32)[..], "{i}");
            }
            // Gaps: every seventh leaves (read around, not through).
            let gone: Vec<SpoolKey> = got.iter().step_by(7).map(|(k, _)| *k).collect();
            s.remove(&gone).unwrap();
        }
        let kept: Vec<u32> = (0..n).filter(|i| i % 7 != 0).collect();
        let n = kept.len() as u32;
        let body = |i: u32| body(kept[i as usize]);
        let s = SegmentSpool::open(&dir, 1 << 34).unwrap();
        // A limit counts what is read from disk like what is in memory.
        let skip: HashSet<SpoolKey> = all(&s).into_iter().take(260).map(|(k, _)| k).collect();
        let some = s.peek(10, &skip, Timestamp::now()).unwrap().entries;
        assert_eq!(some.len(), 10);
        assert!(some[9].1.content[..] == body(269)[..]);
        assert!(some[0].1.content[..] == body(260)[..]);
        let got = all(&s);
        assert_eq!(got.len(), n as usize);
        for (i, (_, r)) in got.iter().enumerate() {
            assert!(r.content[..] == body(i as u32)[..], "{i}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
