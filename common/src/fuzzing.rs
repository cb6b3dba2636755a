//! The properties the fuzz targets check (`fuzz/fuzz_targets/`), in one
//! place: the fuzz targets call them under libFuzzer (nightly, long runs),
//! and the smoke test (`common/tests/fuzz_smoke.rs`) runs them in CI over
//! the seed corpora and their random mutations. Each takes arbitrary
//! bytes and panics only if a parser breaks its contract: a parser must
//! never panic, and whatever it accepts must survive a round trip.

use crate::envelope::wire::{
    decode_content, decode_control, decode_header, decode_received_header, encode_content,
    encode_control, encode_header, encode_header_compact,
};
use crate::envelope::{decode_bytes, EnvelopeWriter, Form};
use crate::model::{Content, ContentKind, Data, Encoding};
use crate::release::{self, Report};

/// A message header (full or compact): decodes, or is refused; re-encodes
/// in either form to the same header; where its bytes take one more hop
/// in place, they decode to the same header with that hop. What the
/// narrow lexer takes, it reads as quick-xml does (read whole, and read as
/// a compact part's leading header).
pub fn header(data: &[u8]) {
    for leading in [false, true] {
        if let Err(e) = crate::envelope::wire::narrow_reading_agrees(data, leading) {
            panic!(
                "the lexers differ on {:?} (leading: {leading}):\n{e}",
                String::from_utf8_lossy(data)
            );
        }
    }
    if let Ok((h, raw)) = decode_received_header(&bytes::Bytes::copy_from_slice(data)) {
        for xml in [encode_header(&h), encode_header_compact(&h)] {
            assert_eq!(decode_header(xml.as_bytes()).as_ref(), Ok(&h), "{xml}");
        }
        if let Some(raw) = raw {
            let hop = crate::model::Hop {
                id: "fuzz.hop".parse().expect("a valid ID"),
                time: crate::model::Timestamp(1_700_000_000_123),
            };
            let mut want = h.clone();
            want.routing.push(hop.clone());
            let spliced = raw.with_hop(&hop, h.created);
            assert_eq!(
                decode_header(&spliced).as_ref(),
                Ok(&want),
                "{}",
                String::from_utf8_lossy(&spliced)
            );
        }
    }
}

/// The control part `<exchange>`: acks, wait hint, hop answers.
pub fn control(data: &[u8]) {
    if let Ok(c) = decode_control(data) {
        let xml = encode_control(&c);
        assert_eq!(decode_control(xml.as_bytes()).as_ref(), Ok(&c), "{xml}");
    }
}

/// A content element of the kind the first byte picks: the hand reader
/// and the general one agree, and what decodes round-trips.
pub fn content(data: &[u8]) {
    let Some((&k, xml)) = data.split_first() else {
        return;
    };
    let kind = ContentKind::ALL[k as usize % ContentKind::ALL.len()];
    // The hand reader of alarms and events answers as the general one does.
    let general = crate::envelope::wire::decode_content_serde(xml, kind);
    match (decode_content(xml, kind), &general) {
        (Ok(a), Ok(b)) => assert_eq!(&a, b),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("by hand {a:?}, the general way {b:?}"),
    }
    if let Ok(c) = general {
        let again = encode_content(&c);
        assert_eq!(
            decode_content(again.as_bytes(), kind).as_ref(),
            Ok(&c),
            "{again}"
        );
    }
}

/// A whole envelope body (boundary `B`, either form or both mixed): it is
/// read the same whole and in chunks, and what decodes re-encodes in each
/// form and decodes to the same control part and items.
pub fn envelope(data: &[u8]) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    let body = bytes::Bytes::copy_from_slice(data);
    let whole = rt.block_on(decode_bytes("multipart/related; boundary=B", body));
    // The framing reader gives the same answer however the body arrives
    // (the first byte picks the chunk size).
    let chunk = data.first().map_or(1, |b| usize::from(*b % 17) + 1);
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = data
        .chunks(chunk)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let chunked = rt.block_on(crate::envelope::decode(
        "multipart/related; boundary=B",
        futures_util::stream::iter(chunks),
    ));
    match (&whole, &chunked) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.control, b.control);
            assert_eq!(a.items, b.items);
            assert_eq!(a.rejected.len(), b.rejected.len());
        }
        (Err(a), Err(b)) => assert_eq!(a.status(), b.status(), "{a} / {b}"),
        (a, b) => panic!(
            "whole: {:?}, in chunks of {chunk}: {:?}",
            a.is_ok(),
            b.is_ok()
        ),
    }
    let Ok(d) = whole else {
        return;
    };
    for i in &d.items {
        let _ = i.content();
    }
    for form in [Form::Full, Form::Compact] {
        let mut w = EnvelopeWriter::in_form(form);
        w.control(&d.control);
        for i in &d.items {
            w.item(i);
        }
        let (ct, body) = w.finish();
        let again = rt
            .block_on(decode_bytes(&ct, body))
            .expect("re-encoded envelope decodes");
        assert_eq!(again.control, d.control);
        assert_eq!(again.items, d.items, "{form:?}");
        for (a, b) in again.items.iter().zip(&d.items) {
            assert_eq!(encode_header(&a.header), encode_header(&b.header));
        }
    }
}

/// A zstd-compressed envelope body, as a child or parent may send it: the
/// decompressing reader never panics and never yields a byte past its
/// limit, however the bytes are split into chunks (the first byte picks
/// the chunk size); and any bytes compress and come back as they were.
pub fn inflate(data: &[u8]) {
    use crate::envelope::encoding::{compress, Coding, Inflate};
    use futures_util::StreamExt;
    const LIMIT: u64 = 256 * 1024;
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    let chunks = |b: &[u8]| {
        let size = usize::from(k).max(1) * 17;
        let v: Vec<Result<bytes::Bytes, std::io::Error>> = b
            .chunks(size)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        futures_util::stream::iter(v)
    };
    rt.block_on(async {
        let _ = crate::envelope::decode_coded(
            "multipart/related; boundary=B",
            Coding::Zstd,
            LIMIT,
            chunks(rest),
        )
        .await;
        if let Ok(mut s) = Inflate::new(chunks(rest), LIMIT) {
            let mut n = 0u64;
            while let Some(Ok(c)) = s.next().await {
                n += c.len() as u64;
                assert!(n <= LIMIT, "inflated {n} bytes past the {LIMIT}-byte limit");
            }
        }
        let z = compress(rest).expect("compress");
        let mut s = Inflate::new(chunks(&z), rest.len() as u64).expect("decoder");
        let mut back = Vec::new();
        while let Some(c) = s.next().await {
            back.extend_from_slice(&c.expect("own frame inflates"));
        }
        assert_eq!(back, rest);
    });
}

/// Transfers: release offers, reports, cancellations, paths and the
/// upload and range headers.
pub fn transfer(data: &[u8]) {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let mime = [
        release::OFFER_MIME,
        release::REPORT_MIME,
        release::CANCEL_MIME,
    ][k as usize % 3];
    let c = Content::Data(Data {
        mime: mime.into(),
        encoding: Encoding::Text,
        payload: bytes::Bytes::copy_from_slice(rest),
    });
    if let Ok((id, signed)) = release::offer_of(&c) {
        assert_eq!(id.to_string(), signed.manifest.id);
        assert!(signed.manifest.validate().is_ok());
    }
    if let Some(r) = Report::of(&c) {
        assert!(r.release.parse::<crate::id::MessageId>().is_ok());
        if let Ok(from) = "acme.p1".parse() {
            let again = Report::of(&r.message(&from).content);
            assert_eq!(again.as_ref(), Some(&r));
        }
    }
    let _ = release::cancel_of(&c);
    let s = String::from_utf8_lossy(rest);
    let _ = release::id_of_path(&s);
    let _ = crate::bulk::Token::of_path(&s);
    if let Ok(v) = http::HeaderValue::from_bytes(rest) {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::RANGE, v.clone());
        h.insert(crate::bulk::UPLOAD_OFFSET, v);
        let _ = crate::download::range_start(&h);
        let _ = crate::bulk::offset(&h);
        let _ = crate::bulk::held(&h);
    }
}

/// A rules file: checked with every problem naming `rules.toml:LINE`,
/// never a panic, for both node kinds.
pub fn rules(data: &[u8]) {
    use crate::pipeline::rules::{load_text, NodeKind, RuleSource};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("rules.toml");
    let src = RuleSource::File(path.to_path_buf());
    for node in [NodeKind::Mlm, NodeKind::Proxy] {
        if let Err(e) = load_text(&src, path, text, node) {
            assert!(
                e.problems.iter().all(|p| p.starts_with("rules.toml:")),
                "{e}"
            );
        }
    }
}

/// Mutations [`smoke`] tries.
pub const MUTATIONS: usize = 3000;

fn seeds(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.truncate(200);
    assert!(!v.is_empty(), "no seeds in {}", dir.display());
    v
}

fn mutate(rng: &mut fastrand::Rng, pool: &[Vec<u8>]) -> Vec<u8> {
    let mut b = pool[rng.usize(..pool.len())].clone();
    for _ in 0..rng.usize(1..6) {
        match rng.u8(..5) {
            0 if !b.is_empty() => {
                let i = rng.usize(..b.len());
                b[i] = rng.u8(..);
            }
            1 if !b.is_empty() => {
                let i = rng.usize(..b.len());
                b.truncate(i);
            }
            2 if !b.is_empty() => {
                let (i, j) = (rng.usize(..b.len()), rng.usize(..b.len()));
                let (lo, hi) = (i.min(j), i.max(j));
                let chunk = b[lo..hi].to_vec();
                b.splice(hi..hi, chunk);
            }
            3 => {
                let other = &pool[rng.usize(..pool.len())];
                if !other.is_empty() {
                    let i = rng.usize(..other.len());
                    b.extend_from_slice(&other[i..]);
                }
            }
            _ => b.insert(rng.usize(..=b.len()), rng.u8(..)),
        }
    }
    b
}

/// A spool segment file with these bytes, as the only (so the last)
/// segment of a spool: opening it never panics. When it opens, the count
/// agrees with what `peek` returns, every body is readable, and opening it
/// again (after a torn tail was cut off) gives the same entries. A first
/// byte 0xFF wraps the rest in one frame with a matching CRC, so that
/// mutations reach the ops' reader and not only the CRC check.
pub fn segment(data: &[u8]) {
    let framed;
    let data = match data.split_first() {
        Some((&0xff, rest)) => {
            let mut f = b"RSP1".to_vec();
            f.extend_from_slice(&(rest.len() as u32).to_be_bytes());
            f.extend_from_slice(&crc32fast::hash(rest).to_be_bytes());
            f.extend_from_slice(rest);
            framed = f;
            &framed[..]
        }
        _ => data,
    };
    use crate::store::segment::SegmentSpool;
    use crate::store::Spool;
    let dir = std::env::temp_dir().join(format!("rsnet-fuzz-seg-{}", crate::id::MessageId::new()));
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let _ = std::fs::write(dir.join("0000000000000001.seg"), data);
    let now = crate::model::Timestamp(0);
    let none = std::collections::HashSet::new();
    let first = SegmentSpool::open(&dir, u64::MAX).ok().map(|s| {
        let p = s.peek(usize::MAX, &none, now).expect("peek after open");
        assert_eq!(p.entries.len() as u64, s.stats().messages);
        p.entries
    });
    if let Some(first) = first {
        let again = SegmentSpool::open(&dir, u64::MAX).expect("opens again");
        let p = again.peek(usize::MAX, &none, now).expect("peek again");
        assert_eq!(p.entries, first, "the same entries on a second open");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The lean HTTP/1.1 loop ([`crate::lean_h1`]) on a connection whose
/// client sends these bytes and closes: it never panics and always ends
/// (every path out of it is a close or a hand-over to hyper, here a
/// reader that drains what is left). Whatever the lean handler answered,
/// it answered with a whole body of the length it declared.
pub fn lean_h1(data: &[u8]) {
    const BODY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    else {
        return;
    };
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let peer = std::sync::Arc::new(crate::server::Peer {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 9)),
            identity: None,
            revocation: None,
            anonymous: false,
        });
        let h = crate::lean_h1::handler(
            |req: http::Request<http_body_util::Full<bytes::Bytes>>, _| async move {
                let n = crate::http_util::read_body(req.into_body(), usize::MAX, BODY_WAIT)
                    .await
                    .map_or(0, |b| b.len());
                crate::http_util::text(http::StatusCode::OK, "text/plain", format!("{n}"))
            },
        );
        let conn = tokio::spawn(crate::lean_h1::serve(
            server,
            peer,
            crate::envelope::EXCHANGE_PATH,
            h,
            |mut rest| async move {
                let mut sink = Vec::new();
                let _ = rest.read_to_end(&mut sink).await;
            },
        ));
        let input = data.to_vec();
        let reader = tokio::spawn(async move {
            let _ = client.write_all(&input).await;
            let _ = client.shutdown().await;
            let mut out = Vec::new();
            let _ = client.read_to_end(&mut out).await;
            out
        });
        let ended = tokio::time::timeout(std::time::Duration::from_secs(30), conn).await;
        assert!(matches!(ended, Ok(Ok(()))), "the lean loop did not end");
        let out = reader.await.unwrap_or_default();
        // Every response it wrote is whole: head, then the declared body.
        let mut at = 0;
        while at < out.len() {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut r = httparse::Response::new(&mut headers);
            let Ok(httparse::Status::Complete(n)) = r.parse(&out[at..]) else {
                panic!(
                    "a broken response head at {at}: {:?}",
                    String::from_utf8_lossy(&out[at..])
                );
            };
            let len: usize = r
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                .expect("a content-length");
            assert!(at + n + len <= out.len(), "a body shorter than declared");
            at += n + len;
        }
    });
}

/// Runs `property` over the seed corpus in `dir` and [`MUTATIONS`]
/// mutations of it (bytes flipped, cut, repeated and spliced, from a fixed
/// seed, so a failure repeats): the CI smoke run of a fuzz target, on
/// stable Rust.
///
/// # Panics
/// If `dir` has no seeds, or `property` panics.
pub fn smoke(dir: &std::path::Path, property: impl Fn(&[u8])) {
    let pool = seeds(dir);
    for s in &pool {
        property(s);
    }
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for _ in 0..MUTATIONS {
        property(&mutate(&mut rng, &pool));
    }
}

/// What reads a local API `POST /v1/messages` body (the proxy's
/// `local_api::parse_inputs`): the body and an `Idempotency-Key` header.
pub type ReadInputs =
    fn(&[u8], Option<&str>) -> Result<Vec<(crate::json::MessageInput, Option<String>)>, String>;

/// A local API `POST /v1/messages` body, read by `read` (the one-pass
/// reader of the proxy): never a panic; an error says what is wrong; a
/// batch it takes holds 1..=[`crate::limits::MAX_BATCH_MESSAGES`], every
/// key it hands out is 1..=128 visible ASCII bytes, and it reads the same
/// messages as a plain read through a JSON tree. Each input then builds
/// a message or says why not.
pub fn local_messages(data: &[u8], read: ReadInputs) {
    use crate::json::MessageInput;
    for header in [None, Some("h-1")] {
        let got = match read(data, header) {
            Err(e) => {
                assert!(!e.is_empty());
                continue;
            }
            Ok(v) => v,
        };
        assert!((1..=crate::limits::MAX_BATCH_MESSAGES).contains(&got.len()));
        for (_, k) in &got {
            if let Some(k) = k {
                assert!(
                    !k.is_empty()
                        && k.len() <= crate::store::MAX_CLIENT_KEY_BYTES
                        && k.bytes().all(|b| b.is_ascii_graphic()),
                    "{k:?}"
                );
            }
        }
        // The same messages through a JSON tree.
        let tree: serde_json::Value = match serde_json::from_slice(data) {
            Ok(t) => t,
            Err(e) => panic!(
                "read took invalid JSON ({e}): {:?}",
                String::from_utf8_lossy(data)
            ),
        };
        let plain: Vec<MessageInput> = match tree.get("messages") {
            Some(list) => serde_json::from_value(list.clone()).expect("read took a bad list"),
            None => vec![serde_json::from_value(tree).expect("read took a bad message")],
        };
        assert_eq!(plain.len(), got.len());
        for (mut p, (g, k)) in plain.into_iter().zip(got) {
            let key = p.key.take().or(header.map(str::to_string));
            assert_eq!(key, k);
            assert_eq!(format!("{p:?}"), format!("{g:?}"));
            let _ = g.into_built(0, None);
        }
    }
}

/// A node's config file: parsed and checked with every problem naming the
/// file, never a panic. `parse` is the node's `Config::parse`.
pub fn config<T, E: std::fmt::Display>(
    data: &[u8],
    parse: impl Fn(&std::path::Path, &str) -> Result<T, E>,
) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("node.toml");
    if let Err(e) = parse(path, text) {
        let e = e.to_string();
        assert!(e.starts_with("node.toml: "), "{e}");
    }
}
