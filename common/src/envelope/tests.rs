use super::*;
use crate::model::*;

fn alarm(text: &str) -> Message {
    Message::forward(
        "acme.p7".parse().unwrap(),
        "alarm",
        None,
        Content::Alarm(Alarm {
            severity: Severity::Minor,
            state: AlarmState::Raised,
            support_instance: None,
            text: text.into(),
            data: None,
        }),
    )
}

fn rt<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn round_trip_with_control() {
    let msgs: Vec<Message> = (0..5).map(|i| alarm(&format!("m{i}"))).collect();
    let mut w = EnvelopeWriter::new();
    let control = Control {
        wait_ms: Some(2500),
        acks: vec![MessageId::new(), MessageId::new()],
        ..Default::default()
    };
    w.control(&control);
    for m in &msgs {
        w.message(m);
    }
    let (ct, body) = w.finish();
    let d = rt(decode_bytes(&ct, body)).unwrap();
    assert_eq!(d.control, control);
    assert!(d.rejected.is_empty());
    let back: Vec<Message> = d.items.iter().map(|i| i.message().unwrap()).collect();
    assert_eq!(back, msgs);
}

#[test]
fn reply_answers_round_trip_compactly() {
    let ok: Vec<MessageId> = (0..1000).map(|_| MessageId::new()).collect();
    let later = Response::retry(MessageId::new(), "throttled", Duration::from_millis(1500));
    let never = Response::rejected(MessageId::new(), "source outside subtree");
    let window = Response {
        retry_class: Some("bulk".into()),
        ..Response::retry(MessageId::new(), "bulk window", Duration::from_secs(60))
    };
    let mut c = Control::default();
    for id in &ok {
        c.answer(Response::accepted(*id, None));
    }
    c.answer(later.clone());
    c.answer(never.clone());
    c.answer(window.clone());
    let mut w = EnvelopeWriter::new();
    w.control(&c);
    let (ct, body) = w.finish();
    // One ID and a space per acceptance, plus framing and the two exceptions.
    assert!(body.len() < 1000 * 37 + 600, "{} bytes", body.len());
    let d = rt(decode_bytes(&ct, body)).unwrap();
    let answers = d.control.answers();
    assert_eq!(answers.len(), 1003);
    assert!(ok.iter().all(|id| answers[id].status == Status::Accepted));
    assert_eq!(answers[&later.request], later);
    assert_eq!(answers[&never.request], never);
    assert_eq!(answers[&window.request], window, "retry-class travels");
    // To a child that reads compact replies: no acceptance by ID, the same
    // answers for the messages it sent.
    let mut short = c.clone();
    short.accept_rest();
    let mut w = EnvelopeWriter::new();
    w.control(&short);
    let (ct, body) = w.finish();
    assert!(body.len() < 600, "{} bytes", body.len());
    let d = rt(decode_bytes(&ct, body)).unwrap();
    assert!(d.control.accepted_rest && d.control.accepted.is_empty());
    let sent = ok
        .iter()
        .copied()
        .chain([later.request, never.request, window.request]);
    assert_eq!(d.control.answers_for(sent), answers);
    // "The rest" is the messages the sender says it sent, no others.
    assert_eq!(d.control.answers_for([]).len(), 3);
    // Without the shorthand, a message the reply does not name stays unanswered.
    let stranger = MessageId::new();
    assert!(!c.answers_for([stranger]).contains_key(&stranger));
    // `accepted` takes one value.
    let e = crate::envelope::wire::decode_control(br#"<exchange accepted="all"/>"#).unwrap_err();
    assert!(e.to_string().contains("exchange/@accepted"), "{e}");
    // A retry-class that is not a class label is refused, named.
    let id = MessageId::new();
    let xml = format!("<exchange><response request=\"{id}\" status=\"rejected\" retry-after-ms=\"5\" retry-class=\"Not A Class\"/></exchange>");
    let e = crate::envelope::wire::decode_control(xml.as_bytes()).unwrap_err();
    assert!(e.to_string().contains("retry-class"), "{e}");
}

#[test]
fn control_part_limits_and_bad_ids_are_malformed() {
    let ids = vec![MessageId::new().to_string(); crate::limits::MAX_BATCH_MESSAGES + 1].join(" ");
    for xml in [
        format!("<exchange><accepted>{ids}</accepted></exchange>"),
        "<exchange><accepted>not-an-id</accepted></exchange>".to_string(),
        "<exchange><ack>x</ack></exchange>".to_string(),
        "<other/>".to_string(),
    ] {
        let b = "B";
        let body = format!(
            "--{b}\r\nContent-Type: application/xml\r\nContent-ID: <exchange>\r\n\r\n{xml}\r\n--{b}--\r\n"
        );
        let e = rt(decode_bytes(
            &format!("multipart/related; boundary={b}"),
            Bytes::from(body),
        ))
        .unwrap_err();
        assert!(matches!(e, EnvelopeError::Malformed(_)), "{xml}: {e}");
    }
}

#[test]
fn bad_header_rejects_only_that_message() {
    let good = alarm("ok");
    let bad = alarm("bad");
    let mut w = EnvelopeWriter::new();
    w.message(&good);
    let h = wire::encode_header(&bad.header).replace("class=\"alarm\"", "class=\"NOPE\"");
    w.raw(&bad.header.id, h.as_bytes(), b"<alarm/>");
    let (ct, body) = w.finish();
    let d = rt(decode_bytes(&ct, body)).unwrap();
    assert_eq!(d.items.len(), 1);
    assert_eq!(d.rejected.len(), 1);
    assert_eq!(d.rejected[0].id, bad.header.id);
    assert!(d.rejected[0].error.to_string().contains("header/@class"));
}

#[test]
fn envelope_level_errors() {
    let e = rt(decode_bytes("application/json", Bytes::from_static(b"{}"))).unwrap_err();
    assert_eq!(e.status(), http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let e = rt(decode_bytes(
        "multipart/related; boundary=x",
        Bytes::from_static(b"garbage"),
    ))
    .unwrap_err();
    assert_eq!(e.status(), http::StatusCode::BAD_REQUEST, "{e}");
    // A header without its content.
    let m = alarm("x");
    let body = format!(
        "--x\r\nContent-ID: <{id}.header>\r\n\r\n{h}\r\n--x--\r\n",
        id = m.header.id,
        h = wire::encode_header(&m.header)
    );
    let e = rt(decode_bytes("multipart/related; boundary=x", body.into())).unwrap_err();
    assert!(matches!(e, EnvelopeError::Malformed(_)), "{e}");
    // A part over the limit.
    let big = "a".repeat(MAX_PART_BYTES as usize + 10);
    let body = format!(
        "--x\r\nContent-ID: <{}.header>\r\n\r\n{big}\r\n--x--\r\n",
        m.header.id
    );
    let e = rt(decode_bytes("multipart/related; boundary=x", body.into())).unwrap_err();
    assert_eq!(e.status(), http::StatusCode::PAYLOAD_TOO_LARGE, "{e}");
}

#[test]
fn random_input_never_panics() {
    // A property-style sweep: random bytes, random truncations and random
    // byte flips of a valid envelope must all end in Ok or Err, never a panic.
    let mut w = EnvelopeWriter::new();
    w.control(&Control {
        wait_ms: Some(1),
        acks: vec![MessageId::new()],
        accepted: vec![MessageId::new(), MessageId::new()],
        accepted_rest: false,
        responses: vec![Response::retry(
            MessageId::new(),
            "busy",
            Duration::from_secs(1),
        )],
    });
    for i in 0..3 {
        w.message(&alarm(&format!("m{i}")));
    }
    let (ct, body) = w.finish();
    let mut rng = fastrand::Rng::with_seed(7);
    rt(async {
        for _ in 0..2000 {
            let mut b = body.to_vec();
            match rng.u8(0..3) {
                0 => b.truncate(rng.usize(0..b.len())),
                1 => {
                    for _ in 0..rng.usize(1..8) {
                        let i = rng.usize(0..b.len());
                        b[i] = rng.u8(..);
                    }
                }
                _ => b = (0..rng.usize(0..512)).map(|_| rng.u8(..)).collect(),
            }
            if let Ok(d) = decode_bytes(&ct, b.into()).await {
                for item in &d.items {
                    let _ = item.content();
                }
            }
        }
    });
    for _ in 0..2000 {
        let len = rng.usize(0..256);
        let b: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        let _ = wire::decode_header(&b);
        let _ = wire::decode_content(&b, ContentKind::Alarm);
    }
}

#[test]
fn print_example_for_docs() {
    // `cargo test -p rsnet-common print_example -- --nocapture` prints the
    // worked example in docs/PROTOCOL.md.
    let mut m = alarm("disk /var 95% full");
    m.header.subclass = Some("disk".into());
    m.header.routing.push(Hop {
        id: "acme.p7".parse().unwrap(),
        time: m.header.created,
    });
    for form in [Form::Full, Form::Compact] {
        let mut w = EnvelopeWriter::in_form(form);
        w.message(&m);
        let (ct, body) = w.finish();
        println!("Content-Type: {ct}\n\n{}", String::from_utf8_lossy(&body));
    }
    let mut r = EnvelopeWriter::new();
    let mut answers = Control::default();
    answers.answer(Response::accepted(m.header.id, None));
    r.control(&answers);
    let (ct, body) = r.finish();
    println!("Content-Type: {ct}\n\n{}", String::from_utf8_lossy(&body));
    // The reply to a child that reads compact replies.
    let mut r = EnvelopeWriter::new();
    answers.accept_rest();
    r.control(&answers);
    let (ct, body) = r.finish();
    println!("Content-Type: {ct}\n\n{}", String::from_utf8_lossy(&body));
}

#[test]
fn hop_reasons_are_cut_at_a_character_boundary_both_ways() {
    use crate::envelope::{wire, Control};
    use crate::limits::MAX_REASON_BYTES;
    let mut c = Control::default();
    let long = "é".repeat(MAX_REASON_BYTES); // two bytes each
    c.answer(crate::model::Response::rejected(
        MessageId::new(),
        long.clone(),
    ));
    let xml = wire::encode_control(&c);
    let back = wire::decode_control(xml.as_bytes()).unwrap();
    let r = back.responses[0].reason.as_deref().unwrap();
    assert!(r.len() <= MAX_REASON_BYTES && long.starts_with(r));
    // A peer's longer reason is cut on decode, so decode(encode(x)) == x.
    let raw = format!(
        "<exchange><response request=\"{}\" status=\"rejected\" reason=\"{}\"/></exchange>",
        MessageId::new(),
        "x".repeat(1000)
    );
    let d = wire::decode_control(raw.as_bytes()).unwrap();
    assert_eq!(
        d.responses[0].reason.as_deref().map(str::len),
        Some(MAX_REASON_BYTES)
    );
    assert_eq!(
        wire::decode_control(wire::encode_control(&d).as_bytes()).unwrap(),
        d
    );
}

/// A proxy's alarm as it is spooled: its own hop, stamped at creation.
fn spooled(text: &str) -> Message {
    alarm(text).with_hop(&"acme.p7".parse().unwrap())
}

#[test]
fn the_compact_form_carries_the_same_messages_in_fewer_bytes() {
    let msgs: Vec<Message> = (0..20)
        .map(|i| spooled(&format!("disk {i} full")))
        .collect();
    let control = Control {
        wait_ms: Some(10),
        acks: vec![MessageId::new()],
        ..Default::default()
    };
    let write = |form| {
        let mut w = EnvelopeWriter::in_form(form);
        w.control(&control);
        for m in &msgs {
            w.message(m);
        }
        w.finish()
    };
    let (ct_full, full) = write(Form::Full);
    let (ct, compact) = write(Form::Compact);
    for (ct, body) in [(ct_full, full.clone()), (ct, compact.clone())] {
        let d = rt(decode_bytes(&ct, body)).unwrap();
        assert_eq!(d.control, control);
        assert!(d.rejected.is_empty(), "{:?}", d.rejected);
        let back: Vec<Message> = d.items.iter().map(|i| i.message().unwrap()).collect();
        assert_eq!(back, msgs);
    }
    // No Content-ID but the control part's, no created, no hop time, no source.
    let text = String::from_utf8_lossy(&compact);
    assert_eq!(text.matches("Content-ID").count(), 1, "{text}");
    for absent in ["created=", "time=", "<source", "content="] {
        assert!(!text.contains(absent), "{absent} in {text}");
    }
    let saved = (full.len() - compact.len()) / msgs.len();
    assert!(saved >= 230, "{saved} bytes a message saved");
}

#[test]
fn a_compact_header_keeps_what_cannot_be_derived() {
    let mut m = spooled("x");
    // Created later than its ID, from a support instance, one more hop.
    m.header.created = Timestamp(m.header.created.0 + 5);
    m.header.direction = Direction::Source(Source {
        origin: "acme.p7.si3".parse().unwrap(),
        version: None,
    });
    m.header.routing.push(Hop {
        id: "acme.mlm1".parse().unwrap(),
        time: Timestamp(m.header.created.0 + 9),
    });
    // A class that is not the content kind's name.
    m.header.class = "infrastructure".into();
    let xml = wire::encode_header_compact(&m.header);
    assert!(xml.contains("created=") && xml.contains("<source origin=\"acme.p7.si3\""));
    assert!(xml.contains("content=\"alarm\""), "{xml}");
    assert_eq!(xml.matches("time=").count(), 2, "{xml}");
    assert_eq!(wire::decode_header(xml.as_bytes()).unwrap(), m.header);
    // Written out in full for a parent of an older version: the same header.
    let compact = spooled("y");
    let c = Bytes::from(wire::encode_header_compact(&compact.header));
    assert_eq!(
        wire::full_header(&c),
        Bytes::from(wire::encode_header(&compact.header))
    );
}

#[test]
fn hostile_compact_parts_are_answered_by_id_or_refuse_the_envelope() {
    let good = spooled("good");
    let ct = "multipart/related; boundary=x";
    let part = |body: &str| format!("--x\r\n\r\n\r\n{body}\r\n");
    let good_part = part(&format!(
        "{}{}",
        wire::encode_header_compact(&good.header),
        wire::encode_content(&good.content)
    ));
    // An ID that is not v7 cannot give `created`; a header with neither a
    // source nor a hop names no origin; a bad class. Each is rejected by
    // its ID while the good message travels.
    let v4 = "2f1e6a8c-1b2d-4c3e-8f4a-5b6c7d8e9f01";
    let no_origin = MessageId::new();
    let bad_class = MessageId::new();
    // No `content`, and a class that names no kind to take it from.
    let no_kind = MessageId::new();
    let body = format!(
        "{good_part}{}{}{}{}--x--\r\n",
        part(&format!("<header id=\"{no_kind}\" class=\"disk\"><routing><hop id=\"acme.p7\"/></routing></header><alarm severity=\"minor\" state=\"raised\"><text>t</text></alarm>")),
        part(&format!("<header id=\"{v4}\" class=\"alarm\" content=\"alarm\"><routing><hop id=\"acme.p7\"/></routing></header><alarm severity=\"minor\" state=\"raised\"><text>t</text></alarm>")),
        part(&format!("<header id=\"{no_origin}\" class=\"alarm\" content=\"alarm\"/><alarm severity=\"minor\" state=\"raised\"><text>t</text></alarm>")),
        part(&format!("<header id=\"{bad_class}\" class=\"NOPE\" content=\"alarm\"><routing><hop id=\"acme.p7\"/></routing></header>")),
    );
    let d = rt(decode_bytes(ct, body.into())).unwrap();
    assert_eq!(d.items.len(), 1);
    assert_eq!(d.items[0].message().unwrap(), good);
    let mut rejected: Vec<String> = d.rejected.iter().map(|r| r.id.to_string()).collect();
    rejected.sort();
    let mut want = vec![
        v4.to_string(),
        no_origin.to_string(),
        bad_class.to_string(),
        no_kind.to_string(),
    ];
    want.sort();
    assert_eq!(rejected, want);
    assert!(d
        .rejected
        .iter()
        .any(|r| r.error.to_string().contains("v7")));
    assert!(d
        .rejected
        .iter()
        .any(|r| r.id == no_kind && r.error.to_string().contains("header/@content")));
    // A part that is not a header at all, or whose header never ends and
    // has no readable ID, cannot be answered: the envelope is refused.
    for junk in [
        "not xml at all",
        "<alarm/>",
        "<header class=\"alarm\"><routing>",
    ] {
        let body = format!("{good_part}{}--x--\r\n", part(junk));
        let e = rt(decode_bytes(ct, body.into())).unwrap_err();
        assert_eq!(e.status(), http::StatusCode::BAD_REQUEST, "{junk}: {e}");
    }
    // A compact part after a header that waits for its content.
    let body = format!(
        "--x\r\nContent-ID: <{id}.header>\r\n\r\n{h}\r\n{good_part}--x--\r\n",
        id = good.header.id,
        h = wire::encode_header(&good.header)
    );
    assert!(rt(decode_bytes(ct, body.into())).is_err());
}

#[test]
fn a_message_too_large_for_one_compact_part_travels_in_two() {
    let big = spooled(&"b".repeat(MAX_PART_BYTES as usize - 80));
    let small = spooled("s");
    let mut w = EnvelopeWriter::in_form(Form::Compact);
    w.message(&big).message(&small);
    let (ct, body) = w.finish();
    let text = String::from_utf8_lossy(&body);
    assert_eq!(text.matches("Content-ID").count(), 2);
    let d = rt(decode_bytes(&ct, body)).unwrap();
    // (Its text is over the text limit: the content is compared as bytes.)
    let back: Vec<Item> = d.items;
    assert_eq!(back, vec![Item::new(&big), Item::new(&small)]);
}
