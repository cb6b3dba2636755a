use super::*;
use crate::model::{Destination, Direction};
use crate::tls::Role;

fn peer(id: &str, role: Role, scopes: &[&str]) -> Identity {
    Identity {
        id: id.parse().unwrap(),
        role,
        scopes: scopes.iter().map(|s| s.parse().unwrap()).collect(),
        perms: vec![],
        classes: vec![],
    }
}

use crate::envelope::test_item as item;

fn reason(v: Option<Verdict>) -> String {
    match v {
        Some(Verdict::Reject { reason }) => reason,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn screen_checks_sources_and_every_hop_against_the_peer() {
    let p4 = peer("acme.p4", Role::Proxy, &[]);
    assert_eq!(Screen::check(&p4, &item("acme.p4.si1", &["acme.p4"])), None);
    assert!(reason(Screen::check(&p4, &item("acme.p1", &["acme.p4"]))).contains("source acme.p1"));
    // The hijack: a correct source, another proxy's ID in the routing list.
    let r = reason(Screen::check(
        &p4,
        &item("acme.p4", &["acme.p1", "acme.p4"]),
    ));
    assert!(r.contains("routing hop acme.p1 is outside"), "{r}");
    // Across customers.
    let r = reason(Screen::check(
        &p4,
        &item("acme.p4", &["globex.p1", "acme.p4"]),
    ));
    assert!(r.contains("globex.p1"), "{r}");
    // An MLM speaks for its scope, not beyond it.
    let mlm = peer("acme.mlm1", Role::Mlm, &["acme"]);
    assert_eq!(
        Screen::check(&mlm, &item("acme.p1", &["acme.p1", "acme.mlm1"])),
        None
    );
    assert!(reason(Screen::check(
        &mlm,
        &item("acme.p1", &["globex.mlm9", "acme.mlm1"])
    ))
    .contains("globex.mlm9"));
    // Nothing comes up that should go down.
    let mut down = item("acme.p4", &[]);
    down.header.direction = Direction::Destination(Destination {
        ids: vec!["acme.p1".parse().unwrap()],
        group: None,
    });
    assert!(reason(Screen::check(&p4, &down)).contains("sent upward"));
}

struct Terminal;
impl Stage for Terminal {
    fn name(&self) -> &'static str {
        "terminal"
    }
    fn judge<'a>(&'a self, _ex: &'a Exchange, items: Vec<Item>) -> StageFuture<'a> {
        Box::pin(async move {
            Judged {
                forward: Vec::new(),
                decided: items
                    .iter()
                    .map(|i| (i.header.id, Verdict::Absorb { correlation: None }))
                    .collect(),
            }
        })
    }
}

#[tokio::test]
async fn every_item_gets_one_answer_and_verdicts_map_to_wire_answers() {
    let ex = Exchange {
        peer: peer("acme.p1", Role::Proxy, &[]),
        received: Timestamp::now(),
        persist: Vec::new(),
    };
    let p = Pipeline::new(
        Arc::new(PassThrough("modules")),
        Arc::new(PassThrough("throttle")),
        Arc::new(Terminal),
    );
    let items = vec![item("acme.p1", &[]), item("acme.p1", &[])];
    let a = p.run(&ex, items.clone()).await;
    assert_eq!(a.len(), 2);
    assert!(a.iter().all(|r| r.status == Status::Accepted));
    // Without a terminal stage nothing is lost: the child is told to retry.
    let open = Pipeline::new(
        Arc::new(PassThrough("modules")),
        Arc::new(PassThrough("throttle")),
        Arc::new(PassThrough("none")),
    );
    let a = open.run(&ex, items).await;
    assert!(a.iter().all(|r| r.retry_after.is_some()));
    let id = MessageId::new();
    assert_eq!(Verdict::Drop.answer(id).status, Status::Accepted);
    let d = Verdict::defer("busy", Duration::from_secs(2)).answer(id);
    assert_eq!(
        Verdict::from_answer(d),
        Verdict::defer("busy", Duration::from_secs(2))
    );
    let r = Verdict::reject("no").answer(id);
    assert!(r.retry_after.is_none());
    assert_eq!(Verdict::from_answer(r), Verdict::reject("no"));
}

/// Rejects every item whose source is `acme.p2`.
struct NoP2;
impl Stage for NoP2 {
    fn name(&self) -> &'static str {
        "no-p2"
    }
    fn judge<'a>(&'a self, _ex: &'a Exchange, items: Vec<Item>) -> StageFuture<'a> {
        let j = Judged::each(items, |i| {
            (i.header.source().map(|s| s.origin.as_str()) == Some("acme.p2"))
                .then(|| Verdict::reject("p2"))
        });
        Box::pin(async move { j })
    }
}

#[tokio::test]
async fn a_chain_runs_its_stages_in_order_on_what_each_passes_on() {
    let ex = Exchange {
        peer: peer("acme.mlm1", Role::Mlm, &["acme"]),
        received: Timestamp::now(),
        persist: Vec::new(),
    };
    let p = Pipeline::new(
        Arc::new(Chain(
            "modules",
            vec![Arc::new(PassThrough("a")), Arc::new(NoP2)],
        )),
        Arc::new(PassThrough("throttle")),
        Arc::new(Terminal),
    );
    let items = vec![
        item("acme.p1", &[]),
        item("acme.p2", &[]),
        item("acme.p3", &[]),
    ];
    let ids: Vec<MessageId> = items.iter().map(|i| i.header.id).collect();
    let a: std::collections::HashMap<MessageId, Response> = p
        .run(&ex, items)
        .await
        .into_iter()
        .map(|r| (r.request, r))
        .collect();
    assert_eq!(a.len(), 3);
    assert_eq!(a[&ids[0]].status, Status::Accepted);
    assert_eq!(a[&ids[1]].status, Status::Rejected);
    assert_eq!(a[&ids[2]].status, Status::Accepted);
}
