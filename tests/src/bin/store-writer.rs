//! Helper for the store crash test: appends sequenced messages to a redb
//! message store in small batches and prints `acked N` after each durable
//! commit, until killed.
use std::io::Write;

use bytes::Bytes;
use rsnet_common::model::{ContentKind, Timestamp};
use rsnet_common::store::{open, StoreConfig, StoredMessage};
use rsnet_common::MessageId;

fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: store-writer DIR START");
    let mut n: u64 = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .expect("usage: store-writer DIR START");
    let store = open(&StoreConfig::default(), std::path::Path::new(&dir)).expect("open store");
    let messages = store.messages().expect("messages");
    let out = std::io::stdout();
    loop {
        let batch: Vec<StoredMessage> = (0..8)
            .map(|i| StoredMessage {
                id: MessageId::new(),
                source: "acme.p1".parse().expect("id"),
                class: "crash".into(),
                subclass: None,
                kind: ContentKind::Event,
                created: Timestamp(n + i),
                received: Timestamp::now(),
                header: Bytes::from_static(b"<header/>"),
                content: Bytes::from(vec![b'x'; 1024]),
            })
            .collect();
        #[allow(clippy::disallowed_methods)] // a plain thread, no tokio runtime here
        messages.append(batch, vec![]).expect("append");
        n += 8;
        let mut o = out.lock();
        let _ = writeln!(o, "acked {n}");
        let _ = o.flush();
    }
}
