use std::path::{Path, PathBuf};

use super::*;
use crate::forward::Outbox;
use crate::model::{Alarm, AlarmState, Event};
use crate::store::{self, Backend, StoreConfig};
use crate::tls::{Identity, Role};

fn dir() -> PathBuf {
    crate::store::conformance::tmp()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn rules_file(text: &str, node: NodeKind) -> (PathBuf, Result<Arc<Rules>, RulesError>) {
    let d = dir();
    let p = write(&d, "rules.toml", text);
    let r = Rules::open(RuleSource::File(p), node, None, &Registry::default());
    (d, r)
}

fn ex() -> Exchange {
    Exchange {
        peer: Identity {
            id: "acme.p1".parse().unwrap(),
            role: Role::Proxy,
            scopes: vec![],
            perms: vec![],
            classes: vec![],
        },
        received: Timestamp::now(),
        persist: Vec::new(),
    }
}

fn alarm(origin: &str, subclass: &str, severity: Severity, si: Option<&str>, text: &str) -> Item {
    Item::new(&Message::forward(
        origin.parse().unwrap(),
        "alarm",
        Some(subclass),
        Content::Alarm(Alarm {
            severity,
            state: AlarmState::Raised,
            support_instance: si.map(|s| s.parse().unwrap()),
            text: text.into(),
            data: None,
        }),
    ))
}

fn event(origin: &str, subclass: &str, text: &str) -> Item {
    let mut i = crate::envelope::test_item(origin, &[]);
    i.header.subclass = Some(subclass.into());
    i.content = bytes::Bytes::from(crate::envelope::wire::encode_content(&Content::Event(
        Event {
            support_instance: None,
            text: text.into(),
            data: None,
        },
    )));
    i
}

#[tokio::test]
async fn a_filter_rule_drops_what_it_matches_and_nothing_else() {
    let (_d, r) = rules_file(
        "[[rule]]\nname = \"noise\"\naction = \"filter\"\n[rule.match]\nclass = \"event\"\nsubclass = \"noise\"\nsource = \"acme.p1\"\ntext = \"flap\"\n",
        NodeKind::Mlm,
    );
    let stage = r.unwrap();
    let noise = event("acme.p1.si3", "noise", "link flap");
    let other_source = event("acme.p2", "noise", "link flap");
    let other_subclass = event("acme.p1", "disk", "link flap");
    let other_text = event("acme.p1", "noise", "fan");
    let j = stage
        .judge(
            &ex(),
            vec![noise.clone(), other_source, other_subclass, other_text],
        )
        .await;
    assert_eq!(j.decided, vec![(noise.header.id, Verdict::Drop)]);
    assert_eq!(j.forward.len(), 3);
    assert_eq!(stage.c.filtered.get(), 1);
}

#[tokio::test]
async fn a_modify_rule_rewrites_header_and_content_and_the_next_rule_is_not_asked() {
    let (_d, r) = rules_file(
        r#"
[[rule]]
name = "disk-is-major"
action = "modify"
remove = ["support_instance"]
[rule.match]
subclass = "disk"
severity = ["minor"]
[rule.set]
class = "storage"
subclass = "volume"
precedence = 8
persistence = true
expiry_s = 60
severity = "major"
text = "disk trouble"

[[rule]]
name = "drop-all-disk"
action = "filter"
[rule.match]
subclass = "disk"
"#,
        NodeKind::Mlm,
    );
    let stage = r.unwrap();
    let a = alarm(
        "acme.p1",
        "disk",
        Severity::Minor,
        Some("acme.p1.si1"),
        "sda 91%",
    );
    let critical = alarm("acme.p1", "disk", Severity::Critical, None, "sda 99%");
    let j = stage.judge(&ex(), vec![a.clone(), critical.clone()]).await;
    // The minor one was modified (first rule); the critical one filtered (second).
    assert_eq!(j.decided, vec![(critical.header.id, Verdict::Drop)]);
    assert_eq!(j.forward.len(), 1);
    let m = j.forward[0].message().unwrap();
    assert_eq!(m.header.id, a.header.id);
    assert_eq!(m.header.class, "storage");
    assert_eq!(m.header.subclass.as_deref(), Some("volume"));
    assert_eq!(m.header.qos.precedence, 8);
    assert!(m.header.qos.persistence);
    assert!(m.header.qos.expiry.is_some());
    match m.content {
        Content::Alarm(al) => {
            assert_eq!(al.severity, Severity::Major);
            assert_eq!(al.text, "disk trouble");
            assert_eq!(al.support_instance, None);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_proxy_modifies_before_it_spools_and_filters_what_it_names() {
    let (_d, r) = rules_file(
        "[[rule]]\nname = \"quiet\"\naction = \"filter\"\n[rule.match]\nseverity = [\"clear\"]\n[[rule]]\nname = \"tag\"\naction = \"modify\"\n[rule.set]\nsubclass = \"tagged\"\n",
        NodeKind::Proxy,
    );
    let r = r.unwrap();
    let clear = alarm("acme.p1", "x", Severity::Clear, None, "ok")
        .message()
        .unwrap();
    let warn = alarm("acme.p1", "x", Severity::Warning, None, "hm")
        .message()
        .unwrap();
    assert!(r.local(clear).is_none());
    let m = r.local(warn.clone()).unwrap();
    assert_eq!(m.header.subclass.as_deref(), Some("tagged"));
    assert_eq!(m.content, warn.content);
}

#[test]
fn back_channel_rules_apply_only_where_they_say_so() {
    let (_d, r) = rules_file(
        "[[rule]]\nname = \"no-restarts\"\naction = \"filter\"\napplies = \"back\"\n[rule.match]\nclass = \"control\"\n[[rule]]\nname = \"fwd\"\naction = \"filter\"\n[rule.match]\nclass = \"event\"\n",
        NodeKind::Mlm,
    );
    let r = r.unwrap();
    let mut down = crate::envelope::test_item("acme.p1", &[]);
    down.header.class = "control".into();
    down.header.direction = Direction::Destination(crate::model::Destination {
        ids: vec!["acme.p1".parse().unwrap()],
        group: None,
    });
    assert!(r.back(down.clone()).is_none());
    let mut other = down.clone();
    other.header.class = "event".into();
    // "fwd" applies forward only.
    assert!(r.back(other).is_some());
}

#[test]
fn a_rules_file_with_mistakes_is_refused_naming_file_line_and_rule() {
    let (d, r) = rules_file(
        r#"# comment
[[rule]]
name = "ok"
action = "filter"

[[rule]]
name = "ok"
action = "explode"
[rule.match]
severity = ["loud"]
source = "**"
kind = "tweet"
class = "Bad"

[[rule]]
name = "agg"
action = "aggregate"
[rule.aggregate]
by = ["colour"]
count = 1

[[rule]]
name = "mod"
action = "modify"
"#,
        NodeKind::Proxy,
    );
    let e = r.err().expect("refused");
    let all = e.to_string();
    let file = d.join("rules.toml").display().to_string();
    for needle in [
        format!("{file}:6: rule[1] \"ok\": name must be given, unique"),
        format!("{file}:6: rule[1] \"ok\": action \"explode\""),
        "match.severity: \"loud\"".into(),
        "match.source".into(),
        "match.kind".into(),
        "match.class".into(),
        format!("{file}:15: rule[2] \"agg\": action \"aggregate\" runs at an MLM"),
        "aggregate.by: \"colour\"".into(),
        "aggregate.count: 2..=1000".into(),
        "rules.toml:22: rule[3] \"mod\": a modify rule needs [rule.set] or remove".into(),
    ] {
        assert!(all.contains(&needle), "{needle}\n in: {all}");
    }
    // A syntax error names the line too.
    let (d, r) = rules_file(
        "[[rule]]\nname = \"a\"\naction = \"filter\"\nbogus = 1\n",
        NodeKind::Mlm,
    );
    let all = r.err().expect("refused").to_string();
    let file = d.join("rules.toml").display().to_string();
    assert!(all.starts_with(&format!("{file}:")), "{all}");
    assert!(all.contains("bogus"), "{all}");
}

#[tokio::test]
async fn a_bad_reload_is_refused_and_the_previous_rules_stay_in_force() {
    let d = dir();
    let p = write(
        &d,
        "rules.toml",
        "[[rule]]\nname = \"noise\"\naction = \"filter\"\n[rule.match]\nsubclass = \"noise\"\n",
    );
    let metrics = Registry::default();
    let r = Rules::open(RuleSource::File(p.clone()), NodeKind::Mlm, None, &metrics).unwrap();
    let noise = event("acme.p1", "noise", "x");
    let disk = event("acme.p1", "disk", "x");
    assert!(r.back_or_forward_filters(&noise));
    std::fs::write(&p, "[[rule]]\nname = \"disk\"\naction = \"filterr\"\n").unwrap();
    let e = r.reload().unwrap_err();
    assert!(
        e.to_string().contains("rules.toml:1: rule[0] \"disk\""),
        "{e}"
    );
    assert!(r.back_or_forward_filters(&noise), "previous rules in force");
    assert!(!r.back_or_forward_filters(&disk));
    std::fs::write(
        &p,
        "[[rule]]\nname = \"disk\"\naction = \"filter\"\n[rule.match]\nsubclass = \"disk\"\n",
    )
    .unwrap();
    assert_eq!(r.reload().unwrap(), 1);
    assert!(!r.back_or_forward_filters(&noise));
    assert!(r.back_or_forward_filters(&disk));
    let m = metrics.render();
    assert!(m.contains("rsnet_rules_reloads_refused_total 1"), "{m}");
    assert!(m.contains("rsnet_rules_reloads_total 1"), "{m}");
    assert!(
        m.contains("rsnet_rule_matches_total{rule=\"noise\",action=\"filter\"} 2"),
        "{m}"
    );
}

impl Rules {
    fn back_or_forward_filters(&self, item: &Item) -> bool {
        let mut i = item.clone();
        matches!(
            self.decide(&self.current(), &mut i, false, Timestamp::now()),
            Decision::Filter
        )
    }
}

#[test]
fn inline_rules_in_a_node_config_are_read_with_their_lines() {
    let d = dir();
    let p = write(
        &d,
        "mlm.toml",
        "data_dir = \"x\"\n[tls]\ncert = \"c\"\n\n[[rule]]\nname = \"a\"\naction = \"nope\"\n",
    );
    let src = RuleSource::of(Some(&p), None, &[]);
    let e = load(&src, NodeKind::Mlm).unwrap_err().to_string();
    assert!(e.contains("line 5: rule[0] \"a\": action \"nope\""), "{e}");
    // A rules file named by a config is relative to the config's directory.
    let src = RuleSource::of(Some(&p), Some(Path::new("r.toml")), &[]);
    assert_eq!(src.path(), Some(d.join("r.toml").as_path()));
}

// ------------------------------------------------------------- aggregate

struct Mlm {
    dir: PathBuf,
    store: Arc<dyn Backend>,
    outbox: Arc<Outbox>,
    agg: Arc<Aggregator>,
    rules: Arc<Rules>,
}

const AGG: &str = r#"
[[rule]]
name = "fold"
action = "aggregate"
[rule.match]
class = "alarm"
[rule.aggregate]
by = ["support_instance", "subclass"]
count = 3
window_s = 10
"#;

fn mlm(dir: &Path) -> Mlm {
    // A store just dropped is released once its writer thread has seen it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let store = loop {
        match store::open(&StoreConfig::default(), dir) {
            Ok(s) => break s,
            Err(e) if std::time::Instant::now() > deadline => panic!("{e}"),
            Err(_) => std::thread::yield_now(),
        }
    };
    let spool = store.spool(64 << 20).unwrap();
    let outbox = Outbox::new(spool).unwrap();
    let metrics = Registry::default();
    let agg = Aggregator::open(
        "acme.mlm1".parse().unwrap(),
        store.kv(),
        outbox.clone(),
        &metrics,
    )
    .unwrap();
    let p = write(dir, "rules.toml", AGG);
    let rules = Rules::open(
        RuleSource::File(p),
        NodeKind::Mlm,
        Some(agg.clone()),
        &metrics,
    )
    .unwrap();
    Mlm {
        dir: dir.to_path_buf(),
        store,
        outbox,
        agg,
        rules,
    }
}

/// The aggregates in the spool: (message, summary).
fn spooled(m: &Mlm) -> Vec<(Message, serde_json::Value)> {
    let peeked = m
        .outbox
        .spool()
        .peek(1000, &Default::default(), Timestamp::now())
        .unwrap();
    peeked
        .entries
        .into_iter()
        .map(|(_, r)| {
            let header = crate::envelope::wire::decode_header(&r.header).unwrap();
            let content = decode_content(&r.content, header.kind).unwrap();
            let data = match &content {
                Content::Alarm(a) => a.data.clone().unwrap(),
                Content::Event(e) => e.data.clone().unwrap(),
                other => panic!("{other:?}"),
            };
            assert_eq!(data.mime, aggregate::MIME);
            let v = serde_json::from_slice(&data.payload).unwrap();
            (Message { header, content }, v)
        })
        .collect()
}

fn replaced(v: &serde_json::Value) -> Vec<String> {
    v["replaced"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn an_aggregate_replaces_a_full_group_and_a_window_sends_the_rest() {
    let m = mlm(&dir());
    let e = ex();
    let si1: Vec<Item> = (0..4)
        .map(|i| {
            alarm(
                "acme.p1",
                "link",
                if i == 2 {
                    Severity::Critical
                } else {
                    Severity::Minor
                },
                Some("acme.p1.si1"),
                "link down",
            )
        })
        .collect();
    let si2 = alarm("acme.p1", "link", Severity::Minor, Some("acme.p1.si2"), "x");
    let passing = event("acme.p1", "link", "not an alarm class");
    let mut batch = si1.clone();
    batch.push(si2.clone());
    batch.push(passing.clone());
    let j = m.rules.judge(&e, batch).await;
    assert_eq!(j.forward, vec![passing]);
    assert_eq!(j.decided.len(), 5);
    assert!(j
        .decided
        .iter()
        .all(|(_, v)| *v == Verdict::Absorb { correlation: None }));
    // Full group (3 of si1): one aggregate now, not before its window for the rest.
    assert_eq!(m.agg.emit_due(e.received).await, 1);
    let out = spooled(&m);
    assert_eq!(out.len(), 1);
    let (msg, v) = &out[0];
    assert_eq!(v["count"], 3);
    assert_eq!(v["rule"], "fold");
    assert_eq!(v["key"]["support_instance"], "acme.p1.si1");
    let first3: Vec<String> = si1[..3].iter().map(|i| i.header.id.to_string()).collect();
    assert_eq!(replaced(v), first3);
    assert_eq!(msg.header.source().unwrap().origin.as_str(), "acme.p1");
    assert_eq!(msg.header.routing.last().unwrap().id.as_str(), "acme.mlm1");
    match &msg.content {
        Content::Alarm(a) => {
            assert_eq!(a.severity, Severity::Critical, "the highest held");
            assert!(a.text.starts_with("link down (3 messages aggregated"));
        }
        other => panic!("{other:?}"),
    }
    // The window (10 s) sends the remaining groups: si1's 4th and si2.
    assert_eq!(
        m.agg
            .emit_due(e.received.after(Duration::from_secs(5)))
            .await,
        0
    );
    assert_eq!(
        m.agg
            .emit_due(e.received.after(Duration::from_secs(11)))
            .await,
        2
    );
    let out = spooled(&m);
    assert_eq!(out.len(), 3);
    let mut all: Vec<String> = out.iter().flat_map(|(_, v)| replaced(v)).collect();
    all.sort();
    let mut want: Vec<String> = si1
        .iter()
        .chain([&si2])
        .map(|i| i.header.id.to_string())
        .collect();
    want.sort();
    assert_eq!(all, want, "each held message in exactly one aggregate");
    // A resend of a replaced message is answered and not held again.
    let j = m.rules.judge(&e, vec![si2.clone()]).await;
    assert_eq!(j.decided.len(), 1);
    assert_eq!(
        m.agg
            .emit_due(e.received.after(Duration::from_secs(60)))
            .await,
        0
    );
    std::fs::remove_dir_all(&m.dir).unwrap();
}

#[tokio::test]
async fn held_messages_and_unsent_aggregates_survive_a_restart_once() {
    let d = dir();
    let e = ex();
    let a: Vec<Item> = (0..2)
        .map(|_| alarm("acme.p1", "link", Severity::Minor, Some("acme.p1.si1"), "x"))
        .collect();
    {
        let m = mlm(&d);
        m.rules.judge(&e, a.clone()).await;
        drop(m);
    }
    // Reopened: both held; the third fills the group.
    let m = mlm(&d);
    let third = alarm("acme.p1", "link", Severity::Minor, Some("acme.p1.si1"), "x");
    m.rules.judge(&e, vec![a[0].clone(), third.clone()]).await;
    assert_eq!(m.agg.emit_due(e.received).await, 1);
    let out = spooled(&m);
    assert_eq!(out.len(), 1);
    assert_eq!(
        replaced(&out[0].1),
        vec![
            a[0].header.id.to_string(),
            a[1].header.id.to_string(),
            third.header.id.to_string()
        ],
        "the resend of a[0] was not held twice"
    );
    // A crash after the aggregate was made and spooled but before its
    // record went: it is spooled again on restart and the spool says repeat.
    let id = out[0].0.header.id;
    let rec = aggregate::tests_support::out_record(&out[0].0);
    let kv = m.store.kv();
    #[allow(clippy::disallowed_methods)] // a test
    kv.put(vec![(format!("agg/o/{id}"), rec)]).unwrap();
    drop((kv, m));
    let m = mlm(&d);
    m.agg.emit_due(Timestamp::now()).await;
    assert_eq!(spooled(&m).len(), 1, "spooled once");
    assert!(m.store.kv().list("agg/o/").unwrap().is_empty());
    std::fs::remove_dir_all(&d).unwrap();
}

#[tokio::test]
async fn a_reload_that_drops_an_aggregate_rule_sends_its_groups_at_once() {
    let m = mlm(&dir());
    let e = ex();
    m.rules
        .judge(
            &e,
            vec![alarm("acme.p1", "link", Severity::Minor, None, "x")],
        )
        .await;
    assert_eq!(m.agg.emit_due(e.received).await, 0);
    std::fs::write(m.dir.join("rules.toml"), "").unwrap();
    assert_eq!(m.rules.reload().unwrap(), 0);
    assert_eq!(m.agg.emit_due(e.received).await, 1);
    assert_eq!(spooled(&m)[0].1["count"], 1);
    std::fs::remove_dir_all(&m.dir).unwrap();
}

#[tokio::test]
async fn a_full_holding_area_defers_and_holds_nothing_of_that_post() {
    let m = mlm(&dir());
    aggregate::tests_support::set_limits(&m.agg, 3, u64::MAX);
    let e = ex();
    let batch = |n: usize| -> Vec<Item> {
        (0..n)
            .map(|_| alarm("acme.p1", "link", Severity::Minor, None, "x"))
            .collect()
    };
    let j = m.rules.judge(&e, batch(2)).await;
    assert!(j
        .decided
        .iter()
        .all(|(_, v)| matches!(v, Verdict::Absorb { .. })));
    let j = m.rules.judge(&e, batch(2)).await;
    assert_eq!(j.decided.len(), 2);
    for (_, v) in &j.decided {
        match v {
            Verdict::Defer { reason, .. } => {
                assert!(reason.contains("holding area full"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(m.store.kv().list("agg/h/").unwrap().len(), 2);
    std::fs::remove_dir_all(&m.dir).unwrap();
}
