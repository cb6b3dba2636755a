//! A whole exchange body, as a hop receives it: framing, limits, every
//! part's XML. Must end in Ok or Err, never a panic; what decodes must
//! survive a re-encode unchanged.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rsnet_common::envelope::{decode_bytes, wire, EnvelopeWriter};

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let body = bytes::Bytes::copy_from_slice(data);
    let Ok(d) = rt.block_on(decode_bytes("multipart/related; boundary=B", body)) else {
        return;
    };
    let mut w = EnvelopeWriter::new();
    w.control(&d.control);
    for i in &d.items {
        let _ = i.content();
        w.item(i);
    }
    let (ct, body) = w.finish();
    let again = rt
        .block_on(decode_bytes(&ct, body))
        .expect("re-encoded envelope decodes");
    assert_eq!(again.control, d.control);
    assert_eq!(again.items, d.items);
    for (a, b) in again.items.iter().zip(&d.items) {
        assert_eq!(
            wire::encode_header(&a.header),
            wire::encode_header(&b.header)
        );
    }
});
