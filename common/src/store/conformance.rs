//! The conformance suite: what every backend of the store traits must do,
//! written once against the traits. `tests.rs` runs it for each backend
//! (today: redb); a new backend passes it unchanged before it is used.
// Synchronous tests on the test thread: no tokio worker to stall.
#![allow(clippy::disallowed_methods)]

use std::collections::HashSet;
use std::path::Path;

use bytes::Bytes;

use super::*;

pub fn rec(precedence: u8, persistent: bool, body: &str) -> SpoolRecord {
    SpoolRecord {
        id: MessageId::new(),
        precedence,
        persistent,
        expiry: None,
        header: Bytes::from_static(b"<header/>"),
        content: Bytes::copy_from_slice(body.as_bytes()),
    }
}

/// Opens (or reopens) a backend whose data lives at a path.
pub type Open = dyn Fn(&Path) -> Arc<dyn Backend>;

/// A fresh directory.
pub fn tmp() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("rsnet-store-{}", MessageId::new()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn bodies(p: &Peeked) -> Vec<String> {
    p.entries
        .iter()
        .map(|(_, r)| String::from_utf8(r.content.to_vec()).unwrap())
        .collect()
}

pub fn spool_orders_by_precedence_then_age_and_survives_reopen(open: &Open) {
    let dir = tmp();
    {
        let s = open(&dir).spool(1 << 20).unwrap();
        let r = s
            .push(vec![
                rec(4, true, "a"),
                rec(9, true, "b"),
                rec(4, true, "c"),
                rec(0, true, "d"),
            ])
            .unwrap();
        assert!(r.iter().all(|r| r.is_ok()));
        let p = s.peek(10, &HashSet::new(), Timestamp::now()).unwrap();
        assert_eq!(bodies(&p), ["b", "a", "c", "d"]);
        s.remove(&[p.entries[0].0]).unwrap();
    }
    let s = open(&dir).spool(1 << 20).unwrap();
    assert_eq!(s.stats().messages, 3);
    let p = s.peek(10, &HashSet::new(), Timestamp::now()).unwrap();
    assert_eq!(bodies(&p), ["a", "c", "d"]);
    // New pushes after reopen keep sorting after the old ones.
    s.push(vec![rec(4, true, "e")]).unwrap();
    let skip: HashSet<_> = [p.entries[0].0].into();
    assert_eq!(
        bodies(&s.peek(10, &skip, Timestamp::now()).unwrap()),
        ["c", "e", "d"]
    );
    std::fs::remove_dir_all(dir).unwrap();
}

pub fn full_spool_evicts_non_persistent_lower_precedence_first(open: &Open) {
    let dir = tmp();
    let one = rec(4, true, "xxxxxxxxxx").size();
    let s = open(&dir).spool(one * 3).unwrap();
    s.push(vec![
        rec(2, false, "low-np-old"),
        rec(2, true, "low-persis"),
        rec(5, false, "hi-np-xxxx"),
    ])
    .unwrap();
    // Persistent at precedence 4: evicts the non-persistent precedence-2 one.
    let r = s.push(vec![rec(4, true, "new-4-xxxx")]).unwrap();
    assert!(r[0].is_ok());
    let p = s.peek(10, &HashSet::new(), Timestamp::now()).unwrap();
    assert_eq!(bodies(&p), ["hi-np-xxxx", "new-4-xxxx", "low-persis"]);
    // Nothing evictable for a non-persistent precedence-2 newcomer: Full.
    let r = s.push(vec![rec(2, false, "rejected-x")]).unwrap();
    assert!(matches!(r[0], Err(StoreError::Full { .. })), "{:?}", r[0]);
    assert_eq!(s.stats().evicted, 1);
    // The evicted one is handed over for its report, once; the refused
    // newcomer was never in the spool, so it is not among them.
    assert_eq!(s.take_evicted(), vec![Bytes::from_static(b"<header/>")]);
    assert!(s.take_evicted().is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

pub fn expired_entries_are_dropped_and_reported(open: &Open) {
    let dir = tmp();
    let s = open(&dir).spool(1 << 20).unwrap();
    let mut old = rec(4, true, "old");
    old.expiry = Some(Timestamp(1));
    let id = old.id;
    s.push(vec![old, rec(4, true, "fresh")]).unwrap();
    let p = s.peek(10, &HashSet::new(), Timestamp::now()).unwrap();
    assert_eq!(bodies(&p), ["fresh"]);
    assert_eq!(p.expired, vec![id]);
    assert_eq!(s.stats().messages, 1);
    std::fs::remove_dir_all(dir).unwrap();
}

fn stored(source: &str, class: &str) -> StoredMessage {
    StoredMessage {
        id: MessageId::new(),
        source: source.parse().unwrap(),
        class: class.into(),
        subclass: Some("sub".into()),
        kind: crate::model::ContentKind::Event,
        created: Timestamp::now(),
        received: Timestamp::now(),
        header: Bytes::from_static(b"<header/>"),
        content: Bytes::from_static(b"<event/>"),
    }
}

pub fn message_store_is_exactly_once(open: &Open) {
    let dir = tmp();
    let a = stored("acme.p1", "alarm");
    let b = stored("acme.p2.si1", "event");
    {
        let m = open(&dir).messages().unwrap();
        let r = m
            .append(
                vec![a.clone(), b.clone(), a.clone()],
                vec![("k".into(), b"v".to_vec())],
            )
            .unwrap();
        assert_eq!(
            r,
            vec![
                Appended::Stored(1),
                Appended::Stored(2),
                Appended::Duplicate(1)
            ]
        );
    }
    let store = open(&dir);
    let m = store.messages().unwrap();
    assert_eq!(
        m.append(vec![b.clone()], vec![]).unwrap(),
        vec![Appended::Duplicate(2)]
    );
    assert_eq!(m.last_seq(), 2);
    assert_eq!(m.count().unwrap(), 2);
    let (all, cursor) = m.scan(0, 10, 100, &MessageFilter::default()).unwrap();
    assert_eq!(
        all.iter().map(|(s, x)| (*s, x.clone())).collect::<Vec<_>>(),
        vec![(1, a.clone()), (2, b.clone())]
    );
    assert_eq!(cursor, 2);
    let f = MessageFilter {
        source: Some("acme.p2".parse().unwrap()),
        ..Default::default()
    };
    assert_eq!(m.scan(0, 10, 100, &f).unwrap().0.len(), 1);
    let f = MessageFilter {
        class: Some("alarm".into()),
        ..Default::default()
    };
    assert_eq!(m.scan(0, 10, 100, &f).unwrap().0[0].1, a);
    assert_eq!(store.kv().get("k").unwrap(), Some(b"v".to_vec()));
    std::fs::remove_dir_all(dir).unwrap();
}

/// A scan may start after any sequence number, whatever commits the
/// messages came in (one, several, or one larger than a backend's unit of
/// storage), and stops at its limits with a cursor to resume from.
pub fn message_scans_resume_after_any_sequence_number(open: &Open) {
    let dir = tmp();
    let mut all = Vec::new();
    {
        let m = open(&dir).messages().unwrap();
        // Commits of 1, 3 and 40 messages, then three of 600 KiB in one.
        for n in [1usize, 3, 40] {
            let batch: Vec<_> = (0..n).map(|_| stored("acme.p1", "alarm")).collect();
            m.append(batch.clone(), vec![]).unwrap();
            all.extend(batch);
        }
        let big: Vec<_> = (0..3u8)
            .map(|i| StoredMessage {
                content: Bytes::from(vec![b'a' + i; 600 << 10]),
                ..stored("acme.p2", "event")
            })
            .collect();
        m.append(big.clone(), vec![]).unwrap();
        all.extend(big);
        let tail: Vec<_> = (0..5).map(|_| stored("acme.p1", "alarm")).collect();
        m.append(tail.clone(), vec![]).unwrap();
        all.extend(tail);
    }
    let m = open(&dir).messages().unwrap();
    let last = all.len() as u64;
    assert_eq!(m.last_seq(), last);
    assert_eq!(m.count().unwrap(), last);
    let any = MessageFilter::default();
    for after in 0..=last {
        let (got, cursor) = m.scan(after, 2, 100, &any).unwrap();
        let want: Vec<u64> = (after + 1..=last).take(2).collect();
        assert_eq!(
            got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            want,
            "after {after}"
        );
        for (s, x) in &got {
            assert_eq!(x, &all[*s as usize - 1], "seq {s}");
        }
        assert_eq!(cursor, want.last().copied().unwrap_or(after));
    }
    // The scan limit bounds what is read, and the cursor says how far it got.
    let p2 = MessageFilter {
        source: Some("acme.p2".parse().unwrap()),
        ..Default::default()
    };
    let (got, cursor) = m.scan(0, 10, 20, &p2).unwrap();
    assert!(got.is_empty());
    assert_eq!(cursor, 20);
    let (got, _) = m.scan(cursor, 10, 100, &p2).unwrap();
    assert_eq!(
        got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [45, 46, 47]
    );
    std::fs::remove_dir_all(dir).unwrap();
}

pub fn kv_lists_by_prefix(open: &Open) {
    let dir = tmp();
    let kv = open(&dir).kv();
    kv.put(vec![
        ("si/a".into(), b"1".to_vec()),
        ("si/b".into(), b"2".to_vec()),
        ("sj".into(), b"3".to_vec()),
    ])
    .unwrap();
    let l = kv.list("si/").unwrap();
    assert_eq!(l.len(), 2);
    assert_eq!(kv.get("nope").unwrap(), None);
    // One commit removes and writes; a key both removed and written is written.
    kv.commit(
        vec![
            ("si/c".into(), b"4".to_vec()),
            ("si/a".into(), b"5".to_vec()),
        ],
        &["si/a".to_string(), "si/b".to_string()],
    )
    .unwrap();
    let l = kv.list("si/").unwrap();
    assert_eq!(
        l,
        vec![
            ("si/a".to_string(), b"5".to_vec()),
            ("si/c".to_string(), b"4".to_vec())
        ]
    );
    std::fs::remove_dir_all(dir).unwrap();
}

pub fn client_keys_answer_resends_with_the_first_id_until_their_window_ends(open: &Open) {
    let dir = tmp();
    let now = Timestamp(1_000_000);
    let key = |k: &str, until: u64| {
        Some(ClientKey {
            key: k.into(),
            until: Timestamp(until),
        })
    };
    let (a, b) = (rec(4, true, "a"), rec(4, true, "b"));
    let first = a.id;
    {
        let s = open(&dir).spool(1 << 20).unwrap();
        let r = s
            .write_keyed(
                vec![
                    (a, key("k1", 2_000_000)),
                    (b, key("k1", 2_000_000)), // the same key later in the same commit
                    (rec(4, true, "c"), None),
                ],
                &[],
                now,
            )
            .unwrap();
        assert!(matches!(r[0], Ok(Pushed::New(_))));
        assert_eq!(r[1].as_ref().unwrap(), &Pushed::Repeat(first));
        assert!(matches!(r[2], Ok(Pushed::New(_))));
        assert_eq!(s.stats().messages, 2);
    }
    // After a restart (the key was committed with its record).
    let s = open(&dir).spool(1 << 20).unwrap();
    let r = s
        .write_keyed(vec![(rec(4, true, "d"), key("k1", 2_000_000))], &[], now)
        .unwrap();
    assert_eq!(r[0].as_ref().unwrap(), &Pushed::Repeat(first));
    // Past the window the key is new again (and the old entry is pruned).
    let later = Timestamp(2_000_001);
    let r = s
        .write_keyed(vec![(rec(4, true, "e"), key("k1", 3_000_000))], &[], later)
        .unwrap();
    assert!(matches!(r[0], Ok(Pushed::New(_))));
    assert_eq!(s.stats().messages, 3);
    // A record refused for space does not keep its key.
    let tiny = open(&tmp()).spool(10).unwrap();
    let r = tiny
        .write_keyed(vec![(rec(4, true, "f"), key("k2", 2_000_000))], &[], now)
        .unwrap();
    assert!(matches!(r[0], Err(StoreError::Full { .. })));
    let r = tiny
        .write_keyed(vec![(rec(4, true, "f"), key("k2", 2_000_000))], &[], now)
        .unwrap();
    assert!(matches!(r[0], Err(StoreError::Full { .. })), "not a repeat");
}

fn leased_bodies(l: &Leased) -> Vec<String> {
    l.records
        .iter()
        .map(|r| String::from_utf8(r.content.to_vec()).unwrap())
        .collect()
}

pub fn queue_state_is_written_in_the_commit_whether_or_not_the_offer_fits(open: &Open) {
    let dir = tmp();
    let now = Timestamp::now();
    let offer = |body: &str, capacity: u64| QueueOp::Offer {
        push: vec![("acme.p1".into(), rec(4, true, body))],
        received: None,
        capacity,
        queue_capacity: u64::MAX,
    };
    {
        let b = open(&dir);
        let q = b.queues().unwrap();
        let out = q
            .commit(
                vec![
                    offer("a", 1 << 20),
                    QueueOp::State(vec![("delivery/a".into(), b"one".to_vec())]),
                ],
                now,
            )
            .unwrap();
        assert!(
            matches!(
                out[..],
                [
                    QueueOutcome::Offered(Ok(Offered::Queued(1))),
                    QueueOutcome::Stated
                ]
            ),
            "{out:?}"
        );
        // An offer over the capacity: nothing queued, the state written.
        let out = q
            .commit(
                vec![
                    offer("b", 8),
                    QueueOp::State(vec![("delivery/b".into(), b"two".to_vec())]),
                ],
                now,
            )
            .unwrap();
        assert!(
            matches!(out[0], QueueOutcome::Offered(Err(StoreError::Full { .. }))),
            "{out:?}"
        );
        // Read in the state as the key-value store keeps it.
        assert_eq!(b.kv().get("delivery/b").unwrap(), Some(b"two".to_vec()));
    }
    // Durable: both records and the one entry are there after reopen.
    let b = open(&dir);
    assert_eq!(b.kv().get("delivery/a").unwrap(), Some(b"one".to_vec()));
    assert_eq!(b.kv().get("delivery/b").unwrap(), Some(b"two".to_vec()));
    let l = b
        .queues()
        .unwrap()
        .lease(&["acme.p1"], usize::MAX, 10, now, Timestamp(now.0 + 1_000))
        .unwrap();
    assert_eq!(leased_bodies(&l), ["a"]);
}

pub fn queue_store_applies_writes_durably_and_forgets_old_marks(open: &Open) {
    let dir = tmp();
    let (a, b, c) = (rec(4, true, "a"), rec(8, true, "b"), rec(4, true, "c"));
    let seen = MessageId::new();
    let t0 = Timestamp::now();
    let offer = |push: Vec<(String, SpoolRecord)>, received: Option<(MessageId, Timestamp)>| {
        QueueOp::Offer {
            push,
            received,
            capacity: 1 << 20,
            queue_capacity: u64::MAX,
        }
    };
    {
        let q = open(&dir).queues().unwrap();
        let out = q
            .commit(
                vec![
                    offer(
                        vec![("acme.p1".into(), a.clone()), ("acme.p1".into(), b.clone())],
                        Some((seen, Timestamp(t0.0 + 60_000))),
                    ),
                    // The same received ID later in the same commit: a duplicate.
                    offer(
                        vec![("acme.p1".into(), c.clone())],
                        Some((seen, Timestamp(t0.0 + 60_000))),
                    ),
                    offer(vec![("^control".into(), c.clone())], None),
                ],
                t0,
            )
            .unwrap();
        assert!(
            matches!(out[0], QueueOutcome::Offered(Ok(Offered::Queued(2)))),
            "{out:?}"
        );
        assert!(
            matches!(out[1], QueueOutcome::Offered(Ok(Offered::Duplicate))),
            "{out:?}"
        );
        assert!(
            matches!(out[2], QueueOutcome::Offered(Ok(Offered::Queued(1)))),
            "{out:?}"
        );
        assert_eq!(
            q.names(),
            vec!["acme.p1".to_string()],
            "pseudo-queues are not destinations"
        );
    }
    // After reopen: records, order (precedence, then sequence) and the mark are back; no lease survives.
    let q = open(&dir).queues().unwrap();
    assert!(q.was_received(&seen, t0));
    assert!(
        !q.was_received(&seen, Timestamp(t0.0 + 60_001)),
        "marks end at their time"
    );
    let l = q
        .lease(&["acme.p1"], usize::MAX, 10, t0, Timestamp(t0.0 + 1_000))
        .unwrap();
    let bodies = leased_bodies(&l);
    assert_eq!(bodies, ["b", "a"], "higher precedence first");
    // Leased entries are hidden until the lease ends, then handed out again.
    assert!(q
        .lease(&["acme.p1"], usize::MAX, 10, t0, Timestamp(t0.0 + 1_000))
        .unwrap()
        .records
        .is_empty());
    let r = q.readiness(Some("acme.p1"), t0);
    assert_eq!(
        (r.ready, r.next_lease_end),
        (false, Some(Timestamp(t0.0 + 1_000)))
    );
    assert_eq!(q.stats(t0).leased, 2);
    let later = Timestamp(t0.0 + 1_000);
    assert_eq!(
        q.lease(
            &["acme.p1"],
            usize::MAX,
            1,
            later,
            Timestamp(later.0 + 1_000)
        )
        .unwrap()
        .records
        .len(),
        1
    );
    // An ack removes for good (unknown IDs ignored).
    let out = q
        .commit(
            vec![QueueOp::Ack {
                queue: "acme.p1".into(),
                ids: vec![a.id, b.id, MessageId::new()],
            }],
            later,
        )
        .unwrap();
    assert!(
        matches!(&out[0], QueueOutcome::Acked(ids) if ids.len() == 2),
        "{out:?}"
    );
    assert!(q.names().is_empty());
    // Capacity: an offer that does not fit fails whole, and nothing of it is kept.
    let big = rec(4, true, &"x".repeat(2000));
    let out = q
        .commit(
            vec![QueueOp::Offer {
                push: vec![("acme.p2".into(), big)],
                received: Some((MessageId::new(), Timestamp(t0.0 + 60_000))),
                capacity: 1000,
                queue_capacity: u64::MAX,
            }],
            later,
        )
        .unwrap();
    assert!(
        matches!(out[0], QueueOutcome::Offered(Err(StoreError::Full { .. }))),
        "{out:?}"
    );
    assert!(q.names().is_empty());
    // A queue at its own capacity: its entries are left out, named, and
    // the other queues' taken, in the same offer and in later ones.
    let one = rec(4, true, "y");
    let quota = one.size() * 2;
    let per_queue = |push: Vec<(String, SpoolRecord)>| QueueOp::Offer {
        push,
        received: None,
        capacity: 1 << 20,
        queue_capacity: quota,
    };
    let fill: Vec<_> = (0..3)
        .map(|_| ("acme.slow".to_string(), rec(4, true, "y")))
        .chain([("acme.fast".to_string(), rec(4, true, "y"))])
        .collect();
    let out = q.commit(vec![per_queue(fill)], later).unwrap();
    assert!(
        matches!(&out[0], QueueOutcome::Offered(Ok(Offered::Partly { queued: 1, over_quota })) if over_quota == &["acme.slow".to_string()]),
        "{out:?}"
    );
    // (A record that alone would pass the quota but whose queue took others
    // in this offer is left out whole, with the rest of that queue's.)
    let out = q
        .commit(
            vec![
                per_queue(vec![("acme.slow".into(), rec(4, true, "y"))]),
                per_queue(vec![("acme.fast".into(), rec(4, true, "y"))]),
                per_queue(vec![
                    ("^quota".into(), rec(4, true, "y")),
                    ("^quota".into(), rec(4, true, "z")),
                ]),
            ],
            later,
        )
        .unwrap();
    assert!(
        matches!(&out[0], QueueOutcome::Offered(Ok(Offered::Queued(1)))),
        "the slow queue had room for one: {out:?}"
    );
    assert!(
        matches!(&out[1], QueueOutcome::Offered(Ok(Offered::Queued(1)))),
        "{out:?}"
    );
    assert!(
        matches!(&out[2], QueueOutcome::Offered(Ok(Offered::Queued(2)))),
        "pseudo-queues have no quota: {out:?}"
    );
    let out = q
        .commit(
            vec![per_queue(vec![
                ("acme.slow".into(), rec(4, true, "y")),
                ("acme.fast".into(), rec(4, true, "y")),
            ])],
            later,
        )
        .unwrap();
    assert!(
        matches!(&out[0], QueueOutcome::Offered(Ok(Offered::Partly { queued: 1, over_quota })) if over_quota == &["acme.fast".to_string()]),
        "the slow queue's second fits, the fast queue is at its two: {out:?}"
    );
    let out = q
        .commit(
            vec![per_queue(vec![
                ("acme.slow".into(), rec(4, true, "y")),
                ("acme.fast".into(), rec(4, true, "y")),
            ])],
            later,
        )
        .unwrap();
    assert!(
        matches!(&out[0], QueueOutcome::Offered(Ok(Offered::Partly { queued: 0, over_quota })) if over_quota.len() == 2),
        "{out:?}"
    );
    for name in ["acme.slow", "acme.fast", "^quota"] {
        let l = q
            .lease(&[name], usize::MAX, 10, later, Timestamp(later.0 + 1000))
            .unwrap();
        let keys: Vec<_> = l.records.iter().map(|r| r.id).collect();
        let ids: Vec<_> = keys.clone();
        q.commit(
            vec![QueueOp::Ack {
                queue: name.into(),
                ids,
            }],
            later,
        )
        .unwrap();
    }
    assert!(q.names().is_empty(), "{:?}", q.names());
    // Expired entries are reported by a lease and removed by the caller.
    let mut old = rec(4, true, "old");
    old.expiry = Some(Timestamp(t0.0 + 10));
    q.commit(
        vec![offer(vec![("acme.p3".into(), old.clone())], None)],
        later,
    )
    .unwrap();
    let l = q
        .lease(
            &["acme.p3"],
            usize::MAX,
            10,
            later,
            Timestamp(later.0 + 1_000),
        )
        .unwrap();
    assert!(l.records.is_empty());
    assert_eq!(l.expired.len(), 1);
    assert_eq!(l.expired[0].2, old.id);
    q.commit(
        vec![QueueOp::Remove(vec![(
            l.expired[0].0.clone(),
            l.expired[0].1,
        )])],
        later,
    )
    .unwrap();
    assert_eq!(q.prune_seen(Timestamp(t0.0 + 120_000)).unwrap(), 1);
    drop(q);
    let q = open(&dir).queues().unwrap();
    assert_eq!(
        q.stats(later).messages,
        1,
        "only the ^control entry is left"
    );
    assert!(!q.was_received(&seen, t0), "pruned marks stay gone");
    // Sequence numbers keep growing across reopen: the older entry still sorts first.
    q.commit(
        vec![offer(vec![("^control".into(), rec(4, true, "new"))], None)],
        later,
    )
    .unwrap();
    let l = q
        .lease(&["^control"], usize::MAX, 10, later, later)
        .unwrap();
    let bodies = leased_bodies(&l);
    assert_eq!(bodies, ["c", "new"]);
}
