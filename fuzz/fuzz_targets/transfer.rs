//! What a peer says about files: release offers, reports and
//! cancellations (the first byte picks which), transfer tokens and paths,
//! and `Range` / `Upload-Offset` headers. Each must end in `Some`/`Ok` or
//! `None`/`Err`; a parsed offer's manifest passes its own field rules.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rsnet_common::model::{Content, Data, Encoding};
use rsnet_common::release::{self, Report};

fuzz_target!(|data: &[u8]| {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let mime = [release::OFFER_MIME, release::REPORT_MIME, release::CANCEL_MIME][k as usize % 3];
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
        assert!(r.release.parse::<rsnet_common::MessageId>().is_ok());
        let again = Report::of(&r.message(&"acme.p1".parse().unwrap()).content);
        assert_eq!(again.as_ref(), Some(&r));
    }
    let _ = release::cancel_of(&c);
    let s = String::from_utf8_lossy(rest);
    let _ = release::id_of_path(&s);
    let _ = rsnet_common::bulk::Token::of_path(&s);
    if let Ok(v) = http::HeaderValue::from_bytes(rest) {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::RANGE, v.clone());
        h.insert(rsnet_common::bulk::UPLOAD_OFFSET, v);
        let _ = rsnet_common::download::range_start(&h);
        let _ = rsnet_common::bulk::offset(&h);
        let _ = rsnet_common::bulk::held(&h);
    }
});
