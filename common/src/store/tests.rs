// Synchronous tests on the test thread: no tokio worker to stall.
#![allow(clippy::disallowed_methods)]

use std::collections::HashSet;

use bytes::Bytes;

use super::redb::RedbStore;
use super::*;

fn rec(precedence: u8, persistent: bool, body: &str) -> SpoolRecord {
    SpoolRecord {
        id: MessageId::new(),
        precedence,
        persistent,
        expiry: None,
        header: Bytes::from_static(b"<header/>"),
        content: Bytes::copy_from_slice(body.as_bytes()),
    }
}

fn tmp() -> std::path::PathBuf {
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

#[test]
fn spool_orders_by_precedence_then_age_and_survives_reopen() {
    let dir = tmp();
    {
        let s = RedbStore::open(&dir).unwrap().spool(1 << 20).unwrap();
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
    let s = RedbStore::open(&dir).unwrap().spool(1 << 20).unwrap();
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

#[test]
fn full_spool_evicts_non_persistent_lower_precedence_first() {
    let dir = tmp();
    let one = rec(4, true, "xxxxxxxxxx").size();
    let s = RedbStore::open(&dir).unwrap().spool(one * 3).unwrap();
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
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn expired_entries_are_dropped_and_reported() {
    let dir = tmp();
    let s = RedbStore::open(&dir).unwrap().spool(1 << 20).unwrap();
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

#[test]
fn message_store_is_exactly_once() {
    let dir = tmp();
    let a = stored("acme.p1", "alarm");
    let b = stored("acme.p2.si1", "event");
    {
        let m = RedbStore::open(&dir).unwrap().messages().unwrap();
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
    let store = RedbStore::open(&dir).unwrap();
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

#[test]
fn kv_lists_by_prefix() {
    let dir = tmp();
    let kv = RedbStore::open(&dir).unwrap().kv();
    kv.put(vec![
        ("si/a".into(), b"1".to_vec()),
        ("si/b".into(), b"2".to_vec()),
        ("sj".into(), b"3".to_vec()),
    ])
    .unwrap();
    let l = kv.list("si/").unwrap();
    assert_eq!(l.len(), 2);
    assert_eq!(kv.get("nope").unwrap(), None);
    std::fs::remove_dir_all(dir).unwrap();
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

#[test]
fn client_keys_answer_resends_with_the_first_id_until_their_window_ends() {
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
        let s = RedbStore::open(&dir).unwrap().spool(1 << 20).unwrap();
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
    let s = RedbStore::open(&dir).unwrap().spool(1 << 20).unwrap();
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
    let tiny = RedbStore::open(&tmp()).unwrap().spool(10).unwrap();
    let r = tiny
        .write_keyed(vec![(rec(4, true, "f"), key("k2", 2_000_000))], &[], now)
        .unwrap();
    assert!(matches!(r[0], Err(StoreError::Full { .. })));
    let r = tiny
        .write_keyed(vec![(rec(4, true, "f"), key("k2", 2_000_000))], &[], now)
        .unwrap();
    assert!(matches!(r[0], Err(StoreError::Full { .. })), "not a repeat");
}
