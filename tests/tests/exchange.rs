//! End-to-end: the exchange path under hostile and careless input.
//!
//! * Nothing an integrator can post stalls a proxy: a message too large for
//!   any envelope is refused at the local API; a batch larger than one
//!   envelope is cut by bytes; a message a parent still refuses for its size
//!   becomes a dead letter while everything behind it flows.
//! * Routing hops are checked like sources: a child cannot name IDs outside
//!   its own subtree in a routing list, so it cannot pull another node's
//!   back-channel traffic to itself, within a customer or across customers.

use std::collections::HashSet;
use std::time::Duration;

use http::{Method, StatusCode};
use rsnet_common::client::Target;
use rsnet_common::envelope::{decode_bytes, EnvelopeWriter};
use rsnet_common::model::*;
use rsnet_common::tls::{Role, TlsPaths};
use rsnet_common::MessageId;
use rsnet_demo::{alarm, json_call, metric, send, stored, Spec, Tree};
use rsnet_tests::{tempdir, wait_for, SmallParent};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(90);

fn start(tag: &str, spec: &Spec) -> Tree {
    let mut t = tokio::task::block_in_place(|| Tree::start(&tempdir(tag), spec))
        .unwrap_or_else(|e| panic!("tree did not start: {e}"));
    t.remove_on_drop = true;
    t
}

fn one_mlm_one_proxy() -> Spec {
    Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0))],
        ..Spec::demo()
    }
}

fn alarms(tag: &str, n: usize, text_bytes: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let mut a = alarm(&format!("{tag} {i} {}", "x".repeat(text_bytes)), "db1");
            a["subclass"] = json!(tag);
            a
        })
        .collect()
}

async fn wait_stored(op: &Target, sub: &str, ids: &HashSet<String>) {
    wait_for(
        &format!("{} messages of {sub} stored exactly once", ids.len()),
        LONG,
        || async {
            let got = stored(op, &format!("subclass={sub}")).await.ok()?;
            let seen: Vec<String> = got
                .iter()
                .filter_map(|m| m["id"].as_str().map(str::to_string))
                .collect();
            let set: HashSet<&String> = seen.iter().collect();
            assert_eq!(set.len(), seen.len(), "a message was stored twice");
            ids.iter().all(|i| set.contains(i)).then_some(())
        },
    )
    .await;
}

/// Posts one `data` message with `payload` to a proxy's local API.
async fn post_data(addr: std::net::SocketAddr, payload: String) -> (StatusCode, Value) {
    let m = json!({"kind": "data", "class": "data", "payload": payload});
    json_call(&Target::Plain(addr), Method::POST, "/v1/messages", Some(m))
        .await
        .expect("local API answers")
}

/// Waits until message `id` shows in proxy `p`'s inbox; returns it.
async fn in_inbox(tree: &Tree, p: usize, id: &str) -> Value {
    let t = tree.node_target(p).unwrap();
    wait_for(
        &format!("{id} in {}'s inbox", tree.nodes[p].id),
        LONG,
        || async {
            let (_, v) = json_call(&t, Method::GET, "/v1/inbox?wait=5", None)
                .await
                .ok()?;
            v["messages"]
                .as_array()?
                .iter()
                .find(|m| m["id"] == json!(id))
                .cloned()
        },
    )
    .await
}

async fn status(tree: &Tree, p: usize) -> Value {
    let (s, v) = json_call(
        &tree.node_target(p).unwrap(),
        Method::GET,
        "/v1/status",
        None,
    )
    .await
    .unwrap();
    assert_eq!(s, StatusCode::OK);
    v
}

async fn spool_drains(tree: &Tree, p: usize) {
    wait_for("the spool to drain", LONG, || async {
        (status(tree, p).await["spool"]["messages"].as_u64()? == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_too_big_for_any_envelope_is_refused_at_the_local_api() {
    let tree = start("big", &one_mlm_one_proxy());
    let (op, p) = (tree.operator_target().unwrap(), tree.proxies()[0]);
    let addr = tree.nodes[p].addr.unwrap();
    let (s, v) = post_data(addr, "y".repeat(2 << 20)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    let why = v["error"].as_str().unwrap_or_default();
    assert!(why.contains("1048576") && why.contains("bulk"), "{why}");
    // Nothing of it was spooled, and what follows flows.
    let ids: HashSet<String> = send(addr, &alarms("afterbig", 20, 10))
        .await
        .unwrap()
        .into_iter()
        .collect();
    wait_stored(&op, "afterbig", &ids).await;
    spool_drains(&tree, p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_one_envelope_is_cut_by_bytes() {
    let mut tree = start("wide", &one_mlm_one_proxy());
    let (op, p) = (tree.operator_target().unwrap(), tree.proxies()[0]);
    let addr = tree.nodes[p].addr.unwrap();
    // With the MLM down, 1,024 alarms of 20 KiB (20 MiB, more than one
    // envelope takes) pile up in the spool, so the forwarder's first batch is all of them.
    tokio::task::block_in_place(|| tree.kill9(1));
    let mut ids = HashSet::new();
    for chunk in alarms("wide", 1024, 20 * 1024).chunks(128) {
        ids.extend(send(addr, chunk).await.expect("spooled"));
    }
    assert_eq!(ids.len(), 1024);
    tokio::task::block_in_place(|| tree.restart(1)).expect("MLM back on its port");
    wait_stored(&op, "wide", &ids).await;
    spool_drains(&tree, p).await;
}

/// A tree of an appserver alone and one proxy, `acme.p1`, under a
/// [`SmallParent`] with the MLM identity `parent` and the part limit
/// `max_part`, reading the compact form from the start if `compact`.
async fn proxy_under_small_parent(
    tag: &str,
    parent: &str,
    max_part: usize,
    compact: bool,
) -> (Tree, SmallParent, usize) {
    let spec = Spec {
        mlms: vec![],
        proxies: vec![],
        ..Spec::demo()
    };
    let mut tree = start(tag, &spec);
    let f = tree.pki.issue(parent, Role::Mlm, &[], &[]).unwrap();
    let small = SmallParent::start(
        TlsPaths {
            ca: tree.pki.ca(),
            cert: f.cert,
            key: f.key,
            crl: None,
        },
        max_part,
    )
    .await;
    small
        .compact
        .store(compact, std::sync::atomic::Ordering::SeqCst);
    let url = format!("https://127.0.0.1:{}", small.addr.port());
    let p = tokio::task::block_in_place(|| {
        let p = tree.add_proxy(&spec, "p1", parent, &url)?;
        tree.launch(p).map(|_| p)
    })
    .expect("proxy under the small parent");
    (tree, small, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_a_parent_refuses_for_size_becomes_a_dead_letter_while_the_rest_flows() {
    // A parent whose part limit (64 KiB) is below this version's.
    let (mut tree, parent, p) =
        proxy_under_small_parent("dead", "acme.old", 64 * 1024, false).await;
    let addr = tree.nodes[p].addr.unwrap();
    let (s, v) = post_data(addr, "z".repeat(200 * 1024)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "it travels in this version: {v}");
    let big_id = v["ids"][0].as_str().unwrap().to_string();
    let rest: HashSet<String> = send(addr, &alarms("behind", 20, 10))
        .await
        .unwrap()
        .into_iter()
        .collect();
    // The big one and the rest may travel in envelopes in flight at once:
    // wait for both outcomes, in whichever order they come.
    wait_for(
        "the messages behind it to arrive and the big one refused",
        LONG,
        || async {
            let a = parent.accepted.lock().unwrap();
            let refused = parent.refused.load(std::sync::atomic::Ordering::SeqCst) >= 1;
            (refused && rest.iter().all(|i| a.contains(i))).then_some(())
        },
    )
    .await;
    assert!(!parent.accepted.lock().unwrap().contains(&big_id));
    // It never said it reads the compact form, so it was never sent it.
    assert_eq!(
        parent
            .compact_envelopes
            .0
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert_eq!(
        parent
            .compact_envelopes
            .1
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    spool_drains(&tree, p).await;
    let st = status(&tree, p).await;
    let dead = &st["dead_letters"];
    assert_eq!(dead["count"], json!(1), "{st}");
    assert_eq!(dead["recent"][0]["id"], json!(big_id));
    assert_eq!(dead["recent"][0]["class"], json!("data"));
    let reason = dead["recent"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("413"), "{reason}");
    let t = tree.node_target(p).unwrap();
    assert_eq!(
        metric(&t, "rsnet_forward_dead_letters_total")
            .await
            .unwrap(),
        1.0
    );
    // The dead letter survives a restart of the proxy.
    tokio::task::block_in_place(|| {
        tree.kill9(p);
        tree.restart(p)
    })
    .unwrap();
    assert_eq!(status(&tree, p).await["dead_letters"]["count"], json!(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_that_stops_reading_the_compact_form_is_sent_the_full_one_and_nothing_is_lost() {
    use std::sync::atomic::Ordering::SeqCst;
    let (tree, parent, p) = proxy_under_small_parent("form", "acme.mlmx", 1 << 20, true).await;
    let addr = tree.nodes[p].addr.unwrap();
    // Sends `n` alarms and waits until the parent accepted every one.
    let travels = |tag: &'static str, n: usize| {
        let accepted = parent.accepted.clone();
        async move {
            let ids: HashSet<String> = send(addr, &alarms(tag, n, 10))
                .await
                .unwrap()
                .into_iter()
                .collect();
            wait_for("the messages at the parent", LONG, || async {
                let a = accepted.lock().unwrap();
                ids.iter().all(|i| a.contains(i)).then_some(())
            })
            .await
        }
    };
    // It says it reads the compact form: after the first answer, that is what comes.
    travels("first", 1).await;
    travels("compact", 50).await;
    assert!(
        parent.compact_envelopes.0.load(SeqCst) >= 1,
        "compact envelopes accepted"
    );
    // Replaced by an older version: it refuses compact parts (400) and no
    // longer advertises. The proxy must send the same messages in full,
    // not halve them into dead letters.
    parent.compact.store(false, SeqCst);
    travels("after", 50).await;
    spool_drains(&tree, p).await;
    let st = status(&tree, p).await;
    assert_eq!(st["dead_letters"]["count"], json!(0), "{st}");
    // Only envelopes already on their way were refused before the proxy learned.
    assert!(parent.compact_envelopes.1.load(SeqCst) <= 4);
}

/// An alarm from `origin` with `hops` in its routing list.
fn alarm_msg(origin: &str, hops: &[&str]) -> Message {
    let mut m = Message::forward(
        origin.parse().unwrap(),
        "alarm",
        Some("hijack"),
        Content::Alarm(Alarm {
            severity: Severity::Major,
            state: AlarmState::Raised,
            support_instance: None,
            text: "routing test".into(),
            data: None,
        }),
    );
    m.header.routing = hops
        .iter()
        .map(|h| Hop {
            id: h.parse().unwrap(),
            time: Timestamp::now(),
        })
        .collect();
    m
}

/// Posts `msgs` as `who` to the node at `addr`; the answers by message ID.
async fn post_as(
    tree: &Tree,
    who: &str,
    addr: std::net::SocketAddr,
    msgs: &[Message],
) -> std::collections::HashMap<MessageId, Response> {
    post_as_reading(tree, who, addr, msgs, false)
        .await
        .0
        .answers()
}

/// [`post_as`], saying it reads compact replies if `compact`; the reply's
/// control part and the reply body's length.
async fn post_as_reading(
    tree: &Tree,
    who: &str,
    addr: std::net::SocketAddr,
    msgs: &[Message],
    compact: bool,
) -> (rsnet_common::envelope::Control, usize) {
    use http_body_util::BodyExt;
    let f = tree.pki.issue(who, Role::Proxy, &[], &[]).unwrap();
    let t = Target::Tls {
        base: format!("https://127.0.0.1:{}", addr.port()),
        config: std::sync::Arc::new(
            rsnet_common::tls::client_config(&TlsPaths {
                ca: tree.pki.ca(),
                cert: f.cert,
                key: f.key,
                crl: None,
            })
            .unwrap(),
        ),
    };
    let mut w = EnvelopeWriter::new();
    for m in msgs {
        w.message(m);
    }
    let (ct, body) = w.finish();
    let headers = if compact {
        vec![(
            rsnet_common::envelope::ACCEPT_FORM,
            rsnet_common::envelope::COMPACT.to_string(),
        )]
    } else {
        Vec::new()
    };
    let r = rsnet_common::client::send(
        &t,
        Method::POST,
        "/rs/v1/exchange",
        Some((&ct, body)),
        &headers,
    )
    .await
    .unwrap();
    let s = r.status();
    let b = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let boundary = String::from_utf8_lossy(&b)
        .lines()
        .next()
        .unwrap_or("")
        .trim_start_matches("--")
        .to_string();
    let len = b.len();
    let control = decode_bytes(&format!("multipart/related; boundary={boundary}"), b)
        .await
        .unwrap()
        .control;
    (control, len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_reads_compact_replies_is_told_the_rest_was_accepted_and_the_exceptions_by_id()
{
    let tree = start("compact-replies", &one_mlm_one_proxy());
    let op = tree.operator_target().unwrap();
    let mlm = tree.nodes[tree.index("acme.mlm1").unwrap()].addr.unwrap();
    let batch = || {
        let mut msgs: Vec<Message> = (0..100)
            .map(|_| alarm_msg("acme.p9", &["acme.p9"]))
            .collect();
        // One message whose source is another proxy: rejected for good.
        msgs.insert(40, alarm_msg("acme.p1", &["acme.p9"]));
        msgs
    };
    let ids = |msgs: &[Message]| msgs.iter().map(|m| m.header.id).collect::<Vec<_>>();

    let listed = batch();
    let (full, full_len) = post_as_reading(&tree, "acme.p9", mlm, &listed, false).await;
    assert!(!full.accepted_rest);
    assert_eq!(full.accepted.len(), 100, "an older child gets every ID");

    let short = batch();
    let (compact, compact_len) = post_as_reading(&tree, "acme.p9", mlm, &short, true).await;
    assert!(compact.accepted_rest, "{compact:?}");
    assert!(compact.accepted.is_empty(), "no acceptance listed by ID");
    let answers = compact.answers_for(ids(&short));
    assert_eq!(answers.len(), 101);
    rejected_because(&answers, &short[40], "source");
    for (i, m) in short.iter().enumerate() {
        if i != 40 {
            assert_eq!(answers[&m.header.id].status, Status::Accepted, "{i}");
        }
    }
    assert!(
        compact_len + 100 * 36 < full_len,
        "compact reply {compact_len} B, listed {full_len} B"
    );
    // What the reply calls accepted was stored: both batches but the two
    // spoofed messages.
    let want: HashSet<String> = listed
        .iter()
        .chain(short.iter())
        .filter(|m| {
            m.header
                .source()
                .is_some_and(|s| s.origin.as_str() == "acme.p9")
        })
        .map(|m| m.header.id.to_string())
        .collect();
    assert_eq!(want.len(), 200);
    wait_stored(&op, "hijack", &want).await;
}

fn rejected_because(a: &std::collections::HashMap<MessageId, Response>, m: &Message, needle: &str) {
    let r = &a[&m.header.id];
    assert_eq!(r.status, Status::Rejected, "{r:?}");
    assert!(r.retry_after.is_none(), "for good: {r:?}");
    let why = r.reason.as_deref().unwrap_or("");
    assert!(why.contains(needle), "{why}");
}

/// Waits until the appserver's topology lists `id` (before that it has no
/// route to it).
async fn heard_of(op: &Target, id: &str) {
    wait_for(&format!("{id} in the topology"), LONG, || async {
        let (_, v) = json_call(op, Method::GET, "/api/v1/components", None)
            .await
            .ok()?;
        v["components"]
            .as_array()?
            .iter()
            .any(|c| c["id"] == id)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_hops_outside_the_senders_subtree_cannot_pull_back_channel_traffic() {
    let tree = start("hijack", &Spec::demo());
    let op = tree.operator_target().unwrap();
    let (app, mlm2) = (tree.nodes[0].addr.unwrap(), tree.nodes[2].addr.unwrap());
    let p1 = tree.index("acme.p1").unwrap();
    // Every proxy has been heard (cold-start notices).
    heard_of(&op, "acme.p1").await;

    // acme.p4 (under acme.mlm2) names acme.p1 in its routing list: at its MLM,
    // and straight at the appserver; then a proxy of another customer.
    let (via_mlm, direct, foreign) = (
        alarm_msg("acme.p4", &["acme.p1", "acme.p4"]),
        alarm_msg("acme.p4", &["acme.p1", "acme.p4"]),
        alarm_msg("acme.p4", &["globex.p1", "acme.p4"]),
    );
    let good = alarm_msg("acme.p4", &["acme.p4"]);
    let a = post_as(
        &tree,
        "acme.p4",
        mlm2,
        &[via_mlm.clone(), foreign.clone(), good.clone()],
    )
    .await;
    rejected_because(
        &a,
        &via_mlm,
        "routing hop acme.p1 is outside the subtree of authenticated peer acme.p4",
    );
    rejected_because(&a, &foreign, "routing hop globex.p1");
    assert_eq!(a[&good.header.id].status, Status::Accepted);
    let a = post_as(&tree, "acme.p4", app, std::slice::from_ref(&direct)).await;
    rejected_because(&a, &direct, "routing hop acme.p1");
    // A message that has collected every hop it may cannot pass an MLM, which would add one more.
    let labels: Vec<String> = (0..rsnet_common::limits::MAX_ROUTING_HOPS)
        .map(|i| format!("acme.p4.h{i}"))
        .collect();
    let hops: Vec<&str> = labels.iter().map(String::as_str).collect();
    let deep = alarm_msg("acme.p4", &hops);
    let a = post_as(&tree, "acme.p4", mlm2, std::slice::from_ref(&deep)).await;
    rejected_because(&a, &deep, "cannot travel further");

    // A message for acme.p1 still goes through acme.mlm1 and reaches it.
    let (s, v) = json_call(
        &op,
        Method::POST,
        "/api/v1/messages",
        Some(json!({"to": "acme.p1", "kind": "data", "class": "config", "payload": "after the hijack"})),
    )
    .await
    .unwrap();
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let got = in_inbox(&tree, p1, &id).await;
    let hops: Vec<&str> = got["routing"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["id"].as_str())
        .collect();
    assert_eq!(hops, ["provider.app", "acme.mlm1"], "{got}");
    // The topology was not taught a false path either.
    let (_, v) = json_call(&op, Method::GET, "/api/v1/components", None)
        .await
        .unwrap();
    let comps = v["components"].as_array().unwrap();
    let path = |id: &str| {
        comps
            .iter()
            .find(|c| c["id"] == id)
            .map(|c| c["parent_path"].clone())
    };
    assert_eq!(path("acme.p1"), Some(json!(["acme.mlm1"])));
    assert!(path("globex.p1").is_none(), "{v}");
    assert!(path("acme.p4.h0").is_none(), "{v}");
}

/// Posts `batch` (keyed) until it is answered, resending the same body each
/// time the proxy does not answer (killed, restarting); returns the IDs.
async fn post_until_answered(addr: std::net::SocketAddr, batch: &[Value]) -> Vec<String> {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let r = tokio::time::timeout(Duration::from_secs(10), send(addr, batch)).await;
        match r {
            Ok(Ok(ids)) => return ids,
            _ => {
                assert!(std::time::Instant::now() < deadline, "proxy never answered");
                tokio::time::sleep(Duration::from_millis(50)).await; // proxy down: resend
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_a_proxy_mid_post_stores_every_keyed_message_exactly_once() {
    let tree = std::sync::Arc::new(std::sync::Mutex::new(start("keys", &one_mlm_one_proxy())));
    let (op, p, addr) = {
        let t = tree.lock().unwrap();
        let p = t.proxies()[0];
        (t.operator_target().unwrap(), p, t.nodes[p].addr.unwrap())
    };
    const N: usize = 3000;
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let integrator = {
        let answered = answered.clone();
        tokio::spawn(async move {
            let mut ids = std::collections::HashMap::new();
            for start in (0..N).step_by(50) {
                let batch: Vec<Value> = (start..start + 50)
                    .map(|i| {
                        let mut a = alarm(&format!("keyed {i}"), "db1");
                        a["subclass"] = json!("keyed");
                        a["key"] = json!(format!("integrator-key-{i}"));
                        a
                    })
                    .collect();
                let got = post_until_answered(addr, &batch).await;
                assert_eq!(got.len(), 50);
                for (i, id) in (start..).zip(got) {
                    ids.insert(i, id);
                }
                answered.fetch_add(50, std::sync::atomic::Ordering::SeqCst);
            }
            ids
        })
    };
    // Kill -9 the proxy at a random moment while the integrator posts, twice.
    for round in 1..=2 {
        let at = round * N / 3 + fastrand::usize(0..200);
        wait_for("traffic before the kill", LONG, || async {
            (answered.load(std::sync::atomic::Ordering::SeqCst) >= at).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..20))).await; // the random moment
        let tree = tree.clone();
        tokio::task::block_in_place(move || {
            let mut t = tree.lock().unwrap();
            t.kill9(p);
            t.restart(p).expect("proxy back on its port");
        });
    }
    let ids = integrator.await.unwrap();
    let unique: HashSet<&String> = ids.values().collect();
    assert_eq!(unique.len(), N, "each key has its own message ID");
    let want: HashSet<String> = ids.values().cloned().collect();
    wait_stored(&op, "keyed", &want).await;
    // Every key's text is stored exactly once, whatever the resends.
    let all = stored(&op, "subclass=keyed").await.unwrap();
    let mut per_text = std::collections::HashMap::new();
    for m in &all {
        *per_text
            .entry(m["content"]["text"].as_str().unwrap_or("").to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(per_text.len(), N);
    let twice: Vec<_> = per_text.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored twice: {twice:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_message_that_could_never_travel_down_is_refused() {
    let tree = start("bigdown", &one_mlm_one_proxy());
    let op = tree.operator_target().unwrap();
    let post = |body: Value| {
        let op = op.clone();
        async move {
            json_call(&op, Method::POST, "/api/v1/messages", Some(body))
                .await
                .expect("operator API answers")
        }
    };
    // A payload that fits the API body but grows past one part once escaped as XML.
    let (s, v) = post(
        json!({"to": "acme.p1", "kind": "data", "class": "config", "payload": "<".repeat(400_000)}),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert!(
        v["error"].as_str().unwrap_or("").contains("content is"),
        "{v}"
    );
    // Destinations whose list is larger than a header part.
    let many: Vec<String> = (0..2000)
        .map(|i| format!("acme.p1.{}{i}", "x".repeat(180)))
        .collect();
    let (s, v) = post(json!({"to": many, "kind": "data", "class": "config", "payload": "x"})).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert!(
        v["error"].as_str().unwrap_or("").contains("header is"),
        "{v}"
    );
    // Nothing was queued, and an ordinary message still goes through (once
    // the appserver has heard of acme.p1: before that it has no route).
    heard_of(&op, "acme.p1").await;
    let (s, v) =
        post(json!({"to": "acme.p1", "kind": "data", "class": "config", "payload": "ok"})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    in_inbox(&tree, tree.proxies()[0], &id).await;
}
